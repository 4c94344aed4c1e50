//! Optimizer state in torch's convention, in and out: a safetensors file that a few lines of Python
//! write from (or read into) a `torch.optim` optimizer (`docs/torch.md`).
//!
//! Takes an [`Optimizer`] whose rule names each state's torch name (`state m = 0 as exp_avg`; a
//! state without `as`, and every scalar state, keeps its own name). Gives and reads files with, for
//! every stepped parameter `NAME`:
//!
//! | key | dtype | shape | content |
//! |---|---|---|---|
//! | `NAME.step` | any float or integer (written F64) | `[]` or `[1]` | steps taken, a whole number |
//! | `NAME.TORCH_STATE` | F32 | the parameter's shape | per-element state (`NAME.exp_avg`) |
//! | `NAME.SCALAR` | F32 or F64 (written F64) | `[]` or `[1]` | scalar state (`NAME.mu_product`) |
//!
//! A parameter with no `NAME.step` and no state has not been stepped. No metadata is needed: a file
//! with optc's checkpoint metadata is an optc checkpoint, any other safetensors file is read in this
//! convention ([`Optimizer::resume`] tells them apart by content). Hypers are not part of a torch
//! state: the optimizer keeps its own. Every key is checked before anything changes: a missing
//! state (say a flag differs from the torch run), a key for no parameter, a wrong shape or dtype,
//! or a step that is not a whole number is an error that names the key.
//!
//! A state that only some kernel variants use (SGD's `momentum_buffer`, used while `momentum` is
//! not 0) is written only once a step has allocated it, as torch leaves `momentum_buffer` out of
//! its state while `momentum` is 0. Reading, such a state may be missing when the variant the
//! group's current hypers select does not use it; it is then allocated from its init when a
//! later step needs it. A state the selected variant uses must be present.

use crate::error::RuntimeError;
use crate::optimizer::{Optimizer, Progress, SavedState};
use optc_kernel::StateShape;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::path::Path;

/// The layout of a state file written by [`Optimizer::save_state`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFormat {
    /// optc's checkpoint (`crate::checkpoint`): hypers, groups and flags included, read back bit
    /// for bit.
    #[default]
    Optc,
    /// torch's convention (this module): per parameter its step, states and scalar states under
    /// torch's names.
    Torch,
}

impl std::fmt::Display for StateFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateFormat::Optc => "optc",
            StateFormat::Torch => "torch",
        })
    }
}

fn err(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::TorchState(msg.into())
}

/// The key of the step count of parameter `name`.
fn step_key(name: &str) -> String {
    format!("{name}.step")
}

/// One number from a tensor of one element, of any float or integer dtype.
fn number(key: &str, view: &TensorView<'_>) -> Result<f64, RuntimeError> {
    let elems: usize = view.shape().iter().product();
    if elems != 1 {
        return Err(err(format!(
            "`{key}` has shape {:?}; expected one number (shape [] or [1])",
            view.shape()
        )));
    }
    let d = view.data();
    let bytes = |n: usize| -> Result<&[u8], RuntimeError> {
        d.get(..n)
            .ok_or_else(|| err(format!("`{key}` holds {} bytes", d.len())))
    };
    let as_array = |n: usize| -> Result<[u8; 8], RuntimeError> {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(bytes(n)?);
        Ok(a)
    };
    Ok(match view.dtype() {
        Dtype::F64 => f64::from_le_bytes(as_array(8)?),
        Dtype::I64 => i64::from_le_bytes(as_array(8)?) as f64,
        Dtype::F32 => {
            let a = as_array(4)?;
            f64::from(f32::from_le_bytes([a[0], a[1], a[2], a[3]]))
        }
        Dtype::I32 => {
            let a = as_array(4)?;
            f64::from(i32::from_le_bytes([a[0], a[1], a[2], a[3]]))
        }
        other => {
            return Err(err(format!(
                "`{key}` has dtype {other:?}; expected a float or integer number"
            )))
        }
    })
}

impl Optimizer {
    /// The torch names of the states of parameter `index`'s flag set, in its order.
    fn torch_names(&self, index: usize) -> Result<Vec<String>, RuntimeError> {
        let kernel = &self.family_of(index).base;
        kernel
            .states
            .iter()
            .map(|s| {
                self.rule.torch_name(&s.name).map(str::to_string).ok_or_else(|| {
                    err(format!(
                        "rule `{}` was loaded from a compiled kernel, which does not record torch's state names; load it from its .opt source",
                        self.rule.name()
                    ))
                })
            })
            .collect()
    }

