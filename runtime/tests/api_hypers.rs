//! Hypers and flags: a hyper change never recompiles; one kernel per flag set.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{adamw, bits, data, toy};
use optc_runtime::{GroupId, Optimizer, Options, Rule, RuntimeError, Update};

#[test]
fn hyper_changes_never_recompile_and_take_effect() {
    let mut opt = Optimizer::new(Rule::from_kernel(adamw()).expect("rule")).expect("opt");
    opt.add_param("w", &[64]).expect("add");
    let kernel_before: *const optc_kernel::Kernel = opt.kernel(GroupId::DEFAULT).expect("k");
    assert_eq!(opt.compile_count(), 1);
    let mut w = data(64, 1);
    for step in 0..5u32 {
        let lr = 1e-2 * 0.5f64.powi(step as i32); // a schedule
        opt.set_hyper("lr", lr).expect("lr");
        let g = data(64, 10 + step);
        opt.step([Update::new("w", &mut w, &g)]).expect("step");
    }
    assert_eq!(opt.compile_count(), 1);
    assert!(std::ptr::eq(
        kernel_before,
        opt.kernel(GroupId::DEFAULT).expect("k")
    ));
    assert_eq!(
        opt.hyper(GroupId::DEFAULT, "lr").expect("lr"),
        1e-2 * 0.0625
    );

    // The new lr is used: a step with lr = 0 and weight decay 0 leaves w as it is, lr = 1 does not.
    opt.set_hyper("lr", 0.0).expect("lr");
    let before = w.clone();
    let g = data(64, 99);
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    assert_eq!(bits(&w), bits(&before));
    opt.set_hyper("lr", 1.0).expect("lr");
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    assert_ne!(bits(&w), bits(&before));
    assert_eq!(opt.compile_count(), 1);
}

#[test]
fn groups_have_their_own_hypers_and_share_kernels() {
    let mut opt = Optimizer::new(Rule::from_kernel(toy()).expect("rule")).expect("opt");
    let g1 = opt.add_group(&[]).expect("group");
    assert_eq!(opt.compile_count(), 1, "same flags, same kernel");
    opt.add_param("a", &[4]).expect("a");
    opt.add_param_to(g1, "b", &[4]).expect("b");
    opt.set_hyper("lr", 1.0).expect("lr");
    opt.set_group_hyper(g1, "lr", 0.0).expect("lr");
    let (mut a, mut b) = (vec![1.0f32; 4], vec![1.0f32; 4]);
    let g = [0.5f32; 4];
    opt.step([Update::new("a", &mut a, &g), Update::new("b", &mut b, &g)])
        .expect("step");
    // p' = p - lr * (1 * decay) * g with decay = 0.5.
    assert_eq!(a, [0.75; 4]);
    assert_eq!(b, [1.0; 4]);
    assert_eq!(opt.hyper(g1, "lr").expect("lr"), 0.0);
    assert_eq!(opt.hyper(GroupId::DEFAULT, "lr").expect("lr"), 1.0);
    // A group added later starts from the defaults set by set_hyper.
    let g2 = opt.add_group(&[]).expect("group");
    assert_eq!(opt.hyper(g2, "lr").expect("lr"), 1.0);
}

#[test]
fn unknown_hypers_and_flags_suggest_names() {
    let mut opt = Optimizer::new(Rule::from_kernel(adamw()).expect("rule")).expect("opt");
    let e = opt.set_hyper("betas1", 0.8).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("unknown hyper `betas1` in rule `adamw`; did you mean `beta1`?")
    );
    let e = opt.set_hyper("momentum", 0.8).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("unknown hyper `momentum` in rule `adamw`")
    );
    let e = opt
        .add_group(&[("amsgrd", false)])
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("unknown flag `amsgrd` in rule `adamw`; did you mean `amsgrad`?")
    );
    let e = opt
        .set_group_hyper(GroupId::DEFAULT, "l_r", 1.0)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("unknown hyper `l_r` in rule `adamw`; did you mean `lr`?")
    );
}

#[test]
fn a_prebuilt_kernel_cannot_change_its_flags() {
    let rule = Rule::from_kernel(adamw()).expect("rule");
    let options = Options {
        flags: vec![("amsgrad".into(), true)],
        ..Options::default()
    };
    let e = Optimizer::with_options(rule, options).err();
    assert!(matches!(e, Some(RuntimeError::FixedFlag { .. })), "{e:?}");
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some("the kernel of rule `adamw` was built with amsgrad=false; it cannot be re-specialized (load the rule from source to choose flags)")
    );
}
