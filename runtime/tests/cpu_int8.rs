//! int8 states on the CPU JIT (`optc_kernel::int8`, `docs/dtypes.md`):
//!
//! - every stdlib rule, for every flag set, with `--state-dtype int8` (alone, with bf16
//!   parameters, an f32 master or stochastic rounding) equals the reference interpreter bit for
//!   bit over three steps: tensors under 4096 elements (f32 states), exactly one tile, odd tails,
//!   several tensors in one call, and large tensors split over 1, 2 and 3 threads;
//! - the codes and scales the CPU writes are those of `optc_kernel::quant::quantize_block` of
//!   the f32 result of the same step (computed by the interpreter with f32 states), with the map
//!   the block's sign picks;
//! - an int8 state without one scale per block, or of the wrong dtype for its size, is a clear
//!   error that changes nothing.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::{same, Rng};
use half::bf16;
use optc_compiler::backend::clif;
use optc_compiler::backend::interp::{sr_key_of, step_many, Buffers, TensorStep};
use optc_compiler::stdlib;
use optc_kernel::quant::{quantize_block, DynamicMap, MIN_QUANT_ELEMENTS, QUANT_BLOCK};
use optc_kernel::{Dtype, Kernel, Precision, Slot};
use optc_runtime::cpu::{BufMut, BufRef, CpuError, CpuKernel, CpuOptions, Partials, TensorArgs};
use optc_runtime::int8::Int8State;

/// A buffer in its storage dtype.
#[derive(Clone, Debug)]
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Int8(Int8State),
}

impl Buf {
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Buf::F32(x) => x.clone(),
            Buf::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
            Buf::Int8(q) => q.to_f32(),
        }
    }
    fn view(&mut self) -> BufMut<'_> {
        match self {
            Buf::F32(x) => BufMut::F32(x),
            Buf::Bf16(x) => BufMut::Bf16(x),
            Buf::Int8(q) => BufMut::Int8(q.as_mut()),
        }
    }
    fn shared(&self) -> BufRef<'_> {
        match self {
            Buf::F32(x) => BufRef::F32(x),
            Buf::Bf16(x) => BufRef::Bf16(x),
            Buf::Int8(q) => BufRef::Int8(q.as_ref()),
        }
    }
}

