//! CLIF text of the hand-built kernels with fixed options (no FMA, 2x unrolled, System V), so a
//! change in the lowering shows up as a snapshot diff.

mod clif_kernels;

use optc_compiler::backend::clif::{emit_text, Options};

#[test]
fn clif_text_of_hand_built_kernels() {
    for k in clif_kernels::all() {
        let text = emit_text(&k, &Options::default()).expect("lowers");
        insta::assert_snapshot!(format!("clif_{}", k.rule), text);
    }
}

#[test]
fn clif_text_with_fma() {
    let k = clif_kernels::adamw_amsgrad();
    let opts = Options {
        fma: true,
        ..Options::default()
    };
    let text = emit_text(&k, &opts).expect("lowers");
    assert!(text.contains("fma"), "AdamW's moment updates fuse into fma");
    insta::assert_snapshot!("clif_adamw_amsgrad_fma", text);
}

#[test]
fn refuses_row_scope_with_a_clear_error() {
    let err = emit_text(&clif_kernels::row_sum(), &Options::default()).expect_err("row scope");
    assert!(
        matches!(err, optc_compiler::backend::clif::Error::Unsupported { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "rule `row_sum`: the CPU backend cannot lower the row-scope reduction `r0`"
    );
}

#[test]
fn rejects_bad_unroll() {
    let k = clif_kernels::sgd();
    let opts = Options {
        unroll: 3,
        ..Options::default()
    };
    assert!(emit_text(&k, &opts).is_err());
}
