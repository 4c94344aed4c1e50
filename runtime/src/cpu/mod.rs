//! CPU execution: Cranelift JIT and rayon work splitting. Owned by the CPU backend work.
