//! Kernel variants through the optimizer: conditions on hypers pick a kernel per step, each
//! compiled once; states only some variants use are allocated on first need and kept; the
//! results equal the kernel with the selects (the interpreter running the flag set's description
//! kernel, all states allocated from the start) bit for bit, on the interpreter and on the CPU
//! with FMA off, with hypers switching mid-run; checkpoints and torch state files carry the
//! states allocated so far.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_compiler::backend::interp::{step_many, Buffers, TensorStep};
use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};

fn sgd(target: Target) -> Optimizer {
    let options = Options {
        target,
        allow_fma: false,
        ..Options::default()
    };
    Optimizer::with_options(Rule::stdlib("sgd").expect("rule"), options).expect("opt")
}

#[test]
fn momentum_zero_runs_the_12_byte_kernel_and_allocates_no_buffer() {
    let mut opt = sgd(Target::Cpu);
    opt.add_param("w", &[100]).expect("add");
    assert_eq!(opt.compile_count(), 1);
    assert_eq!(
        opt.kernel(GroupId::DEFAULT).expect("k").bytes_per_element(),
        12
    );
    let (mut w, g) = (data(100, 1), data(100, 2));
    for _ in 0..3 {
        opt.step([Update::new("w", &mut w, &g)]).expect("step");
    }
    assert!(opt.states("w").expect("states").is_empty());
    assert_eq!(opt.compile_count(), 1);

    // Momentum on: one more kernel, and the buffer appears.
    opt.set_hyper("momentum", 0.9).expect("momentum");
    assert_eq!(opt.compile_count(), 2);
    assert_eq!(
        opt.kernel(GroupId::DEFAULT).expect("k").bytes_per_element(),
        20
    );
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    let states = opt.states("w").expect("states");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0, "buf");
    // buf starts at 0 and t > 1: buf = 0.9 * 0 + (1 - 0) * g = g exactly (torch clones g).
    assert_eq!(bits(&states[0].1), bits(&g));

    // Back to 0: no new compile, the buffer is kept and no longer changes.
    opt.set_hyper("momentum", 0.0).expect("momentum");
    for _ in 0..2 {
        opt.step([Update::new("w", &mut w, &g)]).expect("step");
    }
    assert_eq!(opt.compile_count(), 2);
    let kept = opt.states("w").expect("states");
    assert_eq!(bits(&kept[0].1), bits(&g));
    opt.set_hyper("momentum", 0.9).expect("momentum");
    opt.set_hyper("weight_decay", 0.01).expect("wd");
    opt.step([Update::new("w", &mut w, &g)]).expect("step");
    assert_eq!(opt.compile_count(), 3);
}

