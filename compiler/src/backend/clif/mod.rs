//! Kernel -> Cranelift IR (CPU). Owned by the CPU backend work.
