//! The multi-tensor table layout the multi-tensor entry reads: defined in
//! [`optc_kernel::table`], shared with the CUDA runtime.

pub use optc_kernel::table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};