    /// All optimizer state in torch's convention (layout in [`crate::torch_state`]).
    pub fn to_torch_bytes(&self) -> Result<Vec<u8>, RuntimeError> {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (index, p) in self.params.iter().enumerate() {
            let Some(state) = &p.progress else { continue };
            let kernel = &self.family_of(index).base;
            let buffers = self.exec.read_states(index)?;
            owned.push((
                step_key(&p.name),
                Dtype::F64,
                vec![],
                (state.step as f64).to_le_bytes().to_vec(),
            ));
            for ((torch, buf), decl) in self
                .torch_names(index)?
                .iter()
                .zip(&buffers)
                .zip(&kernel.states)
            {
                let Some(buf) = buf else { continue };
                owned.push((
                    format!("{}.{torch}", p.name),
                    Dtype::F32,
                    decl.shape.torch_dims_of(&p.shape),
                    bytemuck::cast_slice(buf).to_vec(),
                ));
            }
            for (decl, value) in kernel.scalars.iter().zip(&state.scalars) {
                owned.push((
                    format!("{}.{}", p.name, decl.name),
                    Dtype::F64,
                    vec![],
                    value.to_le_bytes().to_vec(),
                ));
            }
        }
        let mut keys = BTreeSet::new();
        let mut views = Vec::with_capacity(owned.len());
        for (key, dtype, shape, data) in &owned {
            if !keys.insert(key.as_str()) {
                return Err(err(format!(
                    "two tensors would be saved as `{key}`; rename a parameter"
                )));
            }
            views.push((key.as_str(), TensorView::new(*dtype, shape.clone(), data)?));
        }
        Ok(safetensors::serialize(views, None)?)
    }

