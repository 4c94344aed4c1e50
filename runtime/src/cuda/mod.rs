//! CUDA execution through cudarc. Owned by the CUDA backend work.
