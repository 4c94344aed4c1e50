//! Kernel variants (`optc_kernel::variant`): conditions on hypers alone, the bytes each variant
//! moves, the listing `--emit ir` prints, and, for every stdlib rule, flag set and rank class,
//! that running the variant the hypers select gives bit for bit what the kernel with the selects
//! gives, with the hypers switching between variants mid-run.

use optc_compiler::backend::interp::{step_many, Buffers, TensorStep};
use optc_compiler::{stdlib, CompileOptions, RankClass, Rule};
use optc_kernel::{Expr, Init, Kernel, MatrixDims, StateShape, VariantId};

fn rule(name: &str) -> Rule {
    match stdlib::rule(name) {
        Some(Ok(r)) => r,
        _ => panic!("no stdlib rule {name}"),
    }
}

fn defaults(r: &Rule) -> Vec<bool> {
    r.flags().iter().map(|f| f.default).collect()
}

fn any() -> CompileOptions {
    CompileOptions::default()
}

#[test]
fn sgd_moves_12_bytes_without_momentum() {
    let r = rule("sgd");
    let flags = defaults(&r);
    let conds = r.conditions(&flags, &any()).expect("ok");
    let texts: Vec<&str> = conds.conditions.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["weight_decay != 0", "momentum != 0"]);
    let bytes = |v| {
        let k = r
            .specialize_variant(&flags, &any(), VariantId(v))
            .expect("ok");
        (k.bytes_per_element(), k.states.len())
    };
    // Bit 0: weight decay; bit 1: momentum.
    assert_eq!(bytes(0), (12, 0));
    assert_eq!(bytes(1), (12, 0));
    assert_eq!(bytes(2), (20, 1));
    assert_eq!(bytes(3), (20, 1));
    // The description kernel keeps the selects, and the buffer.
    assert_eq!(
        r.specialize_values(&flags).expect("ok").bytes_per_element(),
        20
    );
}

#[test]
fn rmsprop_moves_20_bytes_without_momentum() {
    let r = rule("rmsprop");
    let flags = defaults(&r);
    let conds = r.conditions(&flags, &any()).expect("ok");
    let texts: Vec<&str> = conds.conditions.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["weight_decay != 0", "momentum > 0"]);
    let k = r
        .specialize_variant(&flags, &any(), VariantId(0))
        .expect("ok");
    assert_eq!(k.bytes_per_element(), 20);
    let names: Vec<&str> = k.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v"]);
    let k = r
        .specialize_variant(&flags, &any(), VariantId(2))
        .expect("ok");
    assert_eq!(k.bytes_per_element(), 28);
}

#[test]
fn conditions_on_t_stay_in_the_kernel() {
    // radam's `rho_t > 5` reads t, adamsgd's `t <= switch_step` too: neither is a condition.
    for name in ["radam", "adamsgd"] {
        let r = rule(name);
        let conds = r.conditions(&defaults(&r), &any()).expect("ok");
        assert!(
            conds.conditions.iter().all(|c| !c.text.contains('t')
                || c.text.contains("weight_decay")
                || c.text.contains("momentum")),
            "{name}: {:?}",
            conds.conditions
        );
        let k = r
            .specialize_variant(&defaults(&r), &any(), VariantId(0))
            .expect("ok");
        let selects = k.stages[0]
            .body
            .iter()
            .filter(|(_, e)| matches!(e, Expr::Select(..)))
            .count();
        assert!(selects > 0, "{name} lost its select on t:\n{k}");
    }
}

