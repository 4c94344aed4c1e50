//! Per-parameter state-slot bookkeeping, shared by the host and CUDA executors: the one place
//! where a parameter's slots grow, receive new buffers, are dropped and are reported, and where
//! each state's storage dtype is kept. Generic over the buffer (`BufVec` on the host,
//! `DeviceBuf` on a device).

use optc_kernel::Dtype;

/// Per registered parameter: its state buffers by position, each once it is allocated.
pub(crate) type Slots<B> = Vec<Vec<Option<B>>>;

/// Parameter `param`'s slots, growing `states` to hold it.
pub(crate) fn slot<B>(states: &mut Slots<B>, param: usize) -> &mut Vec<Option<B>> {
    if states.len() <= param {
        states.resize_with(param + 1, Vec::new);
    }
    &mut states[param]
}

/// Stores freshly initialized `buffers` (position, buffer) among parameter `param`'s `len`
/// state positions, leaving the others as they were.
pub(crate) fn place<B>(states: &mut Slots<B>, param: usize, len: usize, buffers: Vec<(usize, B)>) {
    let s = slot(states, param);
    s.resize_with(len, || None);
    for (at, b) in buffers {
        s[at] = Some(b);
    }
}

/// Frees parameter `param`'s states at positions `which` (all when `None`); a parameter left
/// with none allocated forgets its slots.
pub(crate) fn drop<B>(states: &mut Slots<B>, param: usize, which: Option<&[usize]>) {
    if let Some(s) = states.get_mut(param) {
        match which {
            None => s.clear(),
            Some(which) => {
                for &i in which {
                    if let Some(b) = s.get_mut(i) {
                        *b = None;
                    }
                }
                if s.iter().all(Option::is_none) {
                    s.clear();
                }
            }
        }
    }
}

/// Which of parameter `param`'s state positions hold a buffer.
pub(crate) fn allocated<B>(states: &Slots<B>, param: usize) -> Vec<bool> {
    states
        .get(param)
        .map(|s| s.iter().map(Option::is_some).collect())
        .unwrap_or_default()
}

/// The bytes of parameter `param`'s allocated states, each `bytes(buffer)`.
pub(crate) fn bytes<B>(states: &Slots<B>, param: usize, bytes: impl Fn(&B) -> usize) -> usize {
    states
        .get(param)
        .map_or(0, |s| s.iter().flatten().map(bytes).sum())
}

/// The storage dtype of state position `at` of parameter `param` (f32 unless set).
pub(crate) fn dtype(dtypes: &[Vec<Dtype>], param: usize, at: usize) -> Dtype {
    dtypes
        .get(param)
        .and_then(|d| d.get(at))
        .copied()
        .unwrap_or_default()
}

/// Sets the storage dtypes of parameter `param`'s states, by position.
pub(crate) fn set_dtypes(dtypes: &mut Vec<Vec<Dtype>>, param: usize, of: Vec<Dtype>) {
    if dtypes.len() <= param {
        dtypes.resize_with(param + 1, Vec::new);
    }
    dtypes[param] = of;
}
