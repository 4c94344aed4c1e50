//! The CUDA paths of `optc run` and `optc bench`, on `optc_runtime::cuda`.
//!
//! Without the `cuda` feature these return a clear error that says how to get a CUDA build.

use super::run::{CliResult, Final, Tensor};

/// Compiles `rule` for `flags` to PTX and loads it on GPU 0 with `hypers` set.
#[cfg(feature = "cuda")]
fn load(
    rule: &optc_compiler::Rule,
    flags: &[(String, bool)],
    hypers: &[(String, f64)],
) -> CliResult<(optc_kernel::Kernel, optc_runtime::cuda::CudaOptimizer)> {
    let overrides: Vec<(&str, bool)> = flags.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let kernel = rule.specialize(&overrides)?;
    let ptx = optc_compiler::backend::ptx::emit(&kernel, &Default::default())?;
    let mut opt = optc_runtime::cuda::CudaOptimizer::new(kernel.clone(), &ptx, 0)?;
    for (name, value) in hypers {
        opt.set_hyper(name, *value)?;
    }
    Ok((kernel, opt))
}

/// Steps every tensor `steps` times on GPU 0 and returns the final states; the tensors' data is
/// replaced by the final parameters.
#[cfg(feature = "cuda")]
pub(crate) fn run_steps(
    rule_spec: &str,
    flags: &[(String, bool)],
    hypers: &[(String, f64)],
    schedules: &[optc_runtime::HyperSchedule],
    tensors: &mut [Tensor<'_>],
    steps: usize,
) -> CliResult<Vec<Final>> {
    let rule = super::source::load_rule(rule_spec)?;
    let (kernel, mut opt) = load(&rule, flags, hypers)?;
    let bases = schedules
        .iter()
        .map(|s| opt.hyper(&s.name))
        .collect::<Result<Vec<f64>, _>>()?;
    let stream = opt.stream().clone();
    let mut params = Vec::with_capacity(tensors.len());
    let mut ids = Vec::with_capacity(tensors.len());
    for t in tensors.iter() {
        let p = stream.clone_htod(&t.data)?;
        ids.push(opt.add_param(&p)?);
        params.push(p);
    }
    for k in 0..steps {
        let mut grads = Vec::with_capacity(tensors.len());
        for t in tensors.iter() {
            grads.push(stream.clone_htod(&t.grad_row(k)?)?);
        }
        let mut items: Vec<_> = ids
            .iter()
            .zip(params.iter_mut())
            .zip(grads.iter())
            .map(|((id, p), g)| (*id, p, g))
            .collect();
        for (s, base) in schedules.iter().zip(&bases) {
            opt.set_hyper(&s.name, s.schedule.value(*base, k as u64))?;
        }
        opt.step_many(&mut items)?;
    }
    opt.synchronize()?;
    let mut finals = Vec::with_capacity(tensors.len());
    for ((t, p), id) in tensors.iter_mut().zip(&params).zip(&ids) {
        t.data = stream.clone_dtoh(p)?;
        let mut states = Vec::new();
        for s in &kernel.states {
            states.push((s.name.clone(), opt.state(*id, &s.name)?));
        }
        let scalars = kernel
            .scalars
            .iter()
            .map(|s| s.name.clone())
            .zip(opt.scalars(*id)?.iter().copied())
            .collect();
        finals.push(Final { states, scalars });
    }
    Ok(finals)
}

/// Without CUDA support compiled in: a clear error.
#[cfg(not(feature = "cuda"))]
pub(crate) fn run_steps(
    _rule_spec: &str,
    _flags: &[(String, bool)],
    _hypers: &[(String, f64)],
    _schedules: &[optc_runtime::HyperSchedule],
    _tensors: &mut [Tensor<'_>],
    _steps: usize,
) -> CliResult<Vec<Final>> {
    Err(no_cuda())
}

/// The error for a CUDA target in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda() -> Box<dyn std::error::Error> {
    "this optc was built without CUDA support; rebuild with `cargo build --release --features cuda`"
        .into()
}

/// `optc bench --target cuda`: times steps of every tensor in one multi-tensor launch on GPU 0,
/// interleaved with a device-to-device copy of the same number of bytes.
#[cfg(feature = "cuda")]
pub(crate) fn bench(
    rule: &optc_compiler::Rule,
    flags: &[(String, bool)],
    hypers: &[(String, f64)],
    shapes: &[(String, Vec<usize>)],
    args: &super::bench::BenchArgs,
) -> CliResult<super::bench::BenchReport> {
    use super::bench::{fill, progress, BenchReport};
    use optc_runtime::cuda::copy_bandwidth;
    use std::time::Instant;
    let (kernel, mut opt) = load(rule, flags, hypers)?;
    let stream = opt.stream().clone();
    let lens: Vec<usize> = shapes.iter().map(|(_, s)| s.iter().product()).collect();
    let elements: usize = lens.iter().sum();
    let mut params = Vec::with_capacity(lens.len());
    let mut grads = Vec::with_capacity(lens.len());
    let mut ids = Vec::with_capacity(lens.len());
    for &n in &lens {
        let p = stream.clone_htod(&fill(n, 0.5))?;
        ids.push(opt.add_param(&p)?);
        params.push(p);
        grads.push(stream.clone_htod(&fill(n, 1e-3))?);
    }
    let bpe = kernel.bytes_per_element();
    let bytes = bpe * elements;
    let total = args.warmup + args.iters.max(1);
    let bar = progress(total, elements);
    let mut steps = Vec::new();
    for i in 0..total {
        let start = Instant::now();
        let mut items: Vec<_> = ids
            .iter()
            .zip(params.iter_mut())
            .zip(grads.iter())
            .map(|((id, p), g)| (*id, p, g))
            .collect();
        opt.step_many(&mut items)?;
        opt.synchronize()?;
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
    Ok(BenchReport::new(
        &kernel,
        elements,
        shapes.len(),
        0,
        &mut steps,
        probe_s,
        2 * (bytes / 2).max(4),
    ))
}

/// Without CUDA support compiled in: a clear error.
#[cfg(not(feature = "cuda"))]
pub(crate) fn bench(
    _rule: &optc_compiler::Rule,
    _flags: &[(String, bool)],
    _hypers: &[(String, f64)],
    _shapes: &[(String, Vec<usize>)],
    _args: &super::bench::BenchArgs,
) -> CliResult<super::bench::BenchReport> {
    Err(no_cuda())
}
