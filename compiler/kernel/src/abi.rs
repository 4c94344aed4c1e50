//! The launch ABI of a stage's entry points, as data.
//!
//! A PTX module has three entries per stage (vector, scalar, multi-tensor; `docs/cuda.md`). Each
//! entry's parameters are a list of [`Param`]s, written into the artifact next to the PTX text:
//! the PTX backend declares exactly these parameters, in this order, and the CUDA launcher pushes
//! one argument per listed parameter. [`single_params`], [`multi_params`] and
//! [`TableLayout::of_stage`] say what a kernel's stage takes; [`check`] compares a module's lists
//! with them, so the launcher never has to read PTX text.

use crate::artifact::{FactoredEntries, PtxModule, StageEntries};
use crate::factored::{outputs, Output};
use crate::kernel::Kernel;
use crate::reduce::REDUCE_BLOCK;
use crate::table::TableLayout;
use serde::{Deserialize, Serialize};

/// One parameter of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Param {
    /// `.u64`: the device pointer of buffer `index` ([`Kernel::buffers`] order).
    Buffer {
        /// The buffer's position.
        index: usize,
    },
    /// `.u64`: the tensor's element count.
    Len,
    /// `.u64`: the device pointer of the tensor's block partials (f32; stages with reduce
    /// outputs only). Reduce output `r`'s partial of block `b` is at `r * blocks + b`, with
    /// `blocks = ceil(n / REDUCE_BLOCK)`.
    Partials,
    /// `.f32`: uniform `index` of the stage, rounded to f32 (booleans as 1.0 or 0.0).
    Uniform {
        /// The uniform's position in the stage.
        index: usize,
    },
    /// `.u64`: the device pointer of the tensor table ([`TableLayout`] records).
    Table,
    /// `.u64`: the device pointer of the chunk list.
    Chunks,
    /// `.u64`: the number of chunks.
    NumChunks,
    /// `.u64`: elements per chunk (a positive multiple of [`StageEntries::chunk_multiple`]).
    ChunkElems,
    /// `.u64`: matrices of the tensor (factored entries; [`crate::MatrixDims::batch`]).
    Batch,
    /// `.u64`: rows per matrix (factored entries).
    Rows,
    /// `.u64`: columns per matrix (factored entries).
    Cols,
    /// `.u64`: the device pointer of stage vector `index` (factored entries: the f32 values of
    /// `Expr::Vector(index)`, `batch · rows` or `batch · cols` of them).
    Vector {
        /// The vector's position in the stage's list (`Kernel::stage_vectors`).
        index: usize,
    },
    /// `.u32`: the tensor's stochastic-rounding key for this step (`Storage::sr_key(t, tensor)`,
    /// [`crate::dtype::sr_key`]), the last parameter of every single-tensor, `_q8` and factored
    /// entry of a kernel whose storage rounds stochastically ([`stochastic`]); absent otherwise.
    SrKey,
}

impl Param {
    /// The PTX type of the parameter, without the dot: `u64` or `f32`.
    pub fn ptx_type(self) -> &'static str {
        match self {
            Param::Uniform { .. } => "f32",
            Param::SrKey => "u32",
            _ => "u64",
        }
    }

    /// The parameter's name in entry `entry` (`<entry>_b0`, `<entry>_n`, ...).
    pub fn ptx_name(self, entry: &str) -> String {
        match self {
            Param::Buffer { index } => format!("{entry}_b{index}"),
            Param::Len => format!("{entry}_n"),
            Param::Partials => format!("{entry}_partials"),
            Param::Uniform { index } => format!("{entry}_u{index}"),
            Param::Table => format!("{entry}_table"),
            Param::Chunks => format!("{entry}_chunks"),
            Param::NumChunks => format!("{entry}_num_chunks"),
            Param::ChunkElems => format!("{entry}_chunk_elems"),
            Param::Batch => format!("{entry}_batch"),
            Param::Rows => format!("{entry}_rows"),
            Param::Cols => format!("{entry}_cols"),
            Param::Vector { index } => format!("{entry}_v{index}"),
            Param::SrKey => format!("{entry}_sr_key"),
        }
    }
}

