//! Storage dtypes on the CPU JIT (`optc_kernel::storage`, `docs/dtypes.md`):
//!
//! - the vector conversions (bf16 and f16 loads, round-to-nearest and stochastic stores) equal
//!   `optc_kernel::dtype` bit for bit on every f16/bf16 bit pattern and on millions of f32
//!   patterns (NaN, infinities, subnormals, the f16 overflow edge);
//! - every stdlib rule, for every flag set, under every dtype setting (16-bit params and grads,
//!   bf16 states, f32 master weights, stochastic rounding), equals the reference interpreter bit
//!   for bit over three steps, with odd tails, unaligned starts and tensors split over threads.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::{same, Rng};
use half::{bf16, f16};
use optc_compiler::backend::clif;
use optc_compiler::backend::interp::{sr_key_of, step_many, Buffers, TensorStep};
use optc_compiler::{stdlib, CompileOptions, Rule};
use optc_kernel::{dtype, Dtype, Kernel, Precision, Slot};
use optc_runtime::cpu::{BufMut, BufRef, CpuError, CpuKernel, CpuOptions, Partials, TensorArgs};

/// A buffer in its storage dtype.
#[derive(Clone, Debug)]
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    /// `xs` rounded to `d` (to nearest even).
    fn from_f32(d: Dtype, xs: &[f32]) -> Buf {
        match d {
            Dtype::Bf16 => Buf::Bf16(xs.iter().map(|&x| bf16::from_f32(x)).collect()),
            Dtype::F16 => Buf::F16(xs.iter().map(|&x| f16::from_f32(x)).collect()),
            _ => Buf::F32(xs.to_vec()),
        }
    }
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Buf::F32(x) => x.clone(),
            Buf::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
            Buf::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
        }
    }
    fn view(&mut self, off: usize) -> BufMut<'_> {
        match self {
            Buf::F32(x) => BufMut::F32(&mut x[off..]),
            Buf::Bf16(x) => BufMut::Bf16(&mut x[off..]),
            Buf::F16(x) => BufMut::F16(&mut x[off..]),
        }
    }
    fn shared(&self, off: usize) -> BufRef<'_> {
        match self {
            Buf::F32(x) => BufRef::F32(&x[off..]),
            Buf::Bf16(x) => BufRef::Bf16(&x[off..]),
            Buf::F16(x) => BufRef::F16(&x[off..]),
        }
    }
}

/// One tensor's buffers in launch order (`p`, `g`, states), as f32 values of their dtypes.
#[derive(Clone, Debug)]
struct Values(Vec<Vec<f32>>);

