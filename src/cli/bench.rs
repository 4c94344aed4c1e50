//! `optc bench`: times a rule's step on the CPU and states it as a fraction of a bandwidth probe
//! measured in the same run.
//!
//! Takes a rule, a size (`--n` elements split over `--tensors` tensors, or a preset such as
//! `--shapes gpt2-small`), a thread count and `--set` hypers and flags. Steps through the public
//! [`Optimizer`] API (what a user gets: host program, validation and one pass of the pool per
//! step), interleaved with passes of a [`BandwidthProbe`] of the same read/write shape on the
//! same pool, so both see the same machine state. Reports median times, elements/s, bytes/s
//! (from [`optc_kernel::Kernel::bytes_per_element`], summed over the stages) and the kernel's
//! fraction of the probe, which makes one pass per stage with the same reads and writes;
//! on the CPU also the time from the rule's source to the runnable kernel, phase by phase
//! ([`super::compile_time`]); `--json` prints one JSON object as the last line.

use super::compile_time::{self, CompileTime};
use super::source::{apply_counts, load_rule_source, split_sets, take_max_grad_norm};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use optc_runtime::buf::BufVec;
use optc_runtime::probe::BandwidthProbe;
use optc_runtime::{GroupId, Optimizer, Options, Rule, Update};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `optc bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The rule: a `.opt` file, or the name of a stdlib rule (`adamw`).
    pub rule: String,
    /// Total elements, split evenly over `--tensors`.
    #[arg(long, default_value_t = 1 << 24)]
    pub n: usize,
    /// Number of tensors stepped together (one multi-tensor step).
    #[arg(long, default_value_t = 1)]
    pub tensors: usize,
    /// A preset list of parameter shapes instead of `--n`/`--tensors`.
    #[arg(long, value_enum)]
    pub shapes: Option<ShapePreset>,
    /// A tensor of this shape instead of `--n`/`--tensors`, dims separated by commas
    /// (`--shape 4096,4096`: a matrix, which rules such as adafactor factor); repeatable, one
    /// tensor each.
    #[arg(long, value_name = "D1,D2,...", conflicts_with = "shapes")]
    pub shape: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub threads: Option<usize>,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub iters: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Set a hyper or a flag (`--set amsgrad=true`); `--set max_grad_norm=V` clips by the
    /// global gradient norm, as torch.nn.utils.clip_grad_norm_ before the step; repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Where to run. On CUDA the probe is a device-to-device copy of the same number of bytes.
    #[arg(long, value_enum, default_value_t = BenchTarget::Cpu)]
    pub target: BenchTarget,
    /// Print one JSON object (last line of stdout) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Storage dtypes.
    #[command(flatten)]
    pub precision: super::precision::PrecisionArgs,
    /// Loss scaling.
    #[command(flatten)]
    pub loss_scale: super::loss_scale::LossScaleArgs,
}

/// Benchmark targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// The CPU JIT.
    Cpu,
    /// GPU 0 through CUDA (needs a build with `--features cuda` and a driver).
    Cuda,
}

/// Preset shape lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapePreset {
    /// The 148 parameter tensors of GPT-2 small (124,439,808 parameters, tied LM head).
    #[value(name = "gpt2-small")]
    Gpt2Small,
}

/// The measured result.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// The rule's name.
    pub rule: String,
    /// The flags the kernel was specialized for.
    pub flags: Vec<(String, bool)>,
    /// Total elements per step.
    pub elements: usize,
    /// Tensors per step.
    pub tensors: usize,
    /// Worker threads.
    pub threads: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Passes over the data per step (the kernel's stages).
    pub passes: usize,
    /// Bytes the kernels move per element, summed over their passes (weighted by elements when
    /// the tensors run different kernels: a rule with rank classes over matrices and vectors).
    pub bytes_per_element: f64,
    /// Median seconds per kernel step.
    pub step_s: f64,
    /// Fastest kernel step, seconds.
    pub step_min_s: f64,
    /// Median seconds per probe pass.
    pub probe_s: f64,
    /// Elements per second at the median.
    pub elements_per_s: f64,
    /// Bytes per second at the median.
    pub bytes_per_s: f64,
    /// The probe's bytes per second at its median.
    pub probe_bytes_per_s: f64,
    /// `bytes_per_s / probe_bytes_per_s`.
    pub fraction_of_probe: f64,
    /// The rank class of the benchmarked kernel (of the one with the most elements, when the
    /// tensors run one per rank class).
    pub rank: optc_kernel::RankClass,
    /// The storage dtype of parameters and gradients.
    pub param_dtype: optc_kernel::Dtype,
    /// The storage dtype of the per-element states.
    pub state_dtype: optc_kernel::Dtype,
    /// Whether the parameters have f32 master copies.
    pub master_weights: bool,
    /// Whether parameter stores round stochastically.
    pub stochastic_rounding: bool,
    /// Bytes of optimizer state per parameter element (every state, in its dtype).
    pub state_bytes_per_param: f64,
    /// The time from source to this kernel, runnable on the CPU (`--target cpu` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile: Option<CompileTime>,
}

impl BenchReport {
    /// The report for `steps` (timed kernel steps) of a step that moves `traffic.bytes` in
    /// `traffic.passes` passes (its kernels' bytes per element times their elements, summed),
    /// against a probe that moved `probe_bytes` in `probe_s` seconds at its median.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_traffic(
        kernel: &optc_kernel::Kernel,
        traffic: Traffic,
        elements: usize,
        tensors: usize,
        threads: usize,
        steps: &mut [Duration],
        probe_s: f64,
        probe_bytes: usize,
    ) -> BenchReport {
        let step_s = median(steps);
        let bytes = traffic.bytes as f64;
        let bpe = bytes / elements.max(1) as f64;
        let probe_bytes = probe_bytes as f64;
        BenchReport {
            rule: kernel.rule.clone(),
            flags: kernel
                .flags
                .iter()
                .map(|f| (f.name.clone(), f.value))
                .collect(),
            elements,
            tensors,
            threads,
            iters: steps.len(),
            passes: traffic.passes,
            bytes_per_element: bpe,
            step_s,
            step_min_s: steps
                .iter()
                .min()
                .copied()
                .unwrap_or_default()
                .as_secs_f64(),
            probe_s,
            elements_per_s: elements as f64 / step_s,
            bytes_per_s: bytes / step_s,
            probe_bytes_per_s: probe_bytes / probe_s,
            fraction_of_probe: (bytes / step_s) / (probe_bytes / probe_s),
            rank: kernel.rank,
            param_dtype: kernel.storage.param,
            state_dtype: optc_kernel::Dtype::F32,
            master_weights: false,
            stochastic_rounding: kernel.storage.stochastic_seed().is_some(),
            state_bytes_per_param: 0.0,
            compile: None,
        }
    }
}

impl BenchReport {
    /// Fills in the storage options and state bytes of `opt` (after its steps).
    pub(crate) fn set_precision(&mut self, opt: &Optimizer) {
        let p = opt.precision();
        self.param_dtype = p.param;
        self.state_dtype = p.state;
        self.master_weights = p.master_weights;
        self.stochastic_rounding = p.stochastic_rounding.is_some();
        let (bytes, n) = opt.state_bytes();
        self.state_bytes_per_param = bytes as f64 / n.max(1) as f64;
    }
}

/// What a step moves: bytes in all, and passes over the data (the most stages of its kernels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Traffic {
    /// Bytes per step.
    pub bytes: usize,
    /// Passes per step.
    pub passes: usize,
}

/// Runs `optc bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (compiled, source) = load_rule_source(&args.rule)?;
    let (compiled, sets) = apply_counts(compiled, &args.set)?;
    let file_name = compiled.file_name().to_string();
    let (flags, mut hypers) = split_sets(&compiled, &sets)?;
    let max_grad_norm = take_max_grad_norm(&compiled, &mut hypers);
    let shapes = match args.shapes {
        Some(ShapePreset::Gpt2Small) => optc_runtime::shapes::gpt2_small(),
        None if !args.shape.is_empty() => args
            .shape
            .iter()
            .enumerate()
            .map(|(i, d)| Ok((format!("t{i}"), parse_shape(d)?)))
            .collect::<Result<_, String>>()?,
        None => even_split(args.n, args.tensors)?,
    };
    let options = Options {
        flags,
        max_grad_norm,
        precision: args.precision.precision()?,
        loss_scale: args.loss_scale.initial(),
        ..Options::default()
    };
    let clip = options.max_grad_norm.is_some();
    let loss_scale = options.loss_scale.is_some();
    let rule = Rule::from_compiled(compiled);
    let report = match args.target {
        BenchTarget::Cpu => {
            let mut report = bench(rule, options, &hypers, &shapes, &args)?;
            let flags: Vec<bool> = report.flags.iter().map(|(_, v)| *v).collect();
            report.compile = Some(compile_time::measure(
                &file_name,
                &source,
                &flags,
                clip,
                loss_scale,
                report.rank,
            )?);
            report
        }
        BenchTarget::Cuda => super::cuda::bench(rule, options, &hypers, &shapes, &args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--shape D1,D2,...`: positive dims whose product fits in memory.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let dims: Vec<usize> = text
        .split(',')
        .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!("--shape {text}: expected positive dims separated by commas, as in 4096,4096")
        })?;
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("--shape {text}: too many elements"))?;
    Ok(dims)
}

/// `n` elements as `k` tensors of nearly equal length.
fn even_split(n: usize, k: usize) -> Result<Vec<(String, Vec<usize>)>, String> {
    if k == 0 || n < k {
        return Err(format!(
            "cannot split --n {n} into --tensors {k}: need 1 <= tensors <= n"
        ));
    }
    Ok((0..k)
        .map(|i| (format!("t{i}"), vec![n / k + usize::from(i < n % k)]))
        .collect())
}

/// Times the kernel through the optimizer and the probe on the same pool, interleaved.
pub fn bench(
    rule: Rule,
    options: Options,
    hypers: &[(String, f64)],
    shapes: &[(String, Vec<usize>)],
    args: &BenchArgs,
) -> Result<BenchReport, Box<dyn std::error::Error>> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        builder = builder.num_threads(t);
    }
    let pool = Arc::new(builder.build()?);
    let options = Options {
        pool: Some(pool.clone()),
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
    let lens: Vec<usize> = shapes.iter().map(|(_, s)| s.iter().product()).collect();
    let elements: usize = lens.iter().sum();
    // The tensors by the kernel they run (one group unless a rule with rank classes gets both
    // matrices and vectors): each group has its own probe, with its kernel's passes.
    let mut groups: Vec<(optc_kernel::Kernel, Vec<usize>)> = Vec::new();
    for (i, (name, _)) in shapes.iter().enumerate() {
        let k = opt.param_kernel(name)?;
        match groups.iter_mut().find(|(g, _)| g == k) {
            Some((_, lens_of)) => lens_of.push(lens[i]),
            None => groups.push((k.clone(), vec![lens[i]])),
        }
    }
    if groups.is_empty() {
        groups.push((opt.kernel(GroupId::DEFAULT)?.clone(), Vec::new()));
    }
    // p, g and the states, plus the probe's own buffers (one per buffer the kernel touches).
    let memory: usize = groups
        .iter()
        .map(|(k, ls)| {
            let b = k.buffers();
            let per = 4 * (b.len() + b.iter().filter(|b| b.read || b.written).count());
            per.saturating_mul(ls.iter().sum())
        })
        .sum();
    check_memory(memory)?;
    // Small values: a long run stays finite for any rule. In the parameters' storage dtype.
    let dtype = opt.precision().param;
    let mut params: Vec<BufVec> = lens
        .iter()
        .map(|&n| BufVec::from_f32(dtype, &fill(n, 0.5)))
        .collect();
    let grads: Vec<BufVec> = lens
        .iter()
        .map(|&n| BufVec::from_f32(dtype, &fill(n, 1e-3)))
        .collect();
    // Each probe makes one pass per stage with that stage's reads and writes: the same summed
    // traffic as the step.
    let mut probes_of: Vec<BandwidthProbe> = groups
        .iter()
        .map(|(k, ls)| {
            let passes: Vec<_> = (0..k.stages.len()).map(|s| k.stage_buffers(s)).collect();
            BandwidthProbe::with_passes(&passes, ls)
        })
        .collect();

    let total = args.warmup + args.iters.max(1);
    let bar = progress(total, elements);
    let (mut steps, mut probes) = (Vec::new(), Vec::new());
    for i in 0..total {
        let start = Instant::now();
        let updates = shapes
            .iter()
            .zip(params.iter_mut())
            .zip(&grads)
            .map(|(((name, _), p), g)| Update::typed(name, p.view(), g.into()));
        match &mut scaler {
            Some(scaler) => scaler.step(&mut opt, updates)?,
            None => opt.step(updates)?,
        };
        let step = start.elapsed();
        let start = Instant::now();
        for probe in &mut probes_of {
            probe.run(Some(&pool));
        }
        let pass = start.elapsed();
        if i >= args.warmup {
            steps.push(step);
            probes.push(pass);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let probe_s = median(&mut probes);
    let probe_bytes: usize = probes_of
        .iter()
        .zip(&groups)
        .map(|(p, (_, ls))| p.bytes_per_element() * ls.iter().sum::<usize>())
        .sum();
    let traffic = Traffic {
        bytes: groups
            .iter()
            .map(|(k, ls)| k.bytes_per_element() * ls.iter().sum::<usize>())
            .sum(),
        passes: groups
            .iter()
            .map(|(k, _)| k.stages.len())
            .max()
            .unwrap_or(0),
    };
    let (main, _) = groups
        .iter()
        .max_by_key(|(_, ls)| ls.iter().sum::<usize>())
        .ok_or("internal: no kernel")?;
    let mut report = BenchReport::with_traffic(
        main,
        traffic,
        elements,
        shapes.len(),
        pool.current_num_threads(),
        &mut steps,
        probe_s,
        probe_bytes,
    );
    report.set_precision(&opt);
    Ok(report)
}

/// Refuses a run that needs more memory than the machine has available (an allocation failure
/// would abort the process instead of reporting an error).
fn check_memory(bytes: usize) -> Result<(), String> {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    match available {
        Some(avail) if bytes > avail => Err(format!(
            "this benchmark needs about {:.1} GB for its buffers, but only {:.1} GB of memory is available; use a smaller --n",
            bytes as f64 / 1e9,
            avail as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

pub(crate) fn fill(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| scale * (1.0 + (i % 97) as f32 / 97.0))
        .collect()
}

pub(crate) fn median(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .copied()
        .unwrap_or_default()
        .as_secs_f64()
}

/// A progress bar on stderr for runs that move more than about a gigabyte; hidden when stderr is
/// not a terminal.
pub(crate) fn progress(total: usize, elements: usize) -> ProgressBar {
    if elements * total < (1 << 28) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} steps")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("benchmarking");
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn print_report(r: &BenchReport) {
    let g = 1e9;
    let flags: Vec<String> = r.flags.iter().map(|(n, v)| format!("{n}={v}")).collect();
    println!(
        "rule {} [{}]: {} elements in {} tensor(s), {} thread(s), {:.4} B/element over {} pass(es)",
        r.rule,
        flags.join(", "),
        r.elements,
        r.tensors,
        r.threads,
        r.bytes_per_element,
        r.passes
    );
    println!(
        "kernel: {:.3} ms/step (median of {}, min {:.3} ms), {:.3} G elements/s, {:.1} GB/s",
        r.step_s * 1e3,
        r.iters,
        r.step_min_s * 1e3,
        r.elements_per_s / g,
        r.bytes_per_s / g
    );
    println!(
        "probe:  {:.3} ms/step, {:.1} GB/s (same reads and writes per pass, plain Rust loop, same pool)",
        r.probe_s * 1e3,
        r.probe_bytes_per_s / g
    );
    println!("kernel / probe: {:.2}", r.fraction_of_probe);
    println!(
        "storage: p and g {}, states {}{}{}; {:.2} B of optimizer state per parameter",
        r.param_dtype,
        r.state_dtype,
        if r.master_weights {
            ", f32 master weights"
        } else {
            ""
        },
        if r.stochastic_rounding {
            ", stochastic rounding"
        } else {
            ""
        },
        r.state_bytes_per_param
    );
    if let Some(c) = &r.compile {
        let ms = 1e3;
        println!(
            "compile: {:.2} ms from source to a runnable CPU kernel (median of {}): parse {:.2}, check {:.2}, every flag set {:.2}, specialize {:.2}, JIT {:.2} (of which CLIF lowering {:.2})",
            c.total_s * ms,
            c.reps,
            c.parse_s * ms,
            c.check_s * ms,
            c.flag_sets_s * ms,
            c.specialize_s * ms,
            c.jit_s * ms,
            c.clif_s * ms
        );
    }
}

/// The one kernel every benchmarked tensor runs, for the CUDA bench (whose probe is one copy of
/// the step's bytes). A rule with rank classes (one that reads `matrix`, such as `lars`) runs one
/// kernel for matrices and another for vectors; a CUDA bench over both classes at once is
/// refused (the CPU bench weighs them, see [`bench`]).
#[cfg(feature = "cuda")]
pub(crate) fn bench_kernel(
    opt: &Optimizer,
    shapes: &[(String, Vec<usize>)],
) -> Result<optc_kernel::Kernel, Box<dyn std::error::Error>> {
    let Some((first, _)) = shapes.first() else {
        return Ok(opt.kernel(GroupId::DEFAULT)?.clone());
    };
    let kernel = opt.param_kernel(first)?;
    for (name, shape) in shapes {
        if opt.param_kernel(name)?.rank != kernel.rank {
            return Err(format!(
                "rule `{}` runs one kernel for matrices and another for vectors, and these shapes mix both (`{first}` and `{name}` {shape:?}); bench one rank class at a time (`--n N` gives vectors)",
                kernel.rule
            )
            .into());
        }
    }
    Ok(kernel.clone())
}
