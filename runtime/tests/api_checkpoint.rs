//! Checkpoints: exact round trips, and loads that must fail without changing anything.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{adamw, bits, data, toy};
use optc_kernel::Kernel;
use optc_runtime::{GroupId, Optimizer, Options, Rule, RuntimeError, Update};

fn optimizer(kernel: Kernel) -> Optimizer {
    let rule = Rule::from_kernel(kernel).expect("valid kernel");
    let mut opt = Optimizer::with_options(rule, Options::default()).expect("optimizer");
    opt.add_param("layer.0.weight", &[4, 8]).expect("add");
    let g = opt.add_group(&[]).expect("group");
    opt.add_param_to(g, "layer.0.bias", &[8]).expect("add");
    opt.add_param_to(g, "never.stepped", &[3]).expect("add");
    opt
}

fn run(opt: &mut Optimizer, p: &mut [Vec<f32>; 2], steps: std::ops::Range<u32>) {
    for s in steps {
        let (g0, g1) = (data(32, 10 * s), data(8, 10 * s + 1));
        let [w, b] = p;
        opt.step([
            Update::new("layer.0.weight", w, &g0),
            Update::new("layer.0.bias", b, &g1),
        ])
        .expect("step");
    }
}

/// A parameter's name, step count, states and scalars, as bits.
type Snapshot = (String, u64, Vec<(String, Vec<u32>)>, Vec<(String, u64)>);

fn snapshot(opt: &Optimizer) -> Vec<Snapshot> {
    opt.param_names()
        .map(|n| {
            let states = opt.states(n).expect("states");
            let scalars = opt.scalars(n).expect("scalars");
            (
                n.to_string(),
                opt.step_count(n).expect("t"),
                states
                    .iter()
                    .map(|(s, v)| (s.to_string(), bits(v)))
                    .collect(),
                scalars
                    .iter()
                    .map(|(s, v)| (s.to_string(), v.to_bits()))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn round_trip_is_exact_and_training_continues_identically() {
    for kernel in [adamw(), toy()] {
        let mut a = optimizer(kernel.clone());
        a.set_hyper("lr", 0.0123).expect("lr");
        a.set_group_hyper(GroupId::DEFAULT, "lr", 1.0 / 3.0)
            .expect("lr");
        let mut p = [data(32, 1), data(8, 2)];
        run(&mut a, &mut p, 0..3);
        let saved = a.to_bytes().expect("save");

        let mut b = optimizer(kernel.clone());
        b.load_bytes(&saved).expect("load");
        assert_eq!(snapshot(&a), snapshot(&b), "{}", kernel.rule);
        assert_eq!(
            b.hyper(GroupId::DEFAULT, "lr").expect("lr").to_bits(),
            (1.0f64 / 3.0).to_bits()
        );
        assert_eq!(
            b.to_bytes().expect("save"),
            saved,
            "saving again gives the same bytes"
        );

        let mut q = p.clone();
        run(&mut a, &mut p, 3..5);
        run(&mut b, &mut q, 3..5);
        assert_eq!(bits(&p[0]), bits(&q[0]));
        assert_eq!(bits(&p[1]), bits(&q[1]));
        assert_eq!(snapshot(&a), snapshot(&b));
    }
}

#[test]
fn round_trip_through_a_file() {
    let mut a = optimizer(toy());
    let mut p = [data(32, 1), data(8, 2)];
    run(&mut a, &mut p, 0..2);
    let dir = std::env::temp_dir().join(format!("optc-api-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("opt.safetensors");
    a.save(&path).expect("save");
    let mut b = optimizer(toy());
    b.load(&path).expect("load");
    assert_eq!(snapshot(&a), snapshot(&b));
    let st_bytes = std::fs::read(&path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&st_bytes).expect("safetensors");
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "__optc__/defaults",
            "__optc__/hypers",
            "__optc__/scalars",
            "layer.0.bias.c",
            "layer.0.bias.slow",
            "layer.0.weight.c",
            "layer.0.weight.slow"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_error(into: &mut Optimizer, bytes: &[u8]) -> String {
    let before = snapshot(into);
    let e = into
        .load_bytes(bytes)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(before, snapshot(into), "a failed load changes nothing");
    e
}

#[test]
fn loads_that_do_not_fit_fail_cleanly() {
    let mut a = optimizer(toy());
    let mut p = [data(32, 1), data(8, 2)];
    run(&mut a, &mut p, 0..2);
    let saved = a.to_bytes().expect("save");

    // Another rule.
    let mut other = optimizer(adamw());
    run(&mut other, &mut p, 0..1);
    assert_eq!(
        load_error(&mut other, &saved),
        "checkpoint: it was saved by rule `toy`, this optimizer runs `adamw`"
    );

    // Another shape.
    let rule = Rule::from_kernel(toy()).expect("rule");
    let mut shaped = Optimizer::new(rule).expect("opt");
    shaped.add_param("layer.0.weight", &[8, 4]).expect("add");
    let g = shaped.add_group(&[]).expect("g");
    shaped.add_param_to(g, "layer.0.bias", &[8]).expect("add");
    shaped.add_param_to(g, "never.stepped", &[3]).expect("add");
    assert_eq!(
        load_error(&mut shaped, &saved),
        "checkpoint: parameter `layer.0.weight` [4, 8] in group 0 was saved where this optimizer has `layer.0.weight` [8, 4] in group 0"
    );

    // Other groups.
    let mut grouped = Optimizer::new(Rule::from_kernel(toy()).expect("rule")).expect("opt");
    grouped.add_param("layer.0.weight", &[4, 8]).expect("add");
    assert!(load_error(&mut grouped, &saved)
        .starts_with("checkpoint: parameter groups differ: saved 2 group(s)"));

    // A missing state tensor, and a state tensor of the wrong dtype.
    let st = safetensors::SafeTensors::deserialize(&saved).expect("st");
    let (_, header) = safetensors::SafeTensors::read_metadata(&saved).expect("meta");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let without: Vec<_> = views
        .iter()
        .filter(|(n, _)| n != "layer.0.bias.c")
        .cloned()
        .collect();
    let broken = safetensors::serialize(without, header.metadata().clone()).expect("serialize");
    let mut fresh = optimizer(toy());
    assert_eq!(
        load_error(&mut fresh, &broken),
        "checkpoint: tensor `layer.0.bias.c` is missing"
    );

    let f64_data = vec![0u8; 8 * 8];
    let mut retyped: Vec<_> = views
        .iter()
        .filter(|(n, _)| n != "layer.0.bias.c")
        .cloned()
        .collect();
    retyped.push((
        "layer.0.bias.c".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![8], &f64_data)
            .expect("view"),
    ));
    let broken = safetensors::serialize(retyped, header.metadata().clone()).expect("serialize");
    assert_eq!(
        load_error(&mut fresh, &broken),
        "checkpoint: tensor `layer.0.bias.c` is F64 [8], expected F32 [8]"
    );

    // Not a checkpoint at all.
    let plain = safetensors::serialize(views.clone(), None).expect("serialize");
    assert_eq!(
        load_error(&mut fresh, &plain),
        "checkpoint: not an optc checkpoint (no `optc` metadata)"
    );
    assert!(matches!(
        fresh.load_bytes(b"garbage"),
        Err(RuntimeError::Safetensors(_))
    ));
}