/// One tensor's buffers in launch order (`p`, `g`, states) in their storage dtypes. The
/// interpreter runs on their f32 values ([`Buf::to_f32`]), the CPU on the buffers themselves.
fn random(k: &Kernel, n: usize, rng: &mut Rng, specials: bool) -> Vec<Buf> {
    k.buffers()
        .iter()
        .map(|b| {
            let xs: Vec<f32> = if specials {
                rng.vec(n, true)
            } else {
                match b.slot {
                    // Second moments and the like: non-negative, as they are in training.
                    Slot::State(s) if s.index() % 2 == 1 => {
                        (0..n).map(|_| rng.unit() * 0.01).collect()
                    }
                    Slot::State(_) => (0..n).map(|_| (rng.unit() - 0.5) * 0.02).collect(),
                    _ => (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
                }
            };
            match optc_kernel::int8::stored_dtype(&k.storage, b.slot, n) {
                Dtype::Int8 => Buf::Int8(Int8State::quantize(&xs)),
                Dtype::Bf16 => Buf::Bf16(xs.iter().map(|&x| bf16::from_f32(x)).collect()),
                _ => Buf::F32(xs),
            }
        })
        .collect()
}

/// Steps `tensors` (f32 values of every buffer) `steps` times on the interpreter, as one step
/// call of tensors `0, 1, ...` of an optimizer.
fn interp_steps(k: &Kernel, tensors: &mut [Vec<Vec<f32>>], steps: u64) {
    let hypers = k.default_hypers();
    let mut scalars = vec![k.initial_scalars(&hypers).expect("scalars"); tensors.len()];
    for t in 1..=steps {
        let calls = tensors
            .iter_mut()
            .zip(scalars.iter_mut())
            .enumerate()
            .map(|(i, (v, sc))| {
                let (pg, states) = v.split_at_mut(2);
                let (p, g) = pg.split_at_mut(1);
                TensorStep {
                    hypers: &hypers,
                    t,
                    scalars: sc,
                    bufs: Buffers {
                        param: &mut p[0],
                        grad: &g[0],
                        states: states.iter_mut().map(|s| &mut s[..]).collect(),
                    },
                    dims: None,
                    view: None,
                    tensor: i as u64,
                }
            })
            .collect();
        step_many(k, calls).expect("interpreter step");
    }
}

/// Steps `tensors` `steps` times on the CPU, stage by stage as an optimizer runs them (partials
/// combined in block order, Step totals over the tensors, the host program between stages).
fn cpu_steps(cpu: &CpuKernel, tensors: &mut [Vec<Buf>], steps: u64, pool: &rayon::ThreadPool) {
    let k = cpu.kernel();
    let hypers = k.default_hypers();
    let mut scalars = vec![k.initial_scalars(&hypers).expect("scalars"); tensors.len()];
    let mut partials = Partials::new();
    for t in 1..=steps {
        let mut reduced = vec![vec![f64::NAN; k.reductions.len()]; tensors.len()];
        for s in 0..k.stages.len() {
            let mut args: Vec<TensorArgs<'_>> = tensors
                .iter_mut()
                .zip(&reduced)
                .zip(&scalars)
                .enumerate()
                .map(|(i, ((bufs, r), sc))| {
                    let host = k.eval_host(&hypers, t, sc, r).expect("host program");
                    let (pg, states) = bufs.split_at_mut(2);
                    let (p, g) = pg.split_at_mut(1);
                    TensorArgs {
                        param: p[0].view(),
                        grad: g[0].shared(),
                        states: states.iter_mut().map(Buf::view).collect(),
                        uniforms: host.uniforms[s].iter().map(|&x| x as f32).collect(),
                        sr_key: sr_key_of(k, t, i as u64),
                    }
                })
                .collect();
            cpu.run_stage(s, &mut args, &mut partials, Some(pool))
                .expect("run_stage");
            drop(args);
            cpu_common::fold_partials(k, s, &partials, &mut reduced);
        }
        for (sc, r) in scalars.iter_mut().zip(&reduced) {
            *sc = k
                .eval_host(&hypers, t, sc, r)
                .expect("host program")
                .scalars;
        }
    }
}

/// The settings with int8 states every rule runs under.
fn settings() -> Vec<Precision> {
    let p = |param, master_weights, sr: Option<u64>| Precision {
        param,
        state: Dtype::Int8,
        master_weights,
        stochastic_rounding: sr,
    };
    vec![
        p(Dtype::F32, false, None),
        p(Dtype::Bf16, false, None),
        p(Dtype::Bf16, true, None),
        p(Dtype::Bf16, false, Some(3)),
    ]
}

fn compile(k: &Kernel) -> Option<CpuKernel> {
    match CpuKernel::compile_with(
        k,
        &CpuOptions {
            allow_fma: false,
            ..CpuOptions::default()
        },
    ) {
        Ok(c) => Some(c),
        Err(CpuError::Codegen(clif::Error::Unsupported { .. })) => None,
        Err(e) => panic!("{}: {e}", k.rule),
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

/// Runs `k` on the interpreter and on the CPU (with each pool) from the same inputs and checks
/// every buffer bit for bit (NaN: any payload).
fn check_same(k: &Kernel, cpu: &CpuKernel, inputs: &[Vec<Buf>], threads: &[usize], what: &str) {
    let mut want: Vec<Vec<Vec<f32>>> = inputs
        .iter()
        .map(|t| t.iter().map(Buf::to_f32).collect())
        .collect();
    interp_steps(k, &mut want, 3);
    for &th in threads {
        let mut got = inputs.to_vec();
        cpu_steps(cpu, &mut got, 3, &pool(th));
        for (ti, (w, g)) in want.iter().zip(&got).enumerate() {
            for (bi, (wb, gb)) in w.iter().zip(g).enumerate() {
                let gb = gb.to_f32();
                for (i, (&x, &y)) in gb.iter().zip(wb).enumerate() {
                    assert!(
                        same(x, y),
                        "{what} threads={th}: tensor {ti} buffer {bi} ({}) element {i}: cpu {x:e} ({:#010x}) vs interpreter {y:e} ({:#010x})",
                        k.slot_name(k.buffers()[bi].slot),
                        x.to_bits(),
                        y.to_bits()
                    );
                }
            }
        }
    }
}

fn int8_states(k: &Kernel) -> usize {
    k.storage
        .states
        .iter()
        .filter(|&&d| d == Dtype::Int8)
        .count()
}

#[test]
fn every_stdlib_rule_with_int8_states_equals_the_interpreter() {
    let mut rng = Rng::new(813);
    let mut checked = 0;
    let mut rules_with_int8 = Vec::new();
    for name in stdlib::names() {
        let r = match stdlib::rule(name) {
            Some(Ok(r)) => r,
            other => panic!("{name}: {:?}", other.map(|r| r.err())),
        };
        for (flags, base) in cpu_common::elementwise_kernels(&r) {
            for prec in settings() {
                let k = prec
                    .apply(&base)
                    .unwrap_or_else(|e| panic!("{name} {prec:?}: {e}"));
                if int8_states(&k) == 0 {
                    // Stateless variants (plain SGD), and factored kernels, keep f32 states.
                    assert!(
                        k.states.iter().all(|s| s.name == "master") || k.is_factored(),
                        "{name} {flags:?}: no int8 state"
                    );
                    continue;
                }
                if !rules_with_int8.contains(&name) {
                    rules_with_int8.push(name);
                }
                let Some(cpu) = compile(&k) else {
                    continue;
                };
                let cases: [(&[usize], bool); 4] = [
                    (&[5, 4095], false),
                    (&[4096], false),
                    (&[4099, 300, 8193], false),
                    (&[4097], true),
                ];
                for (lens, specials) in cases {
                    let inputs: Vec<Vec<Buf>> = lens
                        .iter()
                        .map(|&n| random(&k, n, &mut rng, specials))
                        .collect();
                    check_same(
                        &k,
                        &cpu,
                        &inputs,
                        &[2],
                        &format!("{name} {flags:?} {prec:?} lens={lens:?}"),
                    );
                    checked += 1;
                }
            }
        }
    }
    // Every stdlib rule with a per-element state has int8 states (adafactor's vector kernel).
    for name in stdlib::names() {
        assert!(rules_with_int8.contains(&name), "{name} has no int8 state");
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn large_tensors_split_over_one_two_and_three_threads_equal_the_interpreter() {
    // Over 2 × MIN_CHUNK elements, so the pools cut each tensor into chunks differently.
    let mut rng = Rng::new(31);
    for name in ["adamw", "lamb", "lion"] {
        let r = stdlib::rule(name).and_then(Result::ok).expect(name);
        let (_, base) = cpu_common::elementwise_kernels(&r).swap_remove(0);
        for prec in [settings()[0], settings()[3]] {
            let k = prec.apply(&base).expect("precision");
            let cpu = compile(&k).expect("compiles");
            let inputs: Vec<Vec<Buf>> = [70_001, 4100]
                .iter()
                .map(|&n| random(&k, n, &mut rng, false))
                .collect();
            check_same(
                &k,
                &cpu,
                &inputs,
                &[1, 2, 3],
                &format!("{name} {prec:?} large"),
            );
        }
    }
}

#[test]
fn codes_and_scales_are_optc_kernel_quant_of_the_f32_step() {
    // One AdamW step from int8 states: the f32 result (the interpreter, with f32 states, from the
    // values the codes load as) quantized by optc_kernel::quant block by block, with the unsigned
    // map for a block of non-negative values and the signed map else, is what the CPU stores.
    let r = stdlib::rule("adamw").and_then(Result::ok).expect("adamw");
    let (_, base) = cpu_common::elementwise_kernels(&r).swap_remove(0);
    let k = Precision {
        state: Dtype::Int8,
        ..Precision::default()
    }
    .apply(&base)
    .expect("precision");
    let cpu = compile(&k).expect("compiles");
    let mut rng = Rng::new(5);
    let n = 3 * QUANT_BLOCK * 7 + 11;
    let inputs = random(&k, n, &mut rng, false);
    let mut f32_state: Vec<Vec<Vec<f32>>> = vec![inputs.iter().map(Buf::to_f32).collect()];
    interp_steps(&base, &mut f32_state, 1);
    let mut got = vec![inputs];
    cpu_steps(&cpu, &mut got, 1, &pool(2));
    let (signed, unsigned) = (DynamicMap::signed(), DynamicMap::unsigned());
    let mut maps_used = [0usize; 2];
    for (s, decl) in k.states.iter().enumerate() {
        let Buf::Int8(q) = &got[0][2 + s] else {
            panic!("state `{}` is not int8", decl.name);
        };
        let want = &f32_state[0][2 + s];
        for (b, xs) in want.chunks(QUANT_BLOCK).enumerate() {
            let nonneg = xs.iter().all(|&x| x >= 0.0);
            let map = if nonneg { &unsigned } else { &signed };
            maps_used[nonneg as usize] += 1;
            let mut codes = vec![0u8; xs.len()];
            let absmax = quantize_block(map, xs, &mut codes);
            let at = b * QUANT_BLOCK;
            assert_eq!(
                &q.codes[at..at + xs.len()],
                &codes[..],
                "`{}` block {b}",
                decl.name
            );
            assert_eq!(q.scales[b].abs().to_bits(), absmax.to_bits());
            assert_eq!(q.scales[b].is_sign_negative(), !nonneg);
        }
    }
    // m (signed) and v (non-negative) both occur.
    assert!(maps_used[0] > 0 && maps_used[1] > 0, "{maps_used:?}");
}

#[test]
fn bad_int8_buffers_are_clear_errors_and_nothing_changes() {
    let r = stdlib::rule("adam").and_then(Result::ok).expect("adam");
    let (_, base) = cpu_common::elementwise_kernels(&r).swap_remove(0);
    let k = Precision {
        state: Dtype::Int8,
        ..Precision::default()
    }
    .apply(&base)
    .expect("precision");
    let cpu = compile(&k).expect("compiles");
    let n = MIN_QUANT_ELEMENTS;
    let u = cpu_common::uniforms(&k, 1);
    let mut p = vec![1.0f32; n];
    let g = vec![0.5f32; n];
    let mut m = Int8State::quantize(&vec![0.0; n]);
    m.scales.pop();
    let mut v = Int8State::quantize(&vec![0.0; n]);
    let args = TensorArgs {
        param: BufMut::F32(&mut p),
        grad: BufRef::F32(&g),
        states: vec![BufMut::Int8(m.as_mut()), BufMut::Int8(v.as_mut())],
        uniforms: u.clone(),
        sr_key: 0,
    };
    let e = cpu.step(args).expect_err("a scale missing");
    assert_eq!(
        e.to_string(),
        "tensor 0 of rule `adam`: int8 state `m` has 15 block scales, but its 4096 codes need 16"
    );
    // A tensor under 4096 elements keeps f32 states: an int8 buffer for it is the wrong dtype.
    let mut small = Int8State::quantize(&[0.0; 100]);
    let mut small_v = vec![0.0f32; 100];
    let mut sp = vec![1.0f32; 100];
    let args = TensorArgs {
        param: BufMut::F32(&mut sp),
        grad: BufRef::F32(&g[..100]),
        states: vec![BufMut::Int8(small.as_mut()), BufMut::F32(&mut small_v)],
        uniforms: u,
        sr_key: 0,
    };
    let e = cpu.step(args).expect_err("int8 for a small tensor");
    assert_eq!(
        e.to_string(),
        "tensor 0 of rule `adam`: buffer `m` is int8, but the kernel stores it as f32"
    );
    assert!(p.iter().all(|&x| x == 1.0) && sp.iter().all(|&x| x == 1.0));
    assert!(v.codes.iter().all(|&c| c == v.codes[0]));
}
