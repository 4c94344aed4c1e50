//! `OptcOptimizer` on the CPU: it steps candle vars exactly as optc's runtime steps the same values
//! as plain slices, in groups, in batches longer than one nest, with aliased storages, across a
//! checkpoint; and bad vars and gradients are errors that change nothing.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use optc_candle::{Config, Group, OptcOptimizer, Options, Rule, Target};
use optc_runtime::{GroupId, Optimizer, Update};

type R = Result<(), Box<dyn std::error::Error>>;

fn values(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + 1.0) * k).sin()).collect()
}

fn var(data: &[f32], shape: &[usize]) -> candle_core::Result<Var> {
    Var::from_tensor(&Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)?)
}

fn tensor(data: &[f32], shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)
}

fn flat(v: &Var) -> candle_core::Result<Vec<f32>> {
    v.as_tensor().flatten_all()?.to_vec1()
}

/// Options with FMA off, so that both sides give the interpreter's bits.
fn exact() -> Options {
    Options {
        allow_fma: false,
        ..Options::default()
    }
}

/// `n` tensors of assorted shapes, with parameters and a gradient per step.
struct Case {
    shapes: Vec<Vec<usize>>,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
}

fn case(n: usize, steps: usize) -> Case {
    let shapes: Vec<Vec<usize>> = (0..n)
        .map(|i| match i % 3 {
            0 => vec![3, 5],
            1 => vec![7],
            _ => vec![2, 2, 3],
        })
        .collect();
    let len = |s: &Vec<usize>| s.iter().product::<usize>();
    Case {
        params: shapes
            .iter()
            .enumerate()
            .map(|(i, s)| values(len(s), 0.3 + i as f32 * 0.01))
            .collect(),
        grads: (0..steps)
            .map(|k| {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| values(len(s), 0.7 + (k * n + i) as f32 * 0.013))
                    .collect()
            })
            .collect(),
        shapes,
    }
}

/// Steps `case` with `OptcOptimizer::new` (one group) and with a runtime `Optimizer` on slices.
fn compare_one_group(rule: &str, n: usize, steps: usize, sets: &[(&str, f64)]) -> R {
    let c = case(n, steps);
    let vars: Vec<Var> = c
        .params
        .iter()
        .zip(&c.shapes)
        .map(|(p, s)| var(p, s))
        .collect::<Result<_, _>>()?;
    let mut config = Config::new(Rule::stdlib(rule)?).options(exact());
    let mut reference = Optimizer::with_options(Rule::stdlib(rule)?, exact())?;
    for &(name, value) in sets {
        config = config.hyper(name, value);
        reference.set_hyper(name, value)?;
    }
    let mut opt = OptcOptimizer::new(vars.clone(), config)?;
    let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    for (name, shape) in names.iter().zip(&c.shapes) {
        reference.add_param(name, shape)?;
    }
    let mut params = c.params.clone();
    for step in &c.grads {
        let mut store = GradStore::default();
        for ((v, g), s) in vars.iter().zip(step).zip(&c.shapes) {
            store.insert(v.as_tensor(), tensor(g, s)?);
        }
        opt.step(&store)?;
        reference.step(
            names
                .iter()
                .zip(params.iter_mut())
                .zip(step)
                .map(|((n, p), g)| Update::new(n, p, g)),
        )?;
    }
    for (i, v) in vars.iter().enumerate() {
        assert_eq!(flat(v)?, params[i], "{rule}: var {i}");
        assert_eq!(opt.optimizer().step_count(&names[i])?, steps as u64);
        assert_eq!(
            opt.optimizer().states(&names[i])?,
            reference.states(&names[i])?
        );
    }
    Ok(())
}

#[test]
fn steps_vars_as_the_runtime_steps_slices() -> R {
    compare_one_group("adamw", 4, 3, &[("lr", 1e-2)])?;
    compare_one_group("sgd", 3, 3, &[("lr", 0.1), ("momentum", 0.9)])?;
    compare_one_group("lion", 2, 2, &[])
}

#[test]
fn more_vars_than_one_nest_are_stepped_in_batches() -> R {
    // 150 vars: three batches (64, 64, 22), like GPT-2 small's 148 tensors.
    compare_one_group("adam", 150, 2, &[])
}

