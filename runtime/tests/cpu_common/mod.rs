//! Shared helpers for the CPU executor tests: a fixed-seed PRNG, input generators, running a
//! kernel through the reference interpreter and through the JIT, and ULP distances.
#![allow(dead_code)]

#[path = "../../../compiler/tests/clif_kernels/mod.rs"]
pub mod kernels;

use optc_compiler::backend::interp::{step_f32, Buffers};
use optc_compiler::{CompileOptions, RankClass, Rule};
use optc_kernel::matrix::{self, Mat, WideView};
use optc_kernel::reduce::{combine, combine_totals};
use optc_kernel::Kernel;
use optc_kernel::{Scope, Slot};
use optc_runtime::cpu::{CpuKernel, CpuOptions, Partials, TensorArgs};

/// xorshift64*: a small deterministic generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// A mix of ordinary values, zeros of both signs, huge and tiny magnitudes, subnormals,
    /// small integers and (when `specials`) infinities and NaN.
    pub fn value(&mut self, specials: bool) -> f32 {
        let sign = if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        let v = match self.below(if specials { 12 } else { 10 }) {
            0 => 0.0,
            1 => sign * 1e30 * (1.0 + self.unit()),
            2 => sign * 1e-30 * (1.0 + self.unit()),
            3 => sign * f32::from_bits((self.next_u64() as u32) & 0x007f_ffff), // subnormal
            4 => sign * self.below(8) as f32,
            5 => f32::from_bits(self.next_u64() as u32 & 0x7f7f_ffff) * sign, // any finite
            10 => sign * f32::INFINITY,
            11 => f32::NAN,
            _ => sign * self.unit() * 4.0,
        };
        if v.is_nan() && !specials {
            0.0
        } else {
            v
        }
    }
    pub fn vec(&mut self, n: usize, specials: bool) -> Vec<f32> {
        (0..n).map(|_| self.value(specials)).collect()
    }
}

/// Distance in units in the last place; 0 for equal values and for two NaNs (any payload), and
/// `u32::MAX` for NaN against a number. `+0` and `-0` are 0 apart.
pub fn ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u32::MAX
        };
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits & 0x8000_0000 != 0 {
            -(bits & 0x7fff_ffff)
        } else {
            bits
        }
    };
    (key(a) - key(b)).unsigned_abs().min(u64::from(u32::MAX)) as u32
}

/// Whether two results are the same: equal bits, or both NaN.
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// One tensor's buffers: p, g, states.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub p: Vec<f32>,
    pub g: Vec<f32>,
    pub states: Vec<Vec<f32>>,
}

impl Tensor {
    pub fn random(k: &Kernel, n: usize, rng: &mut Rng, specials: bool) -> Tensor {
        Tensor {
            p: rng.vec(n, specials),
            g: rng.vec(n, specials),
            states: k.states.iter().map(|_| rng.vec(n, specials)).collect(),
        }
    }
    /// Every buffer in launch order.
    pub fn buffers(&self) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![&self.p, &self.g];
        v.extend(self.states.iter().map(|s| s.as_slice()));
        v
    }
    /// The buffers from element `off` on (for unaligned subslices).
    pub fn args(&mut self, off: usize, uniforms: Vec<f32>) -> TensorArgs<'_> {
        TensorArgs::f32(
            &mut self.p[off..],
            &self.g[off..],
            self.states.iter_mut().map(|s| &mut s[off..]).collect(),
            uniforms,
        )
    }
}

/// The uniforms of step `t` with default hypers and initial scalars, rounded to f32.
pub fn uniforms(k: &Kernel, t: u64) -> Vec<f32> {
    let hypers = k.default_hypers();
    let scalars = k.initial_scalars(&hypers).expect("scalars");
    k.eval_host(&hypers, t, &scalars, &[])
        .expect("host program")
        .uniforms[0]
        .iter()
        .map(|&u| u as f32)
        .collect()
}

