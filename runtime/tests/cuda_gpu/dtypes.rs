//! Storage dtypes on the GPU (`Options::precision`, `docs/dtypes.md`) through the one
//! `Optimizer` on `Target::Cuda`, against the reference interpreter: every stdlib rule under
//! every setting of `api_support::dtype_settings` (16-bit parameters and states, f32 master
//! weights, stochastic rounding) and with int8 states (f32 and bf16 parameters), with host
//! buffers and with device buffers; checkpoints written from the device hold the interpreter's
//! bytes and round-trip bit for bit; a device buffer of another dtype is refused.
//!
//! Bit for bit (both compute in f32, the host program in f64 on the host), except the matrix
//! stages (Muon's products: cuBLAS against the reference triple loop), which agree within the
//! matrix budget of `runtime/tests/api_dtypes.rs`. Tensors: 40 × 131 (int8 states quantized,
//! a short last block; a matrix for the rank-dependent rules), 37 (under 4096 elements: int8
//! states stay f32) and 4096 (exactly one int8 tile).
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set, where it fails.

use super::api_support::{self, close, has_matrix_stages, value};
use super::gpu_present;
use half::{bf16, f16};
use optc_kernel::{Dtype, Precision};
use optc_runtime::buf::{BufMut, BufRef};
use optc_runtime::cuda::cudarc::driver::{CudaSlice, CudaStream};
use optc_runtime::{Optimizer, RuntimeError, Target, Update};
use std::sync::Arc;

/// Every tensor twice: the CUDA optimizer steps the first three from host buffers and the last
/// three from device buffers, in the same step calls (one module load per kernel for both).
const SIZES: [(&str, &[usize]); 6] = [
    ("w", &[40, 131]),
    ("b", &[37]),
    ("e", &[4096]),
    ("dw", &[40, 131]),
    ("db", &[37]),
    ("de", &[4096]),
];

/// How many of `SIZES` a CUDA optimizer steps from host buffers (the rest from device buffers).
const HOST: usize = 3;

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The settings: `dtype_settings` and int8 states under f32 and bf16 parameters.
fn settings() -> Vec<Precision> {
    let mut out = api_support::dtype_settings();
    for param in [Dtype::F32, Dtype::Bf16] {
        out.push(Precision {
            param,
            state: Dtype::Int8,
            ..Precision::default()
        });
    }
    out
}

fn optimizer(rule: &str, target: Target, prec: Precision) -> Optimizer {
    api_support::optimizer(rule, target, prec, &SIZES)
}

/// One tensor in host memory, in the optimizer's dtype.
#[derive(Clone, Debug, PartialEq)]
enum Host {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Host {
    fn new(d: Dtype, xs: impl Iterator<Item = f32>) -> Host {
        match d {
            Dtype::Bf16 => Host::Bf16(xs.map(bf16::from_f32).collect()),
            Dtype::F16 => Host::F16(xs.map(f16::from_f32).collect()),
            _ => Host::F32(xs.collect()),
        }
    }
    fn view(&mut self) -> BufMut<'_> {
        match self {
            Host::F32(x) => BufMut::F32(x),
            Host::Bf16(x) => BufMut::Bf16(x),
            Host::F16(x) => BufMut::F16(x),
        }
    }
    fn shared(&self) -> BufRef<'_> {
        match self {
            Host::F32(x) => BufRef::F32(x),
            Host::Bf16(x) => BufRef::Bf16(x),
            Host::F16(x) => BufRef::F16(x),
        }
    }
    fn to_f32(&self) -> Vec<f32> {
        self.shared().to_f32()
    }
    fn upload(&self, stream: &Arc<CudaStream>) -> Device {
        match self {
            Host::F32(x) => Device::F32(stream.clone_htod(x).expect("upload")),
            Host::Bf16(x) => Device::Bf16(stream.clone_htod(x).expect("upload")),
            Host::F16(x) => Device::F16(stream.clone_htod(x).expect("upload")),
        }
    }
}

