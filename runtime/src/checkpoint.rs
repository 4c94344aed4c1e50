//! Checkpoints: all optimizer state in one safetensors file, read back bit for bit.
//!
//! Takes an [`Optimizer`]; gives a safetensors buffer or file, and loads one back into an optimizer
//! built with the same rule, groups, flags and parameters (checked; on any mismatch the load fails
//! and the optimizer is unchanged). Parameters themselves are not saved: like a torch
//! `optimizer.state_dict()`, a checkpoint holds optimizer state only.
//!
//! # Layout
//!
//! | key | dtype | shape | content |
//! |---|---|---|---|
//! | `NAME.STATE` | F32, BF16 or F16: the state's storage dtype | the parameter's shape | per-element state `STATE` of parameter `NAME` |
//! | `__optc__/hypers` | F64 | `[groups, hypers]` | each group's hyper values, in the rule's order |
//! | `__optc__/defaults` | F64 | `[hypers]` | the default hypers of groups added later |
//! | `__optc__/scalars` | F64 | `[total]` | scalar states of every stepped parameter, concatenated in parameter order |
//!
//! The safetensors metadata key `optc` holds JSON: `{"format": 1, "rule": NAME, "hypers": [names],
//! "groups": [{"flags": {name: bool}}], "params": [{"name", "shape", "group", "step", "states":
//! [names], "scalars": [names]}]}`. A parameter with `step` 0 has not been stepped and has no
//! state. `states` lists the states the parameter has allocated, in its flag set's order: a
//! state that no kernel variant has needed yet (SGD's `buf` while `momentum` is 0) is absent, and
//! is allocated from its init when a later step needs it, as if it had never been saved. Numbers that must round-trip exactly (hypers, scalars) are stored as F64 tensors, never as
//! JSON text; step counts are JSON integers.

use crate::buf::BufVec;
use crate::error::RuntimeError;
use crate::optimizer::{Optimizer, Progress, SavedState};
use optc_kernel::{Slot, StateId};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The checkpoint layout version written and read.
pub const CHECKPOINT_FORMAT: u32 = 1;

