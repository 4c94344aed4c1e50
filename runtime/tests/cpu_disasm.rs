//! Prints the host machine code of the AdamW kernel, to inspect the main loop by hand:
//!
//! ```text
//! cargo test --release -p optc-runtime --test cpu_disasm -- --ignored --nocapture
//! ```
//!
//! Uses the same settings as the JIT (`opt_level = none`, host ISA flags, FMA where present).
#![cfg(feature = "compiler")]

mod cpu_common;

use cranelift_codegen::settings::{self, Configurable};

#[test]
#[ignore = "prints machine code; run by hand"]
fn cpu_disasm_adamw() {
    let k = cpu_common::kernels::adamw();
    let mut flags = settings::builder();
    flags.set("opt_level", "none").expect("flag");
    let isa = cranelift_native::builder()
        .expect("host")
        .finish(settings::Flags::new(flags))
        .expect("isa");
    let has_fma = isa
        .isa_flags()
        .iter()
        .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
    let opts = optc_compiler::backend::clif::Options {
        fma: has_fma,
        ..Default::default()
    };
    let func = optc_compiler::backend::clif::emit_stage(&k, 0, &opts).expect("lowers");
    let mut ctx = cranelift_codegen::Context::for_function(func);
    ctx.set_disasm(true);
    let mut ctrl = cranelift_codegen::control::ControlPlane::default();
    let code = ctx.compile(&*isa, &mut ctrl).expect("compiles");
    println!("{}", code.vcode.clone().unwrap_or_default());
}