/// Steps sgd and rmsprop on `target` with hypers switching between variants and compares with
/// the description kernel run by the interpreter with every state allocated at the start.
fn switching_matches_the_selects(target: Target, rule: &str, toggles: &[(&str, f64)]) {
    let options = Options {
        target,
        allow_fma: false,
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(Rule::stdlib(rule).expect("rule"), options).expect("opt");
    let n = 1000;
    opt.add_param("w", &[10, 100]).expect("add");
    let base = opt.kernel(GroupId::DEFAULT).expect("k").clone();
    let parsed = optc_compiler::stdlib::rule(rule)
        .expect("rule")
        .expect("parses");
    let flags: Vec<bool> = parsed.flags().iter().map(|f| f.default).collect();
    let rank = if parsed.uses_rank() {
        optc_compiler::RankClass::Matrix
    } else {
        optc_compiler::RankClass::Any
    };
    let options = optc_compiler::CompileOptions {
        clip: false,
        rank,
        ..Default::default()
    };
    let description = parsed
        .specialize_values_with(&flags, &options)
        .expect("description");
    assert_eq!(description.hypers, base.hypers);
    let hyper = |name: &str| {
        description
            .hypers
            .iter()
            .position(|h| h.name == name)
            .expect("hyper")
    };
    let mut hypers = description.default_hypers();
    // The parameter as a matrix, for factored kernels (adafactor's).
    let dims = optc_kernel::MatrixDims::of_shape(&[10, 100]).expect("dims");
    let mut w = data(n, 3);
    let mut reference = w.clone();
    let values = description.eval_init(&hypers).expect("init");
    let mut states: Vec<Vec<f32>> = description
        .states
        .iter()
        .map(|s| match s.init {
            optc_kernel::Init::Value(h) => vec![values[h.index()] as f32; dims.len(s.shape)],
            optc_kernel::Init::Param => reference.clone(),
        })
        .collect();
    let mut scalars = description.initial_scalars(&hypers).expect("scalars");
    let pattern = [0usize, 0, 2, 3, 1, 0, 2, 2, 1, 3, 0, 2];
    for (i, &mask) in pattern.iter().enumerate() {
        for (j, (name, on)) in toggles.iter().enumerate() {
            let off = description.hypers[hyper(name)].default;
            let v = if mask >> j & 1 == 1 { *on } else { off };
            opt.set_hyper(name, v).expect("set");
            hypers[hyper(name)] = v;
        }
        let g = data(n, 100 + i as u32);
        opt.step([Update::new("w", &mut w, &g)]).expect("step");
        step_many(
            &description,
            vec![TensorStep {
                hypers: &hypers,
                t: i as u64 + 1,
                scalars: &mut scalars,
                bufs: Buffers {
                    param: &mut reference,
                    grad: &g,
                    states: states.iter_mut().map(Vec::as_mut_slice).collect(),
                },
                dims: description.is_factored().then_some(dims),
                view: None,
                tensor: 0,
            }],
        )
        .expect("reference");
        assert_eq!(bits(&w), bits(&reference), "{rule} {target} step {}", i + 1);
        for (name, values) in opt.states("w").expect("states") {
            let at = description
                .states
                .iter()
                .position(|s| s.name == name)
                .expect("state");
            assert_eq!(bits(&values), bits(&states[at]), "{rule} state {name}");
        }
    }
    assert!(opt.compile_count() <= 4);
}

#[test]
fn switching_variants_matches_the_selects_on_the_interpreter_and_the_cpu() {
    for target in [Target::Interp, Target::Cpu] {
        switching_matches_the_selects(target, "sgd", &[("momentum", 0.9), ("weight_decay", 0.1)]);
        switching_matches_the_selects(
            target,
            "rmsprop",
            &[("momentum", 0.5), ("weight_decay", 0.1)],
        );
    }
}

#[test]
fn every_stdlib_rule_with_conditions_matches_the_selects_on_the_cpu() {
    let mut checked = 0;
    for name in optc_compiler::stdlib::names() {
        let parsed = optc_compiler::stdlib::rule(name)
            .expect("rule")
            .expect("parses");
        let flags: Vec<bool> = parsed.flags().iter().map(|f| f.default).collect();
        let rank = if parsed.uses_rank() {
            optc_compiler::RankClass::Matrix
        } else {
            optc_compiler::RankClass::Any
        };
        let options = optc_compiler::CompileOptions {
            clip: false,
            rank,
            ..Default::default()
        };
        let conds = parsed.conditions(&flags, &options).expect("conditions");
        let mut hypers: Vec<usize> = conds
            .program
            .iter()
            .filter_map(|(_, e)| match e {
                optc_kernel::Expr::Hyper(h) => Some(h.index()),
                _ => None,
            })
            .collect();
        hypers.sort();
        hypers.dedup();
        let toggles: Vec<(&str, f64)> = hypers
            .iter()
            .take(2)
            .map(|&h| {
                let decl = &parsed.hypers()[h];
                (
                    decl.name.as_str(),
                    if decl.default == 0.0 { 0.5 } else { 0.0 },
                )
            })
            .collect();
        if toggles.is_empty() {
            continue;
        }
        switching_matches_the_selects(Target::Cpu, name, &toggles);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} rules have conditions");
}

#[test]
fn checkpoints_and_torch_state_carry_only_allocated_states() {
    let mut opt = sgd(Target::Cpu);
    opt.add_param("a", &[8]).expect("add");
    opt.add_param("b", &[8]).expect("add");
    let (mut a, mut b, g) = (data(8, 1), data(8, 2), data(8, 3));
    opt.step([Update::new("a", &mut a, &g), Update::new("b", &mut b, &g)])
        .expect("step");
    // torch at momentum 0: a step count and no momentum_buffer.
    let torch = opt.to_torch_bytes().expect("torch");
    let st = safetensors::SafeTensors::deserialize(&torch).expect("st");
    let mut names: Vec<&str> = st.names().into_iter().collect();
    names.sort();
    assert_eq!(names, ["a.step", "b.step"]);
    let saved = opt.to_bytes().expect("save");

    // A fresh optimizer reads both; a later step with momentum allocates the buffer then.
    for bytes in [&saved, &torch] {
        let mut other = sgd(Target::Cpu);
        other.add_param("a", &[8]).expect("add");
        other.add_param("b", &[8]).expect("add");
        if bytes == &saved {
            other.load_bytes(bytes).expect("load");
        } else {
            other.load_torch_bytes(bytes).expect("load torch");
        }
        assert_eq!(other.step_count("a").expect("t"), 1);
        assert!(other.states("a").expect("states").is_empty());
        other.set_hyper("momentum", 0.9).expect("m");
        let (mut a2, mut b2) = (a.clone(), b.clone());
        other
            .step([Update::new("a", &mut a2, &g), Update::new("b", &mut b2, &g)])
            .expect("step");
        assert_eq!(other.states("a").expect("states").len(), 1);
    }

    // With momentum in the torch file, a momentum_buffer is required, and round-trips.
    opt.set_hyper("momentum", 0.9).expect("m");
    opt.step([Update::new("a", &mut a, &g)]).expect("step");
    let torch = opt.to_torch_bytes().expect("torch");
    let st = safetensors::SafeTensors::deserialize(&torch).expect("st");
    let mut names: Vec<&str> = st.names().into_iter().collect();
    names.sort();
    assert_eq!(names, ["a.momentum_buffer", "a.step", "b.step"]);
    let saved = opt.to_bytes().expect("save");
    let mut other = sgd(Target::Cpu);
    other.add_param("a", &[8]).expect("add");
    other.add_param("b", &[8]).expect("add");
    other.set_hyper("momentum", 0.9).expect("m");
    other.load_bytes(&saved).expect("load");
    assert_eq!(
        bits(&other.states("a").expect("s")[0].1),
        bits(&opt.states("a").expect("s")[0].1)
    );
    // `b` has no buffer, and the group's momentum needs one: torch import refuses.
    let err = other
        .load_torch_bytes(&torch)
        .expect_err("b lacks a buffer");
    assert!(err.to_string().contains("b.momentum_buffer"), "{err}");
}

#[test]
fn groups_with_different_hypers_run_different_variants_in_one_step() {
    let mut opt = sgd(Target::Cpu);
    let fast = opt.add_group(&[]).expect("group");
    opt.set_group_hyper(fast, "momentum", 0.9).expect("m");
    opt.add_param("a", &[50]).expect("add");
    opt.add_param_to(fast, "b", &[70]).expect("add");
    assert_eq!(opt.compile_count(), 2);
    assert_eq!(opt.param_kernel("a").expect("k").bytes_per_element(), 12);
    assert_eq!(opt.param_kernel("b").expect("k").bytes_per_element(), 20);
    let (mut a, mut b) = (data(50, 1), data(70, 2));
    let (ga, gb) = (data(50, 3), data(70, 4));
    // The same steps, each tensor in an optimizer of its own.
    let mut alone_a = sgd(Target::Cpu);
    alone_a.add_param("a", &[50]).expect("add");
    let mut alone_b = sgd(Target::Cpu);
    alone_b.set_hyper("momentum", 0.9).expect("m");
    alone_b.add_param("b", &[70]).expect("add");
    let (mut a2, mut b2) = (a.clone(), b.clone());
    for _ in 0..3 {
        opt.step([Update::new("a", &mut a, &ga), Update::new("b", &mut b, &gb)])
            .expect("step");
        alone_a.step([Update::new("a", &mut a2, &ga)]).expect("a");
        alone_b.step([Update::new("b", &mut b2, &gb)]).expect("b");
    }
    assert_eq!(bits(&a), bits(&a2));
    assert_eq!(bits(&b), bits(&b2));
    assert!(opt.states("a").expect("s").is_empty());
    assert_eq!(opt.states("b").expect("s").len(), 1);
}