impl Values {
    fn random(k: &Kernel, n: usize, rng: &mut Rng, specials: bool) -> Values {
        let bufs = k
            .buffers()
            .iter()
            .map(|b| {
                let xs: Vec<f32> = if specials {
                    rng.vec(n, true)
                } else {
                    match b.slot {
                        Slot::State(_) => (0..n).map(|_| rng.unit() * 0.01).collect(),
                        _ => (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
                    }
                };
                let d = k.storage.dtype(b.slot);
                xs.into_iter().map(|x| d.round(x)).collect()
            })
            .collect();
        Values(bufs)
    }

    fn typed(&self, k: &Kernel) -> Vec<Buf> {
        k.buffers()
            .iter()
            .zip(&self.0)
            .map(|(b, xs)| Buf::from_f32(k.storage.dtype(b.slot), xs))
            .collect()
    }
}

/// Steps `tensors` (each from element `off`) `steps` times on the interpreter, as one step call
/// of tensors `0, 1, ...` of an optimizer.
fn interp_steps(k: &Kernel, tensors: &mut [Values], off: usize, steps: u64) {
    let hypers = k.default_hypers();
    let mut scalars = vec![k.initial_scalars(&hypers).expect("scalars"); tensors.len()];
    for t in 1..=steps {
        let calls = tensors
            .iter_mut()
            .zip(scalars.iter_mut())
            .enumerate()
            .map(|(i, (v, sc))| {
                let (pg, states) = v.0.split_at_mut(2);
                let (p, g) = pg.split_at_mut(1);
                TensorStep {
                    hypers: &hypers,
                    t,
                    scalars: sc,
                    bufs: Buffers {
                        param: &mut p[0][off..],
                        grad: &g[0][off..],
                        states: states.iter_mut().map(|s| &mut s[off..]).collect(),
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
fn cpu_steps(
    cpu: &CpuKernel,
    tensors: &mut [Vec<Buf>],
    off: usize,
    steps: u64,
    pool: &rayon::ThreadPool,
) {
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
                        param: p[0].view(off),
                        grad: g[0].shared(off),
                        states: states.iter_mut().map(|b| b.view(off)).collect(),
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

/// The dtype settings every rule runs under.
fn settings() -> Vec<Precision> {
    let p = |param, state, master_weights, sr: Option<u64>| Precision {
        param,
        state,
        master_weights,
        stochastic_rounding: sr,
    };
    vec![
        p(Dtype::Bf16, Dtype::F32, false, None),
        p(Dtype::Bf16, Dtype::Bf16, false, None),
        p(Dtype::F16, Dtype::F32, false, None),
        p(Dtype::F16, Dtype::Bf16, false, None),
        p(Dtype::F32, Dtype::Bf16, false, None),
        p(Dtype::Bf16, Dtype::Bf16, true, None),
        p(Dtype::F16, Dtype::F32, true, None),
        p(Dtype::Bf16, Dtype::Bf16, false, Some(7)),
        p(Dtype::F16, Dtype::F32, false, Some(11)),
    ]
}

/// `k` compiled without FMA; with `half_tiles`, 16-bit buffers convert in tiles around the
/// code (the default), else inside it (what factored and int8 kernels do): both must equal the
/// interpreter.
fn compile_with(k: &Kernel, half_tiles: bool) -> Option<CpuKernel> {
    let options = CpuOptions {
        allow_fma: false,
        half_tiles,
    };
    match CpuKernel::compile_with(k, &options) {
        Ok(c) => Some(c),
        Err(CpuError::Codegen(clif::Error::Unsupported { .. })) => None,
        Err(e) => panic!("{}: {e}", k.rule),
    }
}

fn compile(k: &Kernel) -> Option<CpuKernel> {
    compile_with(k, true)
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool")
}

/// Runs `k` on the interpreter and the CPU from the same inputs and checks every buffer bit for
/// bit (NaN: any payload).
fn check_same(k: &Kernel, cpu: &CpuKernel, inputs: &[Values], off: usize, what: &str) {
    let pool = pool();
    let mut want = inputs.to_vec();
    interp_steps(k, &mut want, off, 3);
    let mut got: Vec<Vec<Buf>> = inputs.iter().map(|v| v.typed(k)).collect();
    cpu_steps(cpu, &mut got, off, 3, &pool);
    for (ti, (w, g)) in want.iter().zip(&got).enumerate() {
        for (bi, (wb, gb)) in w.0.iter().zip(g).enumerate() {
            let gb = gb.to_f32();
            for (i, (&x, &y)) in gb.iter().zip(wb).enumerate().skip(off) {
                assert!(
                    same(x, y),
                    "{what}: tensor {ti} buffer {bi} element {i}: cpu {x:e} ({:#010x}) vs interpreter {y:e} ({:#010x})",
                    x.to_bits(),
                    y.to_bits()
                );
            }
        }
    }
}

#[test]
fn every_stdlib_rule_under_every_dtype_setting_equals_the_interpreter() {
    let mut rng = Rng::new(1313);
    let mut checked = 0;
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
                // Matrix programs run in the host executor, not in the compiled kernel: muon under
                // every setting is checked through the optimizer (`api_dtypes.rs`).
                if k.stages.iter().any(|s| s.matrix.is_some()) {
                    continue;
                }
                for tiles in [true, false] {
                    let Some(cpu) = compile_with(&k, tiles) else {
                        continue;
                    };
                    for (n, off, specials) in [(5, 3, false), (1027, 1, false), (4099, 2, true)] {
                        let inputs: Vec<Values> = (0..2)
                            .map(|_| Values::random(&k, n + off, &mut rng, specials))
                            .collect();
                        check_same(
                            &k,
                            &cpu,
                            &inputs,
                            off,
                            &format!("{name} {flags:?} {prec:?} tiles={tiles} n={n} off={off}"),
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn large_tensors_split_over_threads_equal_the_interpreter() {
    // Over 2 × MIN_CHUNK elements, so the pool cuts each tensor into chunks: the stochastic
    // bits follow the element's index in the tensor, not in the chunk.
    let mut rng = Rng::new(99);
    for name in ["adamw", "lamb"] {
        let r = stdlib::rule(name).and_then(Result::ok).expect(name);
        let (_, base) = cpu_common::elementwise_kernels(&r).swap_remove(0);
        for prec in settings() {
            let k = prec.apply(&base).expect("precision");
            let inputs: Vec<Values> = [70_001, 3]
                .iter()
                .map(|&n| Values::random(&k, n, &mut rng, false))
                .collect();
            for tiles in [true, false] {
                let cpu = compile_with(&k, tiles).expect("compiles");
                check_same(
                    &k,
                    &cpu,
                    &inputs,
                    0,
                    &format!("{name} {prec:?} large {tiles}"),
                );
            }
        }
    }
}

/// A one-stage kernel that stores `g` (f32, any bit pattern) into `p` of dtype `param`, and `p`
/// (as loaded) plus `s` into the f32 state `s`.
fn copy_kernel(param: Dtype, sr: Option<u64>) -> Kernel {
    // `s` starts at -0, so `s + p` is `p` and `g + s * 0` is `g`, exactly (signed zeros and NaN
    // included); `p` reads `s` so that the state is live.
    let src = "optimizer copy\nstate s = 0\nupdate {\n    let old = p\n    p = g + s * 0\n    s = s + old\n}\n";
    let r = Rule::parse("copy.opt", src).expect("parses");
    let base = r
        .specialize_values_with(&[], &CompileOptions::default())
        .expect("specializes");
    let mut k = Precision {
        param,
        state: Dtype::F32,
        master_weights: false,
        stochastic_rounding: sr,
    }
    .apply(&base)
    .expect("precision");
    k.storage.grad = Dtype::F32;
    k.validate().expect("valid");
    k
}

/// Runs [`copy_kernel`] on the CPU over `p` (16-bit bits) and `g`, converting in tiles and in
/// the compiled code, which must agree bit for bit; returns (new p bits, s).
fn run_copy(k: &Kernel, p: &[u16], g: &[f32], key: u32) -> (Vec<u16>, Vec<f32>) {
    let (tiled, s_tiled) = run_copy_with(k, p, g, key, true);
    let (in_code, s_in_code) = run_copy_with(k, p, g, key, false);
    assert_eq!(
        tiled, in_code,
        "16-bit stores: tiles vs in-code conversions"
    );
    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        b(&s_tiled),
        b(&s_in_code),
        "16-bit loads: tiles vs in-code conversions"
    );
    (tiled, s_tiled)
}

fn run_copy_with(k: &Kernel, p: &[u16], g: &[f32], key: u32, tiles: bool) -> (Vec<u16>, Vec<f32>) {
    let cpu = compile_with(k, tiles).expect("compiles");
    let mut s = vec![-0.0f32; g.len()];
    let bits: Vec<u16> = match k.storage.param {
        Dtype::Bf16 => {
            let mut pb: Vec<bf16> = p.iter().map(|&b| bf16::from_bits(b)).collect();
            let args = TensorArgs {
                param: BufMut::Bf16(&mut pb),
                grad: BufRef::F32(g),
                states: vec![BufMut::F32(&mut s)],
                uniforms: Vec::new(),
                sr_key: key,
            };
            cpu.step_many(vec![args], Some(&pool())).expect("step");
            pb.iter().map(|b| b.to_bits()).collect()
        }
        _ => {
            let mut pb: Vec<f16> = p.iter().map(|&b| f16::from_bits(b)).collect();
            let args = TensorArgs {
                param: BufMut::F16(&mut pb),
                grad: BufRef::F32(g),
                states: vec![BufMut::F32(&mut s)],
                uniforms: Vec::new(),
                sr_key: key,
            };
            cpu.step_many(vec![args], Some(&pool())).expect("step");
            pb.iter().map(|b| b.to_bits()).collect()
        }
    };
    (bits, s)
}

/// f32 bit patterns: a stride through all of them, the corners, and values near every f16 and
/// bf16 rounding boundary (ties, the f16 overflow threshold 65520, subnormals of all formats).
fn f32_patterns() -> Vec<f32> {
    let mut v: Vec<f32> = (0..(1u64 << 32))
        .step_by(977)
        .map(|b| f32::from_bits(b as u32))
        .collect();
    for h in 0..=0xFFFFu32 {
        let f16v = f16::from_bits(h as u16).to_f32();
        let bf = f32::from_bits(h << 16);
        for x in [f16v, bf] {
            let b = x.to_bits();
            for d in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFF, 0x1000, 0x1001] {
                v.push(f32::from_bits(b.wrapping_add(d)));
                v.push(f32::from_bits(b.wrapping_sub(d)));
            }
        }
    }
    v.extend([
        65504.0,
        65519.99,
        65520.0,
        65520.01,
        1e-45,
        -0.0,
        f32::INFINITY,
        -f32::INFINITY,
        f32::NAN,
    ]);
    v
}

#[test]
fn vector_conversions_equal_optc_kernel_dtype_bit_for_bit() {
    let g = f32_patterns();
    let n = g.len();
    // Widening: every 16-bit pattern loaded as p and stored to the f32 state.
    let every: Vec<u16> = (0..n).map(|i| (i % 65536) as u16).collect();
    for (d, widen) in [
        (Dtype::Bf16, dtype::widen_bf16 as fn(u16) -> f32),
        (Dtype::F16, dtype::widen_f16 as fn(u16) -> f32),
    ] {
        let k = copy_kernel(d, None);
        let (bits, s) = run_copy(&k, &every, &g, 0);
        let narrow = if d == Dtype::Bf16 {
            dtype::narrow_bf16
        } else {
            dtype::narrow_f16
        };
        for i in 0..n {
            let want = widen(every[i]);
            assert!(
                same(s[i], want),
                "{d} widen {:#06x}: {:#010x} vs {:#010x}",
                every[i],
                s[i].to_bits(),
                want.to_bits()
            );
            if want.is_nan() {
                // The quiet bit and the payload are as optc_kernel::dtype gives them.
                assert_eq!(
                    s[i].to_bits(),
                    want.to_bits(),
                    "{d} NaN payload {:#06x}",
                    every[i]
                );
            }
            let want = narrow(g[i]);
            assert_eq!(
                bits[i],
                want,
                "{d} narrow {:e} ({:#010x})",
                g[i],
                g[i].to_bits()
            );
        }
        // Stochastic rounding with a key: the hash and the rounding of every element.
        let ks = copy_kernel(d, Some(5));
        let key = dtype::sr_key(5, 1, 0);
        let (bits, _) = run_copy(&ks, &every, &g, key);
        let sr = if d == Dtype::Bf16 {
            dtype::narrow_bf16_stochastic
        } else {
            dtype::narrow_f16_stochastic
        };
        for i in 0..n {
            let want = sr(g[i], dtype::sr_bits(key, i as u64));
            let ok = bits[i] == want || (widen(bits[i]).is_nan() && widen(want).is_nan());
            assert!(
                ok,
                "{d} stochastic {:e} ({:#010x}) element {i}: {:#06x} vs {:#06x}",
                g[i],
                g[i].to_bits(),
                bits[i],
                want
            );
        }
    }
}

#[test]
fn a_buffer_of_the_wrong_dtype_is_a_clear_error_and_nothing_changes() {
    let k = copy_kernel(Dtype::Bf16, None);
    let cpu = compile(&k).expect("compiles");
    let mut p = vec![1.0f32; 8];
    let g = vec![2.0f32; 8];
    let mut s = vec![-0.0f32; 8];
    let args = TensorArgs {
        param: BufMut::F32(&mut p),
        grad: BufRef::F32(&g),
        states: vec![BufMut::F32(&mut s)],
        uniforms: Vec::new(),
        sr_key: 0,
    };
    let e = cpu.step(args).expect_err("f32 p for a bf16 kernel");
    assert_eq!(
        e.to_string(),
        "tensor 0 of rule `copy`: buffer `p` is f32, but the kernel stores it as bf16"
    );
    assert!(p.iter().all(|&x| x == 1.0) && s.iter().all(|&x| x.to_bits() == (-0.0f32).to_bits()));
}