/// One tensor in device memory, in the optimizer's dtype.
enum Device {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl Device {
    fn update<'a>(&'a mut self, name: &'a str, g: &'a Device, s: &'a CudaStream) -> Update<'a> {
        match (self, g) {
            (Device::F32(p), Device::F32(g)) => Update::cuda(name, p, g, s),
            (Device::Bf16(p), Device::Bf16(g)) => Update::cuda(name, p, g, s),
            (Device::F16(p), Device::F16(g)) => Update::cuda(name, p, g, s),
            _ => panic!("a parameter and a gradient of different dtypes"),
        }
    }
    fn download(&self, stream: &Arc<CudaStream>) -> Host {
        match self {
            Device::F32(x) => Host::F32(stream.clone_dtoh(x).expect("download")),
            Device::Bf16(x) => Host::Bf16(stream.clone_dtoh(x).expect("download")),
            Device::F16(x) => Host::F16(stream.clone_dtoh(x).expect("download")),
        }
    }
}

fn start(d: Dtype) -> Vec<Host> {
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &(_, s))| Host::new(d, (0..len(s)).map(|i| value(k as u64, i))))
        .collect()
}

fn grads(d: Dtype, t: u64) -> Vec<Host> {
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &(_, s))| Host::new(d, (0..len(s)).map(|i| value(100 + 7 * t + k as u64, i))))
        .collect()
}

/// `steps` steps from step `from` with host buffers.
fn train_host(opt: &mut Optimizer, params: &mut [Host], d: Dtype, from: u64, steps: u64) {
    for t in from..from + steps {
        let g = grads(d, t);
        let updates: Vec<Update<'_>> = params
            .iter_mut()
            .zip(&g)
            .zip(SIZES)
            .map(|((p, g), (name, _))| Update::typed(name, p.view(), g.shared()))
            .collect();
        opt.step(updates).expect("step");
    }
}

/// `steps` steps from step 0, the first `host` tensors from host buffers and the others from
/// device buffers (uploaded once, copied back at the end), in one step call per step.
fn train_mixed(opt: &mut Optimizer, d: Dtype, host: usize, steps: u64) -> Vec<Host> {
    let mut params = start(d);
    let stream = opt.cuda_stream().cloned();
    let up = |h: &Host| h.upload(stream.as_ref().expect("a CUDA optimizer"));
    let mut dev: Vec<Device> = params[host..].iter().map(up).collect();
    for t in 0..steps {
        let g = grads(d, t);
        let dg: Vec<Device> = g[host..].iter().map(up).collect();
        let mut updates: Vec<Update<'_>> = params[..host]
            .iter_mut()
            .zip(&g)
            .zip(SIZES)
            .map(|((p, g), (name, _))| Update::typed(name, p.view(), g.shared()))
            .collect();
        if let Some(s) = &stream {
            updates.extend(
                dev.iter_mut()
                    .zip(&dg)
                    .zip(&SIZES[host..])
                    .map(|((p, g), (name, _))| p.update(name, g, s)),
            );
        }
        opt.step(updates).expect("step");
    }
    if let Some(s) = &stream {
        for (p, d) in params[host..].iter_mut().zip(&dev) {
            *p = d.download(s);
        }
    }
    params
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter()
        .map(|v| if v.is_nan() { 0x7FC0_0000 } else { v.to_bits() })
        .collect()
}

/// `got` (CUDA) against `want` (the interpreter): parameters and every state.
fn compare(rule: &str, what: &str, got: (&[Host], &Optimizer), want: (&[Host], &Optimizer)) {
    let matrix = has_matrix_stages(rule);
    for ((x, y), (name, _)) in got.0.iter().zip(want.0).zip(SIZES) {
        let w = format!("{rule} {what}: parameter {name}");
        if matrix {
            close(&x.to_f32(), &y.to_f32(), &w, "cuda");
        } else {
            assert_eq!(bits(&x.to_f32()), bits(&y.to_f32()), "{w}");
        }
        let (sa, sb) = (
            got.1.states(name).expect("states"),
            want.1.states(name).expect("states"),
        );
        assert_eq!(sa.len(), sb.len(), "{rule} {what}: {name}'s states");
        for ((n, a), (_, b)) in sa.iter().zip(&sb) {
            let w = format!("{rule} {what}: state {name}.{n}");
            if matrix {
                close(a, b, &w, "cuda");
            } else {
                assert_eq!(bits(a), bits(b), "{w}");
            }
        }
    }
}