/// Whether stage `stage` of `kernel` has reduce outputs (so its entries write partials).
pub fn reduces(kernel: &Kernel, stage: usize) -> bool {
    kernel
        .stages
        .get(stage)
        .is_some_and(|s| !s.reduce.is_empty())
}

/// Whether `kernel`'s stores round stochastically (a 16-bit parameter with
/// `--stochastic-rounding`), so its entries take the tensor's key ([`Param::SrKey`], the record
/// field [`TableLayout::sr_key`]).
pub fn stochastic(kernel: &Kernel) -> bool {
    kernel.storage.stochastic_seed().is_some()
}

/// The parameters of the single-tensor entries (and the `_q8` entry) of a stage: every buffer
/// pointer, `n`, the partials pointer when the stage reduces, the stage's uniforms, then the
/// stochastic-rounding key when the kernel rounds stochastically.
pub fn single_params(kernel: &Kernel, stage: usize) -> Vec<Param> {
    let mut params: Vec<Param> = (0..kernel.buffers().len())
        .map(|index| Param::Buffer { index })
        .collect();
    params.push(Param::Len);
    if reduces(kernel, stage) {
        params.push(Param::Partials);
    }
    let uniforms = kernel.stages.get(stage).map_or(0, |s| s.uniforms.len());
    params.extend((0..uniforms).map(|index| Param::Uniform { index }));
    if stochastic(kernel) {
        params.push(Param::SrKey);
    }
    params
}

/// The parameters of the multi-tensor entry (every stage): table, chunks, count, chunk size.
pub fn multi_params() -> Vec<Param> {
    vec![
        Param::Table,
        Param::Chunks,
        Param::NumChunks,
        Param::ChunkElems,
    ]
}

/// What `chunk_elems` of a stage's multi-tensor entry must be a multiple of: a chunk is whole
/// reduce blocks in a stage that reduces, whole groups of 4 otherwise.
pub fn chunk_multiple(kernel: &Kernel, stage: usize) -> usize {
    if reduces(kernel, stage) {
        REDUCE_BLOCK
    } else {
        4
    }
}

/// What the threads per block of a stage's launches must be a multiple of: whole warps in a
/// stage that reduces (one warp per reduce block), anything otherwise.
pub fn block_multiple(kernel: &Kernel, stage: usize) -> u32 {
    if reduces(kernel, stage) {
        32
    } else {
        1
    }
}

/// The number of f32 partials a tensor of `len` elements gets from stage `stage`: one per
/// reduce block per reduce output.
pub fn partials_len(kernel: &Kernel, stage: usize, len: usize) -> usize {
    let outputs = kernel.stages.get(stage).map_or(0, |s| s.reduce.len());
    outputs * len.div_ceil(REDUCE_BLOCK)
}

/// Which entry of a factored stage ([`crate::factored`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactoredEntry {
    /// The rows entry: every store, and the Row-, Tensor- and Step-scope outputs.
    Rows,
    /// The cols entry: the Col-scope outputs.
    Cols,
}

/// Whether stage `stage` of a factored kernel has Col-scope outputs (so a cols entry).
pub fn has_cols_entry(kernel: &Kernel, stage: usize) -> bool {
    outputs(kernel, stage)
        .iter()
        .any(|o| matches!(o, Output::Cols(_)))
}

/// The parameters of an entry of a factored stage: every buffer pointer, `batch`, `rows`,
/// `cols`, one pointer per stage vector, the partials pointer when the entry has outputs, the
/// stage's uniforms, then the stochastic-rounding key when the kernel rounds stochastically.
pub fn factored_params(kernel: &Kernel, stage: usize, entry: FactoredEntry) -> Vec<Param> {
    let mut params: Vec<Param> = (0..kernel.buffers().len())
        .map(|index| Param::Buffer { index })
        .collect();
    params.extend([Param::Batch, Param::Rows, Param::Cols]);
    let vectors = kernel.vectors.stage(stage).len();
    params.extend((0..vectors).map(|index| Param::Vector { index }));
    let has_outputs = outputs(kernel, stage).iter().any(|o| match entry {
        FactoredEntry::Rows => matches!(o, Output::Rows(_)),
        FactoredEntry::Cols => matches!(o, Output::Cols(_)),
    });
    if has_outputs {
        params.push(Param::Partials);
    }
    let uniforms = kernel.stages.get(stage).map_or(0, |s| s.uniforms.len());
    params.extend((0..uniforms).map(|index| Param::Uniform { index }));
    if stochastic(kernel) {
        params.push(Param::SrKey);
    }
    params
}

