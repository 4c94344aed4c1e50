//! # optc-kernel: the fused-kernel description
//!
//! The data shared by the compiler (which produces it), every backend (which lowers it) and the
//! runtime (which runs it, possibly loaded from an artifact with no compiler present):
//!
//! - [`op`]: the ops and their meaning, the single definition that every backend must match;
//! - [`expr`]: the DAG node type used by every program of the IR;
//! - [`kernel`]: the fused kernel: host program, then stages (uniforms, per-element body,
//!   stores, reduce outputs);
//! - [`reduce`]: reductions and the one summation order every backend follows;
//! - [`vector`]: `[rows]`/`[cols]` values and the host's vector program of a matrix kernel;
//! - [`dtype`] and [`quant`]: storage dtypes, and the one definition of every conversion between
//!   a stored value and f32 (rounding, stochastic rounding, 8-bit block quantization);
//! - [`storage`]: the storage dtype of each buffer of a kernel, and the precision options
//!   (16-bit params, bf16 states, f32 master weights, stochastic rounding) that set it;
//! - [`int8`]: int8 states: the per-block map choice, loads and stores every backend matches;
//! - [`matrix`]: matrix programs (products between the per-element passes) and their meaning;
//! - [`valid`]: a kernel validated once, with the buffer analysis every backend shares;
//! - [`variant`]: the conditions on hypers that choose a kernel variant per step;
//! - [`artifact`]: the file `optc compile --target cuda` writes and the runtime loads;
//! - [`abi`] and [`table`]: the launch ABI of the PTX entries, as data the artifact carries.
//!
//! Nothing here parses `.opt` source or optimizes; see `optc-compiler` for that.

pub mod abi;
pub mod arena;
pub mod artifact;
mod code_table;
pub mod dtype;
pub mod eval;
pub mod expr;
pub mod factored;
pub mod int8;
pub mod kernel;
pub mod matrix;
pub mod num;
pub mod op;
pub mod quant;
pub mod reduce;
pub mod storage;
pub mod table;
pub mod valid;
pub mod variant;
pub mod vector;

pub use arena::{Arena, Handle};
pub use artifact::{Artifact, ArtifactError};
pub use dtype::Dtype;
pub use expr::{Expr, FlagId, HyperId, ReductionId, ScalarId, Slot, StateId, UniformId, VectorId};
pub use kernel::{
    BufferUse, FlagValue, HostValues, HyperDecl, Init, Kernel, KernelError, RankClass,
    ReduceOutput, ScalarDecl, ScalarUpdate, Stage, StateDecl, StateShape, Store, FORMAT_VERSION,
};
pub use op::{BinaryOp, Real, UnaryOp};
pub use reduce::{
    ReduceOp, ReductionDecl, Scope, COL_BLOCK_ROWS, GRAD_NORM_REDUCTION, NONFINITE_REDUCTION,
    REDUCE_BLOCK, REDUCE_LANES,
};
pub use storage::{Precision, Rounding, Storage};
pub use valid::ValidKernel;
pub use variant::{Condition, ConditionValue, Conditions, VariantId, MAX_CONDITIONS};
pub use vector::{MatrixDims, VecShape, VectorProgram};
