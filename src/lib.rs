//! optc facade (placeholder while the workspace is built).

pub mod compare;