/// The uniforms of stage `stage` at step 1 with default hypers and initial scalars, given the
/// finalized reductions (`NaN` for those not known yet), rounded to f32.
pub fn stage_uniforms(k: &Kernel, stage: usize, reduced: &[f64]) -> Vec<f32> {
    let hypers = k.default_hypers();
    let scalars = k.initial_scalars(&hypers).expect("scalars");
    let mut all = vec![f64::NAN; k.reductions.len()];
    all[..reduced.len()].copy_from_slice(reduced);
    k.eval_host(&hypers, 1, &scalars, &all)
        .expect("host program")
        .uniforms[stage]
        .iter()
        .map(|&u| u as f32)
        .collect()
}

/// One step call (step `t`) of `inputs` (from element `off` on) on the CPU, the way an optimizer
/// runs a staged kernel: stage by stage, each tensor's partials combined in f64 in block order,
/// Step-scope totals combined over the tensors in order, the host program evaluated with the
/// reductions finalized so far before each stage, and the scalar states updated after the last.
/// Returns every tensor's finalized reductions.
pub fn cpu_step(
    cpu: &CpuKernel,
    inputs: &mut [Tensor],
    off: usize,
    hypers: &[f64],
    t: u64,
    scalars: &mut [Vec<f64>],
    pool: Option<&rayon::ThreadPool>,
) -> Vec<Vec<f64>> {
    let views = vec![None; inputs.len()];
    cpu_step_viewed(cpu, inputs, off, hypers, t, scalars, pool, &views)
}

/// [`cpu_step`] for tensors with matrix views (`views[i]` for `inputs[i]`, from element `off`
/// on): the host program reads each view's rows and cols, and a stage's matrix program runs
/// before its pass as the interpreter runs it (`optc_kernel::matrix::run` with the reference
/// product), so the JIT's passes are compared alone.
#[allow(clippy::too_many_arguments)]
pub fn cpu_step_viewed(
    cpu: &CpuKernel,
    inputs: &mut [Tensor],
    off: usize,
    hypers: &[f64],
    t: u64,
    scalars: &mut [Vec<f64>],
    pool: Option<&rayon::ThreadPool>,
    views: &[Option<WideView>],
) -> Vec<Vec<f64>> {
    let k = cpu.kernel();
    let mut reduced = vec![vec![f64::NAN; k.reductions.len()]; inputs.len()];
    let mut partials = Partials::new();
    for (s, stage) in k.stages.iter().enumerate() {
        let uniforms: Vec<Vec<f32>> = reduced
            .iter()
            .zip(scalars.iter())
            .zip(views)
            .map(|((r, sc), view)| {
                let host = k
                    .eval_host_for(hypers, t, sc, r, *view)
                    .expect("host program");
                host.uniforms[s].iter().map(|&x| x as f32).collect()
            })
            .collect();
        if let Some(program) = &stage.matrix {
            for ((tensor, u), view) in inputs.iter_mut().zip(&uniforms).zip(views) {
                let view = view.expect("a matrix stage needs the tensor's view");
                let read = |slot: Slot| -> Option<Vec<f32>> {
                    Some(match slot {
                        Slot::Param => tensor.p[off..].to_vec(),
                        Slot::Grad => tensor.g[off..].to_vec(),
                        Slot::State(id) => tensor.states.get(id.index())?[off..].to_vec(),
                    })
                };
                let outs = matrix::run(program, u, view, &read, &mut |a: &Mat, b: &Mat| {
                    matrix::reference_matmul(a, b)
                })
                .expect("matrix program");
                for (o, m) in program.outputs.iter().zip(outs) {
                    let Slot::State(id) = o.slot else {
                        panic!("a matrix output writes p or g")
                    };
                    matrix::store_wide(&m, &mut tensor.states[id.index()][off..], view);
                }
            }
        }
        let mut args: Vec<TensorArgs> = inputs
            .iter_mut()
            .zip(uniforms)
            .map(|(tensor, u)| tensor.args(off, u))
            .collect();
        cpu.run_stage(s, &mut args, &mut partials, pool)
            .expect("run_stage");
        fold_partials(k, s, &partials, &mut reduced);
    }
    for ((sc, r), view) in scalars.iter_mut().zip(&reduced).zip(views) {
        *sc = k
            .eval_host_for(hypers, t, sc, r, *view)
            .expect("host program")
            .scalars;
    }
    reduced
}

