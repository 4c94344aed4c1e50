//! Kernel -> PTX text (CUDA). Owned by the CUDA backend work.