#[test]
fn groups_have_their_own_hypers_and_flags() -> R {
    let c = case(3, 3);
    let vars: Vec<Var> = c
        .params
        .iter()
        .zip(&c.shapes)
        .map(|(p, s)| var(p, s))
        .collect::<Result<_, _>>()?;
    let config = Config::new(Rule::stdlib("adamw")?)
        .options(exact())
        .hyper("lr", 2e-2);
    let mut opt = OptcOptimizer::builder(config)
        .group(Group::new().named("w", vars[0].clone()))
        .group(
            Group::new()
                .named("b", vars[1].clone())
                .named("c", vars[2].clone())
                .hyper("weight_decay", 0.0)
                .flag("amsgrad", true),
        )
        .build()?;
    assert_eq!(opt.optimizer().group_count(), 2);
    assert_eq!(opt.optimizer().compile_count(), 2);
    let mut reference = Optimizer::with_options(Rule::stdlib("adamw")?, exact())?;
    reference.set_hyper("lr", 2e-2)?;
    let g1 = reference.add_group(&[("amsgrad", true)])?;
    reference.set_group_hyper(g1, "weight_decay", 0.0)?;
    reference.add_param("w", &c.shapes[0])?;
    reference.add_param_to(g1, "b", &c.shapes[1])?;
    reference.add_param_to(g1, "c", &c.shapes[2])?;
    let names = ["w", "b", "c"];
    let mut params = c.params.clone();
    for step in &c.grads {
        let mut store = GradStore::default();
        for ((v, g), s) in vars.iter().zip(step).zip(&c.shapes) {
            store.insert(v.as_tensor(), tensor(g, s)?);
        }
        opt.step(&store)?;
        reference.step(
            names
                .iter()
                .zip(params.iter_mut())
                .zip(step)
                .map(|((n, p), g)| Update::new(n, p, g)),
        )?;
    }
    for (i, v) in vars.iter().enumerate() {
        assert_eq!(flat(v)?, params[i], "var {}", names[i]);
    }
    assert_eq!(opt.optimizer().hyper(g1, "weight_decay")?, 0.0);
    assert_eq!(
        opt.optimizer().hyper(GroupId::DEFAULT, "weight_decay")?,
        1e-2
    );
    assert_eq!(opt.optimizer().states("b")?.len(), 3, "amsgrad adds v_max");
    Ok(())
}

#[test]
fn learning_rate_is_the_rules_lr() -> R {
    let (w, x) = (var(&[1.0, 2.0], &[2])?, var(&[3.0], &[1])?);
    let mut opt = OptcOptimizer::builder(Config::new(Rule::stdlib("sgd")?).hyper("lr", 0.5))
        .group(Group::new().var(w.clone()))
        .group(Group::new().named("x", x.clone()).hyper("lr", 0.25))
        .build()?;
    assert_eq!(opt.learning_rate(), 0.5);
    opt.set_learning_rate(0.125);
    assert_eq!(opt.learning_rate(), 0.125);
    // Plain SGD: p - lr * g, exact in binary; both groups now have lr 0.125.
    let mut store = GradStore::default();
    store.insert(w.as_tensor(), tensor(&[1.0, -2.0], &[2])?);
    store.insert(x.as_tensor(), tensor(&[1.0], &[1])?);
    opt.step(&store)?;
    assert_eq!(flat(&w)?, vec![0.875, 2.25]);
    assert_eq!(flat(&x)?, vec![2.875]);
    Ok(())
}

#[test]
fn vars_without_a_gradient_are_skipped() -> R {
    let (a, b) = (var(&[1.0], &[1])?, var(&[2.0], &[1])?);
    let mut opt = OptcOptimizer::new(
        vec![a.clone(), b.clone()],
        Config::new(Rule::stdlib("sgd")?).hyper("lr", 0.5),
    )?;
    let mut store = GradStore::default();
    store.insert(b.as_tensor(), tensor(&[1.0], &[1])?);
    opt.step(&store)?;
    assert_eq!((flat(&a)?, flat(&b)?), (vec![1.0], vec![1.5]));
    assert_eq!(opt.optimizer().step_count("0")?, 0);
    assert_eq!(opt.optimizer().step_count("1")?, 1);
    Ok(())
}

#[test]
fn a_gradient_shared_by_two_vars_is_stepped_one_var_at_a_time() -> R {
    // One tensor as the gradient of two vars: stepping them under one nest would lock its storage
    // twice; they are stepped one by one instead, with the same result.
    let (a, b) = (var(&[1.0, 2.0], &[2])?, var(&[3.0, 4.0], &[2])?);
    let mut opt = OptcOptimizer::new(
        vec![a.clone(), b.clone()],
        Config::new(Rule::stdlib("sgd")?).hyper("lr", 0.5),
    )?;
    let g = tensor(&[1.0, -1.0], &[2])?;
    let mut store = GradStore::default();
    store.insert(a.as_tensor(), g.clone());
    store.insert(b.as_tensor(), g);
    opt.step(&store)?;
    assert_eq!((flat(&a)?, flat(&b)?), (vec![0.5, 2.5], vec![2.5, 4.5]));
    Ok(())
}