/// A deterministic pseudo-random f32 in [-1, 1).
fn noise(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// The states of `k` as they start; a `[rows]`/`[cols]` state has the length `dims` gives it.
fn init_values(k: &Kernel, hypers: &[f64], p: &[f32], dims: MatrixDims) -> Vec<Vec<f32>> {
    let values = k.eval_init(hypers).expect("ok");
    k.states
        .iter()
        .map(|s| match (s.init, s.shape) {
            (Init::Param, _) => p.to_vec(),
            (Init::Value(h), StateShape::Full) => vec![values[h.index()] as f32; p.len()],
            (Init::Value(h), shape) => vec![values[h.index()] as f32; dims.len(shape)],
        })
        .collect()
}

/// One step of one tensor on the interpreter in f32, as a matrix where `k` is factored.
fn step(
    k: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f32>,
    dims: MatrixDims,
) {
    // Matrix stages read the tensor's wide view (a 2-D `dims.rows × dims.cols` here).
    let view =
        k.stages
            .iter()
            .any(|s| s.matrix.is_some())
            .then_some(optc_kernel::matrix::WideView {
                rows: dims.batch * dims.rows,
                cols: dims.cols,
            });
    let dims = k.is_factored().then_some(dims);
    step_many(
        k,
        vec![TensorStep {
            hypers,
            t,
            scalars,
            bufs,
            dims,
            view,
            tensor: 0,
        }],
    )
    .expect("ok");
}

/// Runs `steps` steps of the description kernel and of the selected variants side by side.
fn agree(r: &Rule, flags: &[bool], options: &CompileOptions) {
    let base = r.specialize_values_with(flags, options).expect("ok");
    let conds = r.conditions(flags, options).expect("ok");
    let variants: Vec<Kernel> = conds
        .variants()
        .map(|v| r.specialize_variant(flags, options, v).expect("ok"))
        .collect();
    // The hypers the conditions read, toggled between their default and another value.
    let mut toggled: Vec<usize> = conds
        .program
        .iter()
        .filter_map(|(_, e)| match e {
            Expr::Hyper(h) => Some(h.index()),
            _ => None,
        })
        .collect();
    toggled.sort();
    toggled.dedup();
    let defaults = base.default_hypers();
    // A matrix for the matrix rank class (factored kernels read its rows and columns).
    let shape: &[usize] = if options.rank == RankClass::Matrix {
        &[3, 13]
    } else {
        &[37]
    };
    let n: usize = shape.iter().product();
    // Read only where the kernel is factored (the matrix rank class).
    let dims = MatrixDims::of_shape(&[shape[0], n / shape[0]]).expect("ok");
    let mut seed = 7;
    let mut p0: Vec<f32> = (0..n).map(|_| noise(&mut seed)).collect();
    let mut p1 = p0.clone();
    let mut base_states = init_values(&base, &defaults, &p0, dims);
    let mut mine: Vec<Option<Vec<f32>>> = vec![None; base.states.len()];
    let mut s0 = base.initial_scalars(&defaults).expect("ok");
    let mut s1 = s0.clone();
    let pattern = [0usize, 1, 3, 2, 0, 2, 1, 3, 3, 0];
    for (i, &mask) in pattern.iter().enumerate() {
        let t = i as u64 + 1;
        let mut hypers = defaults.clone();
        for (j, &h) in toggled.iter().enumerate() {
            if mask >> (j % 2) & 1 == 1 {
                hypers[h] = if defaults[h] == 0.0 { 0.5 } else { 0.0 };
            }
        }
        let g: Vec<f32> = (0..n).map(|_| noise(&mut seed)).collect();
        step(
            &base,
            &hypers,
            t,
            &mut s0,
            Buffers {
                param: &mut p0,
                grad: &g,
                states: base_states.iter_mut().map(Vec::as_mut_slice).collect(),
            },
            dims,
        );
        let v = conds.select(&hypers).expect("ok");
        let k = &variants[v.index()];
        let slots: Vec<usize> = k
            .states
            .iter()
            .map(|s| {
                base.states
                    .iter()
                    .position(|b| b.name == s.name)
                    .expect("ok")
            })
            .collect();
        let fresh = init_values(k, &hypers, &p1, dims);
        for (i, &at) in slots.iter().enumerate() {
            if mine[at].is_none() {
                mine[at] = Some(fresh[i].clone());
            }
        }
        let mut taken: Vec<Option<&mut Vec<f32>>> = mine.iter_mut().map(Option::as_mut).collect();
        let states = slots
            .iter()
            .map(|&at| taken[at].take().expect("ok").as_mut_slice())
            .collect();
        step(
            k,
            &hypers,
            t,
            &mut s1,
            Buffers {
                param: &mut p1,
                grad: &g,
                states,
            },
            dims,
        );
        let what = format!("{} {flags:?} {:?} step {t} {v}", r.name(), options.rank);
        assert!(same(&p0, &p1), "{what}: p differs\n{k}");
        assert_eq!(
            s0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            s1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{what}: scalars differ"
        );
        for (at, b) in base_states.iter().enumerate() {
            match &mine[at] {
                Some(m) => assert!(same(b, m), "{what}: state {} differs", base.states[at].name),
                // Never allocated: the kernel with the selects never changed it either.
                None => assert!(
                    same(b, &init_values(&base, &hypers, &p1, dims)[at])
                        || base.states[at].init == Init::Param,
                    "{what}: state {} changed while no variant used it",
                    base.states[at].name
                ),
            }
        }
    }
}

#[test]
fn every_variant_agrees_with_the_selects() {
    let names: Vec<&str> = stdlib::names().collect();
    let mut with_conditions = 0;
    for name in names {
        let r = rule(name);
        let ranks: &[RankClass] = if r.uses_rank() {
            &[RankClass::Matrix, RankClass::Vector]
        } else {
            &[RankClass::Any]
        };
        for flags in r.flag_sets() {
            for &rank in ranks {
                for clip in [false, true] {
                    let options = CompileOptions {
                        clip,
                        rank,
                        ..Default::default()
                    };
                    if r.conditions(&flags, &options).is_ok_and(|c| !c.is_empty()) {
                        with_conditions += 1;
                    }
                    agree(&r, &flags, &options);
                }
            }
        }
    }
    assert!(
        with_conditions > 20,
        "only {with_conditions} flag sets have conditions"
    );
}

#[test]
fn the_listing_names_conditions_and_bytes() {
    let mut text = String::new();
    for name in stdlib::names() {
        let r = rule(name);
        let rank = if r.uses_rank() {
            RankClass::Matrix
        } else {
            RankClass::Any
        };
        let options = CompileOptions {
            clip: false,
            rank,
            ..Default::default()
        };
        let flags = defaults(&r);
        let conds = r.conditions(&flags, &options).expect("ok");
        let kernels: Vec<Kernel> = conds
            .variants()
            .map(|v| r.specialize_variant(&flags, &options, v).expect("ok"))
            .collect();
        text.push_str(&format!("{name}:\n"));
        text.push_str(&optc_kernel::variant::listing(&conds, &kernels));
    }
    insta::assert_snapshot!(text);
}

#[test]
fn a_variant_prints_its_condition_values() {
    let r = rule("sgd");
    let k = r
        .specialize_variant(&defaults(&r), &any(), VariantId(2))
        .expect("ok");
    insta::assert_snapshot!(k.to_string());
}
