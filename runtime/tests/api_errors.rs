//! Every user error is an error, never a panic, and a failing step changes nothing.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{adamw, bits, data};
use optc_runtime::{Optimizer, Rule, RuntimeError, Update};

fn optimizer() -> Optimizer {
    let mut opt = Optimizer::new(Rule::from_kernel(adamw()).expect("rule")).expect("opt");
    opt.add_param("encoder.weight", &[2, 3]).expect("add");
    opt.add_param("encoder.bias", &[3]).expect("add");
    opt
}

fn message<T: std::fmt::Debug>(r: Result<T, RuntimeError>) -> String {
    r.err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no error".into())
}

#[test]
fn registration_errors() {
    let mut opt = optimizer();
    assert_eq!(
        message(opt.add_param("encoder.bias", &[3])),
        "parameter `encoder.bias` is given twice"
    );
    assert_eq!(
        message(opt.add_param("huge", &[usize::MAX, 2])),
        format!("the shape [{}, 2] of `huge` is too large", usize::MAX)
    );
    let mut other = optimizer();
    let foreign = other.add_group(&[]).expect("group");
    assert_eq!(
        message(opt.add_param_to(foreign, "x", &[1])),
        "there is no parameter group 1"
    );
}

#[test]
fn step_errors_change_nothing() {
    let mut opt = optimizer();
    let (mut w, mut b) = (data(6, 1), data(3, 2));
    let (gw, gb) = (data(6, 3), data(3, 4));
    let (w0, b0) = (w.clone(), b.clone());

    let e = message(opt.step([
        Update::new("encoder.weight", &mut w, &gw),
        Update::new("encoder.bais", &mut b, &gb),
    ]));
    assert_eq!(
        e,
        "unknown parameter `encoder.bais` in this optimizer; did you mean `encoder.bias`?"
    );

    let short = data(2, 5);
    let e = message(opt.step([
        Update::new("encoder.weight", &mut w, &gw),
        Update::new("encoder.bias", &mut b, &short),
    ]));
    assert_eq!(
        e,
        "the gradient of parameter `encoder.bias` has 2 elements, expected 3"
    );

    let mut long = data(7, 5);
    let e = message(opt.step([Update::new("encoder.weight", &mut long, &gw)]));
    assert_eq!(
        e,
        "the parameter of parameter `encoder.weight` has 7 elements, expected 6"
    );

    let mut w2 = w.clone();
    let e = message(opt.step([
        Update::new("encoder.weight", &mut w, &gw),
        Update::new("encoder.weight", &mut w2, &gw),
    ]));
    assert_eq!(e, "parameter `encoder.weight` is given twice");

    let e = message(opt.step_all(&mut [&mut w, &mut b], &[&gw]));
    assert_eq!(e, "got 1 gradients for 2 registered parameters");
    let e = message(opt.step_all(&mut [&mut w], &[&gw]));
    assert_eq!(e, "got 1 parameters for 2 registered parameters");

    assert_eq!(bits(&w), bits(&w0));
    assert_eq!(bits(&b), bits(&b0));
    for name in ["encoder.weight", "encoder.bias"] {
        assert_eq!(opt.step_count(name).ok(), Some(0));
        assert!(opt.states(name).expect("states").is_empty());
    }
    assert_eq!(
        message(opt.step_count("nope")),
        "unknown parameter `nope` in this optimizer"
    );

    opt.step_all(&mut [&mut w, &mut b], &[&gw, &gb])
        .expect("a good step works after bad ones");
    assert_eq!(opt.step_count("encoder.bias").ok(), Some(1));
}

#[test]
fn byte_input_errors() {
    let mut opt = optimizer();
    let words = data(8, 1);
    let mut p_words = data(4, 2);
    let grad: &[u8] = bytemuck::cast_slice(&words);
    let param: &mut [u8] = bytemuck::cast_slice_mut(&mut p_words);
    // Unaligned: one byte into a 4-aligned buffer.
    let e = message(Update::from_bytes(
        "encoder.bias",
        &mut param[..12],
        &grad[1..13],
    ));
    assert_eq!(
        e,
        "bytes of `encoder.bias` cannot be read as f32: the buffer is not 4-byte aligned (copy it with `f32_vec`)"
    );
    // A ragged byte count.
    let e = message(Update::from_bytes(
        "encoder.bias",
        &mut param[..12],
        &grad[..11],
    ));
    assert_eq!(
        e,
        "bytes of `encoder.bias` cannot be read as f32: 11 bytes is not a whole number of 4-byte f32 elements"
    );
    // Too short: whole f32s, but fewer than registered.
    let u = Update::from_bytes("encoder.bias", &mut param[..12], &grad[..8]).expect("view");
    assert_eq!(
        message(opt.step([u])),
        "the gradient of parameter `encoder.bias` has 2 elements, expected 3"
    );
    // Right: steps.
    let u = Update::from_bytes("encoder.bias", &mut param[..12], &grad[..12]).expect("view");
    opt.step([u]).expect("step");
    assert_eq!(opt.step_count("encoder.bias").ok(), Some(1));
    // Wrong dtype, from safetensors.
    let f64s = [0u8; 24];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![3], &f64s)
        .expect("view");
    assert_eq!(
        message(optc_runtime::bytes::f32_view("encoder.bias", &view)),
        "tensor `encoder.bias` has dtype F64; optc steps f32 tensors only"
    );
}