#[test]
fn a_checkpoint_resumes_exactly() -> R {
    let c = case(2, 4);
    let make =
        |params: &[Vec<f32>]| -> Result<(Vec<Var>, OptcOptimizer), Box<dyn std::error::Error>> {
            let vars: Vec<Var> = params
                .iter()
                .zip(&c.shapes)
                .map(|(p, s)| var(p, s))
                .collect::<Result<_, _>>()?;
            let opt = OptcOptimizer::new(vars.clone(), Config::new(Rule::stdlib("adamw")?))?;
            Ok((vars, opt))
        };
    let grads = |vars: &[Var], k: usize| -> candle_core::Result<GradStore> {
        let mut store = GradStore::default();
        for ((v, g), s) in vars.iter().zip(&c.grads[k]).zip(&c.shapes) {
            store.insert(v.as_tensor(), tensor(g, s)?);
        }
        Ok(store)
    };
    let (vars, mut opt) = make(&c.params)?;
    for k in 0..2 {
        opt.step(&grads(&vars, k)?)?;
    }
    let dir = std::env::temp_dir().join(format!("optc-candle-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("opt.safetensors");
    opt.save(&path)?;
    let now: Vec<Vec<f32>> = vars.iter().map(flat).collect::<Result<_, _>>()?;
    let (vars2, mut opt2) = make(&now)?;
    opt2.load(&path)?;
    for k in 2..4 {
        opt.step(&grads(&vars, k)?)?;
        opt2.step(&grads(&vars2, k)?)?;
    }
    for (a, b) in vars.iter().zip(&vars2) {
        assert_eq!(flat(a)?, flat(b)?);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn message<T>(r: candle_core::Result<T>) -> String {
    match r {
        Ok(_) => "no error".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_vars_are_clear_errors() -> R {
    let rule = || Rule::stdlib("adamw");
    let f64_var = Var::from_tensor(&Tensor::zeros(3, DType::F64, &Device::Cpu)?)?;
    let e = message(OptcOptimizer::new(vec![f64_var], Config::new(rule()?)));
    assert!(e.contains("var `0` is F64; optc steps f32 tensors"), "{e}");

    let w = var(&[1.0], &[1])?;
    let e = message(OptcOptimizer::new(vec![w.clone(), w], Config::new(rule()?)));
    assert!(e.contains("var `1` is given twice"), "{e}");

    let e = message(OptcOptimizer::new(
        vec![var(&[1.0], &[1])?],
        Config::new(rule()?).hyper("lrr", 1.0),
    ));
    assert!(
        e.contains("unknown hyper `lrr`") && e.contains("did you mean `lr`"),
        "{e}"
    );

    let e = message(OptcOptimizer::new(
        vec![var(&[1.0], &[1])?],
        Config::new(rule()?).flag("amsgrd", true),
    ));
    assert!(e.contains("unknown flag `amsgrd`"), "{e}");

    let no_lr = Rule::from_source(
        "decay.opt",
        "optimizer decay\nhyper rate = 0.1\nupdate {\n    p = p - rate * g\n}\n",
    )?;
    let e = message(OptcOptimizer::new(
        vec![var(&[1.0], &[1])?],
        Config::new(no_lr),
    ));
    assert!(e.contains("rule `decay` has no hyper `lr`"), "{e}");
    Ok(())
}

#[test]
fn bad_gradients_are_clear_errors_and_change_nothing() -> R {
    let (a, b) = (var(&[1.0, 2.0, 3.0, 4.0], &[2, 2])?, var(&[5.0], &[1])?);
    let mut opt = OptcOptimizer::new(
        vec![a.clone(), b.clone()],
        Config::new(Rule::stdlib("sgd")?).hyper("lr", 0.5),
    )?;
    let gb = tensor(&[1.0], &[1])?;
    let mut try_step = |ga: Tensor| -> String {
        let mut store = GradStore::default();
        store.insert(b.as_tensor(), gb.clone());
        store.insert(a.as_tensor(), ga);
        message(opt.step(&store))
    };
    let e = try_step(tensor(&[1.0, 2.0, 3.0, 4.0], &[4])?);
    assert!(
        e.contains("the gradient of `0` has shape [4], the var [2, 2]"),
        "{e}"
    );
    let e = try_step(Tensor::ones((2, 2), DType::F64, &Device::Cpu)?);
    assert!(
        e.contains("the gradient of `0` is F64; optc steps f32 tensors"),
        "{e}"
    );
    let e = try_step(tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2])?.t()?);
    assert!(
        e.contains("the gradient of `0` is not contiguous") && e.contains(".contiguous()"),
        "{e}"
    );
    // Nothing was stepped: not `a`, and not `b`, whose gradient was fine.
    assert_eq!(
        (flat(&a)?, flat(&b)?),
        (vec![1.0, 2.0, 3.0, 4.0], vec![5.0])
    );
    assert_eq!(opt.optimizer().step_count("1")?, 0);
    Ok(())
}

#[test]
fn the_interpreter_target_steps_vars_too() -> R {
    let w = var(&[1.0, 2.0], &[2])?;
    let options = Options {
        target: Target::Interp,
        ..Options::default()
    };
    let config = Config::new(Rule::stdlib("sgd")?)
        .options(options)
        .hyper("lr", 0.5);
    let mut opt = OptcOptimizer::new(vec![w.clone()], config)?;
    let mut store = GradStore::default();
    store.insert(w.as_tensor(), tensor(&[2.0, 2.0], &[2])?);
    opt.step(&store)?;
    assert_eq!(flat(&w)?, vec![0.0, 1.0]);
    Ok(())
}