    /// Reads optimizer state in torch's convention into this optimizer's registered parameters.
    /// On error the optimizer is unchanged.
    pub fn load_torch_bytes(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        let st = SafeTensors::deserialize(bytes)?;
        let mut unused: BTreeSet<String> = st.names().into_iter().map(str::to_string).collect();
        // The kernel each parameter would run next, for the states it cannot do without.
        let mut needed = Vec::with_capacity(self.params.len());
        for index in 0..self.params.len() {
            let (family, group) = (self.params[index].family, self.params[index].group);
            let hypers = self.groups[group].hypers.clone();
            let k = self.variant_kernel(family, &hypers)?;
            let slots = self.families[family].slots(self.exec.kernel(k))?;
            needed.push(slots);
        }
        let mut states: Vec<SavedState> = Vec::with_capacity(self.params.len());
        for (index, needed) in needed.iter().enumerate() {
            let p = &self.params[index];
            let kernel = &self.family_of(index).base;
            let torch = self.torch_names(index)?;
            let scalar_names: Vec<&str> = kernel.scalars.iter().map(|s| s.name.as_str()).collect();
            let skey = step_key(&p.name);
            let step = match st.tensor(&skey) {
                Ok(view) => {
                    unused.remove(&skey);
                    let t = number(&skey, &view)?;
                    if !(t >= 0.0 && t.fract() == 0.0 && t < 2f64.powi(53)) {
                        return Err(err(format!(
                            "`{skey}` is {t}; a step count is a whole number >= 0"
                        )));
                    }
                    t as u64
                }
                Err(_) => 0,
            };
            let keys: Vec<String> = torch
                .iter()
                .map(|t| t.as_str())
                .chain(scalar_names.iter().copied())
                .map(|s| format!("{}.{s}", p.name))
                .collect();
            if step == 0 {
                if let Some(k) = keys.iter().find(|k| st.tensor(k).is_ok()) {
                    return Err(err(format!(
                        "`{k}` is given but `{skey}` is not (or is 0); a stepped parameter needs its step count (torch.optim.SGD keeps none: save 1 for any step)"
                    )));
                }
                states.push(None);
                continue;
            }
            let mut buffers = Vec::with_capacity(torch.len());
            for ((at, key), decl) in keys[..torch.len()].iter().enumerate().zip(&kernel.states) {
                if st.tensor(key).is_err() && !needed.contains(&at) {
                    // Not used with the current hypers (torch's `momentum_buffer` at momentum 0).
                    buffers.push(None);
                    continue;
                }
                let want = decl.shape.torch_dims_of(&p.shape);
                let view = st.tensor(key).map_err(|_| {
                    err(format!(
                        "`{key}` is missing; rule `{}` with these flags keeps {} for each parameter (do the flags match the torch run?)",
                        self.rule.name(),
                        keys.iter()
                            .map(|k| format!("`{}`", &k[p.name.len() + 1..]))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                if view.dtype() != Dtype::F32 || view.shape() != want.as_slice() {
                    return Err(err(format!(
                        "`{key}` is {:?} {:?}; expected F32 {:?}{}",
                        view.dtype(),
                        view.shape(),
                        want,
                        if decl.shape == StateShape::Full {
                            ", the parameter's shape"
                        } else {
                            " (torch's keepdim shape of a factored state)"
                        }
                    )));
                }
                buffers.push(Some(crate::bytes::f32_vec(key, view.data())?));
                unused.remove(key);
            }
            let mut scalars = Vec::with_capacity(scalar_names.len());
            for key in &keys[torch.len()..] {
                let view = st
                    .tensor(key)
                    .map_err(|_| err(format!("`{key}` (a scalar state) is missing")))?;
                scalars.push(number(key, &view)?);
                unused.remove(key);
            }
            states.push(Some((Progress { step, scalars }, buffers)));
        }
        if let Some(key) = unused.iter().next() {
            let known: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
            let owner = key.rsplit_once('.').map_or(key.as_str(), |(a, _)| a);
            let hint = if known.iter().any(|k| k == owner) {
                format!(
                    " (rule `{}` with these flags does not keep it: do the flags match the torch run?)",
                    self.rule.name()
                )
            } else {
                optc_compiler::diag::did_you_mean(owner, known.iter().map(String::as_str))
                    .map(|s| format!(" (no parameter `{owner}`; did you mean `{s}`?)"))
                    .unwrap_or_else(|| format!(" (no parameter `{owner}` is registered)"))
            };
            return Err(err(format!(
                "`{key}` belongs to no state of this optimizer{hint}"
            )));
        }
        // The only step that can fail on a device (an upload); everything below is infallible.
        let uploads = states
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|(_, b)| (i, std::mem::take(b))))
            .collect();
        self.exec.write_states(uploads)?;
        for (i, s) in states.iter().enumerate() {
            if s.is_none() {
                self.exec.drop_states(i, None);
            }
        }
        for (p, s) in self.params.iter_mut().zip(states) {
            p.progress = s.map(|(progress, _)| progress);
        }
        Ok(())
    }

    /// Writes all optimizer state to `path` in `format`, atomically (a temporary file in the same
    /// folder, synced, then renamed).
    pub fn save_state(
        &self,
        path: impl AsRef<Path>,
        format: StateFormat,
    ) -> Result<(), RuntimeError> {
        let bytes = match format {
            StateFormat::Optc => self.to_bytes()?,
            StateFormat::Torch => self.to_torch_bytes()?,
        };
        crate::atomic::write_atomic(path.as_ref(), &bytes).map_err(|source| RuntimeError::Io {
            path: path.as_ref().display().to_string(),
            source,
        })
    }

    /// Reads optimizer state from an optc checkpoint or a torch-convention file, told apart by
    /// content (optc's checkpoint metadata), and returns which it was. On error the optimizer is
    /// unchanged.
    pub fn resume(&mut self, path: impl AsRef<Path>) -> Result<StateFormat, RuntimeError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.resume_bytes(&bytes)
    }

    /// [`Optimizer::resume`] from a buffer.
    pub fn resume_bytes(&mut self, bytes: &[u8]) -> Result<StateFormat, RuntimeError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let is_optc = header
            .metadata()
            .as_ref()
            .is_some_and(|m| m.contains_key(crate::checkpoint::META_KEY));
        if is_optc {
            self.load_bytes(bytes)?;
            Ok(StateFormat::Optc)
        } else {
            self.load_torch_bytes(bytes)?;
            Ok(StateFormat::Torch)
        }
    }
}