/// Errors (with the reason) unless `module` lists, for every stage of `kernel`, entries with
/// exactly the parameters, record layout and launch constraints this ABI gives (for a factored
/// kernel, [`FactoredEntries`] and no elementwise entries; for a kernel with int8 states, an
/// `_q8` entry per stage with the single-tensor parameters, and none otherwise).
pub fn check(kernel: &Kernel, module: &PtxModule) -> Result<(), String> {
    if kernel.is_factored() {
        if !module.stages.is_empty() || module.factored.len() != kernel.stages.len() {
            return Err(format!(
                "it has factored entries for {} stages (and {} elementwise), the kernel has {} \
                 factored stages",
                module.factored.len(),
                module.stages.len(),
                kernel.stages.len()
            ));
        }
        for (k, entries) in module.factored.iter().enumerate() {
            check_factored(kernel, k, entries)?;
        }
        return Ok(());
    }
    if !module.factored.is_empty() {
        return Err("it has factored entries for a kernel without [rows]/[cols] values".into());
    }
    if module.stages.len() != kernel.stages.len() {
        return Err(format!(
            "it has entries for {} stages, the kernel has {}",
            module.stages.len(),
            kernel.stages.len()
        ));
    }
    for (k, entries) in module.stages.iter().enumerate() {
        check_stage(kernel, k, entries)?;
    }
    Ok(())
}

fn check_factored(kernel: &Kernel, k: usize, e: &FactoredEntries) -> Result<(), String> {
    let rows = factored_params(kernel, k, FactoredEntry::Rows);
    if e.rows.params != rows {
        return Err(format!(
            "stage {k} entry `{}` takes {} parameters, the kernel's stage passes {}",
            e.rows.name,
            e.rows.params.len(),
            rows.len()
        ));
    }
    match (&e.cols, has_cols_entry(kernel, k)) {
        (Some(c), true) if c.params == factored_params(kernel, k, FactoredEntry::Cols) => {}
        (None, false) => {}
        _ => return Err(format!("stage {k}'s column entry does not fit the kernel")),
    }
    if e.block_multiple != 32 {
        return Err(format!(
            "stage {k}'s launch constraints do not fit the kernel"
        ));
    }
    Ok(())
}

fn check_stage(kernel: &Kernel, k: usize, e: &StageEntries) -> Result<(), String> {
    let single = single_params(kernel, k);
    for entry in [&e.vector, &e.scalar] {
        if entry.params != single {
            return Err(format!(
                "stage {k} entry `{}` takes {} parameters, the kernel's stage passes {}",
                entry.name,
                entry.params.len(),
                single.len()
            ));
        }
    }
    let int8 = kernel.storage.states.contains(&crate::Dtype::Int8);
    match (&e.int8, int8) {
        (Some(q), true) if q.params == single => {}
        (None, false) => {}
        (Some(q), true) => {
            return Err(format!(
                "stage {k} entry `{}` takes {} parameters, the kernel's stage passes {}",
                q.name,
                q.params.len(),
                single.len()
            ))
        }
        (Some(_), false) => {
            return Err(format!(
                "stage {k} has an int8 entry, the kernel no int8 state"
            ))
        }
        (None, true) => {
            return Err(format!(
                "stage {k} has no int8 entry for the kernel's int8 states"
            ))
        }
    }
    if e.multi.params != multi_params() {
        return Err(format!(
            "stage {k} entry `{}` does not take (table, chunks, chunk count, chunk size)",
            e.multi.name
        ));
    }
    let record = TableLayout::of_stage(kernel, k);
    if e.record != record {
        return Err(format!(
            "stage {k}'s multi-tensor table record ({} bytes) is not the {} bytes this kernel's \
             layout needs",
            e.record.stride(),
            record.stride()
        ));
    }
    if e.chunk_multiple != chunk_multiple(kernel, k)
        || e.block_multiple != block_multiple(kernel, k)
    {
        return Err(format!(
            "stage {k}'s launch constraints do not fit the kernel"
        ));
    }
    Ok(())
}
