//! The runtime's multi-tensor table layout is the one the PTX backend reads.
#![cfg(all(feature = "cuda", feature = "compiler"))]

#[path = "../../compiler/tests/ptx_kernels/mod.rs"]
mod ptx_kernels;

use optc_compiler::backend::ptx::layout as ptx;
use optc_runtime::cuda::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};

#[test]
fn runtime_and_backend_agree_on_the_table_layout() {
    assert_eq!(CHUNK_RECORD_BYTES, ptx::CHUNK_RECORD_BYTES);
    assert_eq!(FLAG_ALIGNED, ptx::FLAG_ALIGNED);
    for k in ptx_kernels::all() {
        let (rt, be) = (TableLayout::of(&k), ptx::TableLayout::of(&k));
        assert_eq!(
            (rt.buffers, rt.uniforms),
            (be.buffers, be.uniforms),
            "{}",
            k.rule
        );
        assert_eq!(rt.stride(), be.stride(), "{}", k.rule);
        assert_eq!(rt.len_offset(), be.len_offset());
        assert_eq!(rt.flags_offset(), be.flags_offset());
        for i in 0..rt.buffers {
            assert_eq!(rt.pointer_offset(i), be.pointer_offset(i));
        }
        for u in 0..rt.uniforms {
            assert_eq!(rt.uniform_offset(u), be.uniform_offset(u));
        }
    }
}