#[test]
fn every_stdlib_rule_on_the_gpu_equals_the_interpreter_under_every_setting() {
    if !gpu_present("every_stdlib_rule_on_the_gpu_equals_the_interpreter_under_every_setting") {
        return;
    }
    for rule in optc_compiler::stdlib::names() {
        for prec in settings() {
            let d = prec.param;
            let mut interp = optimizer(rule, Target::Interp, prec);
            let want = train_mixed(&mut interp, d, SIZES.len(), 3);
            let mut cuda = optimizer(rule, Target::Cuda, prec);
            let got = train_mixed(&mut cuda, d, HOST, 3);
            compare(
                rule,
                &format!("{prec:?} (host buffers: {:?})", &SIZES[..HOST]),
                (&got, &cuda),
                (&want, &interp),
            );
            assert_eq!(
                cuda.state_bytes().1,
                interp.state_bytes().1,
                "{rule} {prec:?}: elements"
            );
        }
    }
}

/// A checkpoint written from the GPU holds exactly the interpreter's bytes (each state in its
/// own dtype: bf16 bits, int8 codes and scale words), loads back into a GPU optimizer bit for
/// bit, and the resumed run continues exactly as the uninterrupted one.
#[test]
fn checkpoints_from_the_gpu_hold_each_state_in_its_dtype_and_resume_exactly() {
    if !gpu_present("checkpoints_from_the_gpu_hold_each_state_in_its_dtype_and_resume_exactly") {
        return;
    }
    let int8 = Precision {
        param: Dtype::Bf16,
        state: Dtype::Int8,
        ..Precision::default()
    };
    let bf16_master = api_support::dtype_settings()[3];
    for rule in ["adamw", "lamb", "sgd"] {
        for prec in [int8, bf16_master] {
            let d = prec.param;
            let mut interp = optimizer(rule, Target::Interp, prec);
            let mut want = start(d);
            train_host(&mut interp, &mut want, d, 0, 2);
            let mut cuda = optimizer(rule, Target::Cuda, prec);
            let mut got = start(d);
            train_host(&mut cuda, &mut got, d, 0, 2);
            let bytes = cuda.to_bytes().expect("save");
            assert!(
                bytes == interp.to_bytes().expect("save"),
                "{rule} {prec:?}: the GPU's checkpoint differs from the interpreter's"
            );
            let mut resumed = optimizer(rule, Target::Cuda, prec);
            resumed.load_bytes(&bytes).expect("load");
            assert!(
                resumed.to_bytes().expect("save again") == bytes,
                "{rule} {prec:?}: not a bit-for-bit round trip"
            );
            let mut again = got.clone();
            train_host(&mut cuda, &mut got, d, 2, 2);
            train_host(&mut resumed, &mut again, d, 2, 2);
            assert_eq!(got, again, "{rule} {prec:?}: resumed parameters");
            assert!(
                cuda.to_bytes().expect("save") == resumed.to_bytes().expect("save"),
                "{rule} {prec:?}: resumed states"
            );
        }
    }
}

/// Device buffers of another dtype than the optimizer's parameter dtype are a clear error, and
/// nothing changes.
#[test]
fn device_buffers_of_another_dtype_are_refused() {
    if !gpu_present("device_buffers_of_another_dtype_are_refused") {
        return;
    }
    let prec = api_support::dtype_settings()[0];
    let mut opt = optimizer("adamw", Target::Cuda, prec);
    let stream = opt.cuda_stream().expect("cuda").clone();
    let host = Host::new(Dtype::F32, (0..37).map(|i| value(1, i)));
    let (mut p, g) = (host.upload(&stream), host.upload(&stream));
    let before = opt.to_bytes().expect("save");
    let err = opt
        .step([p.update("b", &g, &stream)])
        .expect_err("f32 buffers for a bf16 optimizer");
    assert!(
        matches!(
            err,
            RuntimeError::BufferDtype {
                found: Dtype::F32,
                expected: Dtype::Bf16,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p.download(&stream), host, "the parameter changed");
    assert!(
        opt.to_bytes().expect("save") == before,
        "the states changed"
    );
}