/// Folds the partials stage `stage` of `k` wrote (one set per tensor, in `partials`) into each
/// tensor's reductions `reduced`, a step-scoped reduction into one total across the tensors.
pub fn fold_partials(k: &Kernel, stage: usize, partials: &Partials, reduced: &mut [Vec<f64>]) {
    for (o, out) in k.stages[stage].reduce.iter().enumerate() {
        let id = out.reduction.index();
        let decl = &k.reductions[id];
        for (i, r) in reduced.iter_mut().enumerate() {
            r[id] = combine(decl.op, partials.get(i, o).iter().copied());
        }
        if decl.scope == Scope::Step {
            let total = combine_totals(decl.op, reduced.iter().map(|r| r[id]));
            for r in reduced.iter_mut() {
                r[id] = total;
            }
        }
    }
}

/// Steps `t` from element `off` on with the reference interpreter (f32).
pub fn step_ref(k: &Kernel, t: &mut Tensor, off: usize, step: u64) {
    let hypers = k.default_hypers();
    let mut scalars = k.initial_scalars(&hypers).expect("scalars");
    step_f32(
        k,
        &hypers,
        step,
        &mut scalars,
        Buffers {
            param: &mut t.p[off..],
            grad: &t.g[off..],
            states: t.states.iter_mut().map(|s| &mut s[off..]).collect(),
        },
    )
    .expect("interpreter step");
}

/// The JIT-compiled kernel without FMA (so it rounds like the interpreter).
pub fn compile_exact(k: &Kernel) -> CpuKernel {
    CpuKernel::compile_with(
        k,
        &CpuOptions {
            allow_fma: false,
            ..CpuOptions::default()
        },
    )
    .expect("compiles")
}

/// The largest ULP distance between the buffers of `a` and `b`, with the first worst position
/// (buffer, element).
pub fn max_ulps(a: &Tensor, b: &Tensor) -> (u32, usize, usize) {
    let mut worst = (0, 0, 0);
    for (bi, (x, y)) in a.buffers().iter().zip(b.buffers()).enumerate() {
        for (i, (&u, &v)) in x.iter().zip(y).enumerate() {
            let d = ulps(u, v);
            if d > worst.0 {
                worst = (d, bi, i);
            }
        }
    }
    worst
}

/// Panics unless every element of every buffer of `a` and `b` is the same (bits, or both NaN).
pub fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    for (bi, (x, y)) in a.buffers().iter().zip(b.buffers()).enumerate() {
        assert_eq!(x.len(), y.len());
        for (i, (&u, &v)) in x.iter().zip(y).enumerate() {
            assert!(
                same(u, v),
                "{what}: buffer {bi} element {i}: {u:e} ({:#010x}) vs {v:e} ({:#010x})",
                u.to_bits(),
                v.to_bits()
            );
        }
    }
}

/// Every kernel of `r`: one per flag set, and per rank class for rules that read `matrix`.
pub fn rule_kernels(r: &Rule) -> Vec<(Vec<bool>, Kernel)> {
    let ranks: &[RankClass] = if r.uses_rank() {
        &[RankClass::Matrix, RankClass::Vector]
    } else {
        &[RankClass::Any]
    };
    let mut out = Vec::new();
    for flags in r.flag_sets() {
        for &rank in ranks {
            let options = CompileOptions {
                rank,
                ..CompileOptions::default()
            };
            let k = r
                .specialize_values_with(&flags, &options)
                .unwrap_or_else(|e| panic!("{}: {e}", r.name()));
            out.push((flags.clone(), k));
        }
    }
    out
}

/// The kernels of [`rule_kernels`] without matrix stages, a weight decay that defaults to 0
/// defaulting to 0.01 (so the decay runs). Kernels with matrix stages (Muon's matrices, whose
/// states stay f32) step through the optimizer's matrix views: tests/api_dtypes.rs and
/// tests/api_int8.rs run them.
pub fn elementwise_kernels(r: &Rule) -> Vec<(Vec<bool>, Kernel)> {
    rule_kernels(r)
        .into_iter()
        .filter(|(_, k)| k.stages.iter().all(|s| s.matrix.is_none()))
        .map(|(flags, mut k)| {
            for h in &mut k.hypers {
                if h.name == "weight_decay" && h.default == 0.0 {
                    h.default = 0.01;
                }
            }
            (flags, k)
        })
        .collect()
}
