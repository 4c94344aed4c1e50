//! One optimizer on every host target: groups, checkpoints and all-or-nothing errors go through the
//! same code whatever the executor. The interpreter stands in for CUDA where no GPU is present
//! (`cuda_gpu.rs` runs the same paths on a GPU); the CPU JIT without FMA must give its bits.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_runtime::{GroupId, Optimizer, Options, Rule, Target, Update};

const NAMES: [&str; 3] = ["enc.w", "enc.b", "head.w"];
const LENS: [usize; 3] = [4097, 33, 1000];

/// adamw with `enc.*` in group 0 and `head.w` in an amsgrad group with its own lr.
fn optimizer(target: Target) -> Optimizer {
    let options = Options {
        target,
        threads: Some(2),
        allow_fma: false,
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib("adamw").expect("rule"), options).expect("optimizer");
    opt.add_param(NAMES[0], &[17, 241]).expect("add");
    opt.add_param(NAMES[1], &[LENS[1]]).expect("add");
    let g = opt.add_group(&[("amsgrad", true)]).expect("group");
    opt.set_group_hyper(g, "lr", 3e-3).expect("lr");
    opt.add_param_to(g, NAMES[2], &[10, 100]).expect("add");
    opt
}

fn params() -> Vec<Vec<f32>> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| data(n, i as u32))
        .collect()
}

fn step(opt: &mut Optimizer, p: &mut [Vec<f32>], k: u32) {
    let grads: Vec<Vec<f32>> = LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| data(n, 100 * k + i as u32))
        .collect();
    let updates = NAMES
        .iter()
        .zip(p.iter_mut())
        .zip(&grads)
        .map(|((n, p), g)| Update::new(n, p, g));
    opt.step(updates).expect("step");
}

/// Every parameter's step count, states and scalars, as bits.
fn snapshot(opt: &Optimizer) -> Vec<(u64, Vec<Vec<u32>>, Vec<u64>)> {
    NAMES
        .iter()
        .map(|n| {
            (
                opt.step_count(n).expect("t"),
                opt.states(n)
                    .expect("states")
                    .iter()
                    .map(|(_, v)| bits(v))
                    .collect(),
                opt.scalars(n)
                    .expect("scalars")
                    .iter()
                    .map(|(_, v)| v.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn groups_give_the_interpreters_bits_on_the_cpu() {
    let (mut cpu, mut interp) = (optimizer(Target::Cpu), optimizer(Target::Interp));
    assert_eq!(cpu.target(), Target::Cpu);
    assert_eq!(interp.target(), Target::Interp);
    assert_eq!(cpu.compile_count(), 2, "one kernel per flag set");
    let (mut pc, mut pi) = (params(), params());
    for k in 0..3 {
        step(&mut cpu, &mut pc, k);
        step(&mut interp, &mut pi, k);
    }
    for (a, b) in pc.iter().zip(&pi) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(snapshot(&cpu), snapshot(&interp));
    // The amsgrad group has one more state; group 0 kept the default lr.
    assert_eq!(interp.states(NAMES[2]).expect("states").len(), 3);
    assert_eq!(interp.states(NAMES[0]).expect("states").len(), 2);
    assert_eq!(interp.hyper(GroupId::DEFAULT, "lr").expect("lr"), 1e-3);
}

#[test]
fn checkpoints_move_between_targets_and_files_are_replaced_atomically() {
    let dir = std::env::temp_dir().join(format!("optc-targets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("opt.safetensors");

    let mut cpu = optimizer(Target::Cpu);
    let mut p = params();
    step(&mut cpu, &mut p, 0);
    cpu.save(&path).expect("save");
    step(&mut cpu, &mut p, 1);
    // Saving again replaces the file; nothing else is left in the directory.
    cpu.save(&path).expect("save again");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["opt.safetensors".to_string()]);
    assert_eq!(
        std::fs::read(&path).expect("read"),
        cpu.to_bytes().expect("bytes")
    );

    // Resume on the interpreter; both continue identically.
    let mut interp = optimizer(Target::Interp);
    interp.load(&path).expect("load on another target");
    assert_eq!(snapshot(&cpu), snapshot(&interp));
    let mut q = p.clone();
    for k in 2..4 {
        step(&mut cpu, &mut p, k);
        step(&mut interp, &mut q, k);
    }
    for (a, b) in p.iter().zip(&q) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(snapshot(&cpu), snapshot(&interp));
    assert_eq!(interp.step_count(NAMES[0]).expect("t"), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_step_changes_nothing_on_every_target() {
    for target in [Target::Cpu, Target::Interp] {
        let mut opt = optimizer(target);
        let mut p = params();
        step(&mut opt, &mut p, 0);
        let before = (p.clone(), snapshot(&opt), opt.to_bytes().expect("bytes"));
        // The last update (another group) is bad: nothing of the first two may change.
        let g: Vec<Vec<f32>> = LENS.iter().map(|&n| data(n, 7)).collect();
        let short = data(LENS[2] - 1, 8);
        let [a, b, c] = &mut p[..] else {
            panic!("three params")
        };
        let err = opt
            .step([
                Update::new(NAMES[0], a, &g[0]),
                Update::new(NAMES[1], b, &g[1]),
                Update::new(NAMES[2], c, &short),
            ])
            .expect_err("a short gradient");
        assert_eq!(
            err.to_string(),
            "the gradient of parameter `head.w` has 999 elements, expected 1000"
        );
        assert_eq!(p, before.0, "{target}: parameters unchanged");
        assert_eq!(snapshot(&opt), before.1, "{target}: states unchanged");
        assert_eq!(opt.to_bytes().expect("bytes"), before.2, "{target}");
        // A first step of a fresh parameter that fails leaves it without state.
        let mut fresh = optimizer(target);
        let mut w = data(LENS[0], 1);
        let err = fresh
            .step([
                Update::new(NAMES[0], &mut w, &g[0]),
                Update::new("nope", &mut data(3, 1), &data(3, 2)),
            ])
            .expect_err("an unknown name");
        assert!(
            err.to_string().contains("unknown parameter `nope`"),
            "{err}"
        );
        assert_eq!(fresh.step_count(NAMES[0]).expect("t"), 0);
        assert!(fresh.states(NAMES[0]).expect("states").is_empty());
        assert_eq!(w, data(LENS[0], 1));
    }
}
