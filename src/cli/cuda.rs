//! The CUDA parts of `optc run` and `optc bench`, on the one `Optimizer` with `Target::Cuda`.
//!
//! Without the `cuda` feature these return a clear error that says how to get a CUDA build.

use super::run::CliResult;
#[cfg(feature = "cuda")]
use optc_runtime::cuda::cudarc::driver::{CudaSlice, CudaStream};

/// The target `optc run --target cuda` uses: GPU 0.
#[cfg(feature = "cuda")]
pub(crate) fn target() -> CliResult<optc_runtime::Target> {
    Ok(optc_runtime::Target::Cuda)
}

/// Without CUDA support compiled in: a clear error.
#[cfg(not(feature = "cuda"))]
pub(crate) fn target() -> CliResult<optc_runtime::Target> {
    Err(no_cuda())
}

/// The error for a CUDA target in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda() -> Box<dyn std::error::Error> {
    "this optc was built without CUDA support; rebuild with `cargo build --release --features cuda`"
        .into()
}

/// `optc bench --target cuda`: times steps of every tensor (one launch per stage) on GPU 0,
/// with parameters and gradients on the device, then a device-to-device copy of the same number
/// of bytes.
#[cfg(feature = "cuda")]
pub(crate) fn bench(
    rule: optc_runtime::Rule,
    options: optc_runtime::Options,
    hypers: &[(String, f64)],
    shapes: &[(String, Vec<usize>)],
    args: &super::bench::BenchArgs,
) -> CliResult<super::bench::BenchReport> {
    use super::bench::{fill, progress, BenchReport};
    use optc_runtime::cuda::copy_bandwidth;
    use optc_runtime::{Optimizer, Options, Target};
    use std::time::Instant;
    let options = Options {
        target: Target::Cuda,
        ..options
    };
    let mut opt = Optimizer::with_options(rule, options)?;
    let mut scaler = args.loss_scale.scaler();
    for (name, value) in hypers {
        opt.set_hyper(name, *value)?;
    }
    for (name, shape) in shapes {
        opt.add_param(name, shape)?;
    }
    let kernel = super::bench::bench_kernel(&opt, shapes)?;
    let stream = opt
        .cuda_stream()
        .ok_or("internal: a CUDA optimizer without a stream")?
        .clone();
    let lens: Vec<usize> = shapes.iter().map(|(_, s)| s.iter().product()).collect();
    let elements: usize = lens.iter().sum();
    // In the parameters' storage dtype (`--param-dtype`), as the CPU bench.
    let dtype = opt.precision().param;
    let mut tensors = Vec::with_capacity(lens.len());
    for &n in &lens {
        tensors.push(Device::upload(
            &stream,
            dtype,
            &fill(n, 0.5),
            &fill(n, 1e-3),
        )?);
    }
    let bytes = kernel.bytes_per_element() * elements;
    let total = args.warmup + args.iters.max(1);
    let bar = progress(total, elements);
    let mut steps = Vec::new();
    for i in 0..total {
        let start = Instant::now();
        let updates = shapes
            .iter()
            .zip(tensors.iter_mut())
            .map(|((name, _), t)| t.update(name, &stream));
        match &mut scaler {
            Some(scaler) => scaler.step(&mut opt, updates)?,
            None => opt.step(updates)?,
        };
        stream.synchronize()?;
        if i >= args.warmup {
            steps.push(start.elapsed());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // The probe: a copy of half the step's bytes (a copy reads and writes each byte once), on the
    // same device in the same process, right after the steps.
    let copy = copy_bandwidth(0, (bytes / 2).max(4), steps.len() as u32)?;
    let probe_s = copy.seconds / f64::from(copy.iterations.max(1));
    let traffic = super::bench::Traffic {
        bytes,
        passes: kernel.stages.len(),
    };
    let mut report = BenchReport::with_traffic(
        &kernel,
        traffic,
        elements,
        shapes.len(),
        0,
        &mut steps,
        probe_s,
        2 * (bytes / 2).max(4),
    );
    report.set_precision(&opt);
    Ok(report)
}

/// A benchmark parameter and its gradient on the device, in their storage dtype.
#[cfg(feature = "cuda")]
enum Device {
    F32(CudaSlice<f32>, CudaSlice<f32>),
    Bf16(CudaSlice<half::bf16>, CudaSlice<half::bf16>),
    F16(CudaSlice<half::f16>, CudaSlice<half::f16>),
}

#[cfg(feature = "cuda")]
impl Device {
    /// `param` and `grad` rounded to `dtype` (to nearest, as `BufVec::from_f32`) on the device.
    fn upload(
        stream: &std::sync::Arc<CudaStream>,
        dtype: optc_kernel::Dtype,
        param: &[f32],
        grad: &[f32],
    ) -> CliResult<Device> {
        use optc_runtime::buf::BufVec;
        Ok(
            match (
                BufVec::from_f32(dtype, param),
                BufVec::from_f32(dtype, grad),
            ) {
                (BufVec::Bf16(p), BufVec::Bf16(g)) => {
                    Device::Bf16(stream.clone_htod(&p)?, stream.clone_htod(&g)?)
                }
                (BufVec::F16(p), BufVec::F16(g)) => {
                    Device::F16(stream.clone_htod(&p)?, stream.clone_htod(&g)?)
                }
                (BufVec::F32(p), BufVec::F32(g)) => {
                    Device::F32(stream.clone_htod(&p)?, stream.clone_htod(&g)?)
                }
                _ => return Err(format!("a {dtype} parameter on CUDA").into()),
            },
        )
    }

    /// The update of parameter `name`.
    fn update<'a>(&'a mut self, name: &'a str, stream: &'a CudaStream) -> optc_runtime::Update<'a> {
        use optc_runtime::Update;
        match self {
            Device::F32(p, g) => Update::cuda(name, p, &*g, stream),
            Device::Bf16(p, g) => Update::cuda(name, p, &*g, stream),
            Device::F16(p, g) => Update::cuda(name, p, &*g, stream),
        }
    }
}

/// Without CUDA support compiled in: a clear error.
#[cfg(not(feature = "cuda"))]
pub(crate) fn bench(
    _rule: optc_runtime::Rule,
    _options: optc_runtime::Options,
    _hypers: &[(String, f64)],
    _shapes: &[(String, Vec<usize>)],
    _args: &super::bench::BenchArgs,
) -> CliResult<super::bench::BenchReport> {
    Err(no_cuda())
}