pub(crate) const META_KEY: &str = "optc";
const HYPERS: &str = "__optc__/hypers";
const DEFAULTS: &str = "__optc__/defaults";
const SCALARS: &str = "__optc__/scalars";

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Meta {
    format: u32,
    rule: String,
    hypers: Vec<String>,
    groups: Vec<GroupMeta>,
    params: Vec<ParamMeta>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct GroupMeta {
    flags: BTreeMap<String, bool>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct ParamMeta {
    name: String,
    shape: Vec<usize>,
    group: usize,
    step: u64,
    states: Vec<String>,
    scalars: Vec<String>,
}

/// How safetensors names a state's storage dtype.
fn safetensors_dtype(d: optc_kernel::Dtype) -> Dtype {
    match d {
        optc_kernel::Dtype::Bf16 => Dtype::BF16,
        optc_kernel::Dtype::F16 => Dtype::F16,
        optc_kernel::Dtype::F32 | optc_kernel::Dtype::Int8 => Dtype::F32,
    }
}

fn err(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Checkpoint(msg.into())
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Optimizer {
    fn meta(&self) -> Meta {
        let groups = self
            .groups
            .iter()
            .map(|g| GroupMeta {
                flags: self
                    .rule
                    .flags()
                    .iter()
                    .zip(&g.flags)
                    .map(|(d, &v)| (d.name.clone(), v))
                    .collect(),
            })
            .collect();
        let params = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let kernel = &self.family_of(i).base;
                let allocated = self.exec.allocated(i);
                let stepped = p.progress.is_some();
                ParamMeta {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    group: p.group,
                    step: p.progress.as_ref().map_or(0, |s| s.step),
                    states: if stepped {
                        kernel
                            .states
                            .iter()
                            .zip(&allocated)
                            .filter(|(_, &a)| a)
                            .map(|(s, _)| s.name.clone())
                            .collect()
                    } else {
                        Vec::new()
                    },
                    scalars: if stepped {
                        kernel.scalars.iter().map(|s| s.name.clone()).collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Meta {
            format: CHECKPOINT_FORMAT,
            rule: self.rule.name().to_string(),
            hypers: self.hypers.iter().map(|h| h.name.clone()).collect(),
            groups,
            params,
        }
    }

    /// All optimizer state as a safetensors buffer (layout in [`crate::checkpoint`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, RuntimeError> {
        let meta = self.meta();
        let json = serde_json::to_string(&meta).map_err(|e| err(e.to_string()))?;
        let hypers: Vec<f64> = self
            .groups
            .iter()
            .flat_map(|g| g.hypers.iter().copied())
            .collect();
        let scalars: Vec<f64> = self
            .params
            .iter()
            .filter_map(|p| p.progress.as_ref())
            .flat_map(|s| s.scalars.iter().copied())
            .collect();
        let owned = [
            (
                HYPERS,
                vec![self.groups.len(), self.defaults.len()],
                f64_bytes(&hypers),
            ),
            (
                DEFAULTS,
                vec![self.defaults.len()],
                f64_bytes(&self.defaults),
            ),
            (SCALARS, vec![scalars.len()], f64_bytes(&scalars)),
        ];
        let mut tensors: Vec<(String, TensorView<'_>)> = Vec::new();
        for (key, shape, data) in &owned {
            tensors.push((
                key.to_string(),
                TensorView::new(Dtype::F64, shape.clone(), data)?,
            ));
        }
        let mut keys: HashSet<String> = tensors.iter().map(|(k, _)| k.clone()).collect();
        // Each allocated state in its storage dtype, as little-endian bytes (exact: the values
        // read back are values of the dtype).
        let buffers: Vec<Vec<(optc_kernel::Dtype, Vec<u8>)>> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| match p.progress {
                Some(_) => {
                    let storage = &self.family_of(i).base.storage;
                    Ok(self
                        .exec
                        .read_states(i)?
                        .into_iter()
                        .enumerate()
                        .filter_map(|(at, b)| {
                            let d = storage.dtype(Slot::State(StateId::new(at)));
                            b.map(|b| (d, BufVec::from_f32(d, &b).to_le_bytes()))
                        })
                        .collect())
                }
                None => Ok(Vec::new()),
            })
            .collect::<Result<_, RuntimeError>>()?;
        for (i, ((p, pm), bufs)) in self
            .params
            .iter()
            .zip(&meta.params)
            .zip(&buffers)
            .enumerate()
        {
            if p.progress.is_none() {
                continue;
            }
            // `bufs` and `pm.states` are the allocated states, in the flag set's order.
            let allocated = self.exec.allocated(i);
            let decls = self
                .family_of(i)
                .base
                .states
                .iter()
                .zip(&allocated)
                .filter(|(_, &a)| a)
                .map(|(d, _)| d);
            for ((name, (dtype, buf)), decl) in pm.states.iter().zip(bufs).zip(decls) {
                let key = format!("{}.{}", p.name, name);
                if !keys.insert(key.clone()) {
                    return Err(err(format!(
                        "two tensors would be saved as `{key}`; rename a parameter"
                    )));
                }
                tensors.push((
                    key,
                    TensorView::new(safetensors_dtype(*dtype), decl.shape.dims_of(&p.shape), buf)?,
                ));
            }
        }
        let info = HashMap::from([(META_KEY.to_string(), json)]);
        Ok(safetensors::serialize(tensors, Some(info))?)
    }

    /// Writes all optimizer state to a safetensors file, atomically: a crash or an error while
    /// saving leaves an existing file at `path` as it was ([`crate::atomic`]); see
    /// [`Optimizer::save_state`] for torch's convention.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let bytes = self.to_bytes()?;
        crate::atomic::write_atomic(path.as_ref(), &bytes).map_err(|source| RuntimeError::Io {
            path: path.as_ref().display().to_string(),
            source,
        })
    }

    /// Reads optimizer state from a safetensors file written by [`Optimizer::save`].
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let bytes = std::fs::read(path.as_ref()).map_err(|source| RuntimeError::Io {
            path: path.as_ref().display().to_string(),
            source,
        })?;
        self.load_bytes(&bytes)
    }

    /// Reads optimizer state from a buffer written by [`Optimizer::to_bytes`]. Checks the rule,
    /// hypers, groups, flags, parameters, shapes and dtypes; on error the optimizer is unchanged.
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| err("not an optc checkpoint (no `optc` metadata)"))?;
        let meta: Meta =
            serde_json::from_str(json).map_err(|e| err(format!("bad metadata: {e}")))?;
        let ours = self.meta();
        if meta.format != CHECKPOINT_FORMAT {
            return Err(err(format!(
                "format {} is not supported (this build reads {CHECKPOINT_FORMAT})",
                meta.format
            )));
        }
        if meta.rule != ours.rule {
            return Err(err(format!(
                "it was saved by rule `{}`, this optimizer runs `{}`",
                meta.rule, ours.rule
            )));
        }
        if meta.hypers != ours.hypers {
            return Err(err(format!(
                "hypers differ: saved {:?}, rule has {:?}",
                meta.hypers, ours.hypers
            )));
        }
        if meta.groups != ours.groups {
            return Err(err(format!(
                "parameter groups differ: saved {} group(s) with flags {:?}, this optimizer has {} with {:?}",
                meta.groups.len(),
                meta.groups.iter().map(|g| &g.flags).collect::<Vec<_>>(),
                ours.groups.len(),
                ours.groups.iter().map(|g| &g.flags).collect::<Vec<_>>()
            )));
        }
        if meta.params.len() != ours.params.len() {
            return Err(err(format!(
                "it holds {} parameters, this optimizer has {}",
                meta.params.len(),
                ours.params.len()
            )));
        }
        let st = SafeTensors::deserialize(bytes)?;
        let read_f64 = |key: &str, len: usize| -> Result<Vec<f64>, RuntimeError> {
            let view = st
                .tensor(key)
                .map_err(|_| err(format!("tensor `{key}` is missing")))?;
            if view.dtype() != Dtype::F64 || view.data().len() != 8 * len {
                return Err(err(format!(
                    "tensor `{key}` must be F64 with {len} elements"
                )));
            }
            Ok(view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()))
                .collect())
        };
        let h = ours.hypers.len();
        let hypers = read_f64(HYPERS, ours.groups.len() * h)?;
        let defaults = read_f64(DEFAULTS, h)?;
        let total: usize = meta
            .params
            .iter()
            .filter(|p| p.step > 0)
            .map(|p| p.scalars.len())
            .sum();
        let scalars = read_f64(SCALARS, total)?;
        let mut states: Vec<SavedState> = Vec::with_capacity(meta.params.len());
        let mut offset = 0;
        for (i, (saved, mine)) in meta.params.iter().zip(&ours.params).enumerate() {
            if (&saved.name, &saved.shape, saved.group) != (&mine.name, &mine.shape, mine.group) {
                return Err(err(format!(
                    "parameter `{}` {:?} in group {} was saved where this optimizer has `{}` {:?} in group {}",
                    saved.name, saved.shape, saved.group, mine.name, mine.shape, mine.group
                )));
            }
            if saved.step == 0 {
                states.push(None);
                continue;
            }
            let kernel = &self.family_of(i).base;
            let want_states: Vec<&str> = kernel.states.iter().map(|s| s.name.as_str()).collect();
            let want_scalars: Vec<&str> = kernel.scalars.iter().map(|s| s.name.as_str()).collect();
            // The saved states: some of the flag set's, in its order (those allocated then).
            let mut positions = Vec::with_capacity(saved.states.len());
            for s in &saved.states {
                match want_states.iter().position(|w| w == s) {
                    Some(at) if positions.last().is_none_or(|&l| l < at) => positions.push(at),
                    _ => positions.clear(),
                }
                if positions.is_empty() {
                    break;
                }
            }
            if positions.len() != saved.states.len() || saved.scalars != want_scalars {
                return Err(err(format!(
                    "parameter `{}` has states {:?} and scalars {:?}, the kernel has {:?} (or some of them, in this order) and {:?}",
                    saved.name, saved.states, saved.scalars, want_states, want_scalars
                )));
            }
            let mut buffers: Vec<Option<Vec<f32>>> = vec![None; want_states.len()];
            for (s, &at) in saved.states.iter().zip(&positions) {
                let decl = &kernel.states[at];
                let key = format!("{}.{}", saved.name, s);
                let view = st
                    .tensor(&key)
                    .map_err(|_| err(format!("tensor `{key}` is missing")))?;
                let want = decl.shape.dims_of(&saved.shape);
                let dtype = kernel.storage.dtype(Slot::State(StateId::new(at)));
                let want_dtype = safetensors_dtype(dtype);
                if view.dtype() != want_dtype || view.shape() != want.as_slice() {
                    return Err(err(format!(
                        "tensor `{key}` is {:?} {:?}, expected {want_dtype:?} {:?}",
                        view.dtype(),
                        view.shape(),
                        want
                    )));
                }
                let values = BufVec::from_le_bytes(dtype, view.data())
                    .ok_or_else(|| err(format!("tensor `{key}` has a partial value")))?;
                buffers[at] = Some(values.to_f32());
            }
            let n = saved.scalars.len();
            states.push(Some((
                Progress {
                    step: saved.step,
                    scalars: scalars[offset..offset + n].to_vec(),
                },
                buffers,
            )));
            offset += n;
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
        for (g, row) in self.groups.iter_mut().zip(hypers.chunks_exact(h.max(1))) {
            g.hypers.copy_from_slice(&row[..h]);
        }
        self.defaults = defaults;
        for (p, s) in self.params.iter_mut().zip(states) {
            p.progress = s.map(|(progress, _)| progress);
        }
        Ok(())
    }
}
