//! `optc run`: steps parameters from a safetensors file with a gradient history from another, and
//! writes the final parameters and optimizer state.
//!
//! Takes a rule (a `.opt` file or a stdlib name), `P.safetensors` (f32 parameters by name),
//! `G.safetensors` (for each parameter `NAME` a tensor `NAME` of shape `[N', *shape]`, where row
//! `k` is the gradient at step `k + 1`), a step count `N <= N'`, and `--set` hypers and flags.
//! Gives `OUT.safetensors` with each final parameter under its name, each per-element state as
//! `NAME.STATE` (f32, the parameter's shape) and each scalar state as `NAME.SCALAR` (f64, shape
//! `[]`), and with `--set max_grad_norm=V` (clipping by the global norm over every tensor of the
//! file, each step one call) the total gradient norm of each step as `__optc__/grad_norm` (f64,
//! `[steps]`); with `--loss-scale S|dynamic` (docs/loss_scaling.md) the scale each step used as
//! `__optc__/loss_scale` (f64, `[steps]`) and whether it was skipped for an inf or a NaN as
//! `__optc__/skipped` (u8, `[steps]`). Every input is checked before the first step; any problem is an error (exit code
//! 1). `--resume` starts from a saved optimizer state
//! (optc's or torch's layout, told apart by content) and `--save-state` writes the final one. The
//! outputs are written atomically.

use super::source::{apply_counts, load_rule, split_sets, take_max_grad_norm};
use clap::{Args, ValueEnum};
use optc_runtime::buf::BufVec;
use optc_runtime::{Optimizer, Options, Rule, StateFormat, Target, Update};

pub(crate) type CliResult<T> = Result<T, Box<dyn std::error::Error>>;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `optc run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The rule: a `.opt` file, or the name of a stdlib rule (`adamw`).
    pub rule: String,
    /// The parameters: f32 tensors by name.
    #[arg(long, value_name = "P.safetensors")]
    pub params: PathBuf,
    /// The gradients: for each parameter NAME of shape S, a tensor NAME of shape [N', *S]; row k
    /// is the gradient at step k+1.
    #[arg(long, value_name = "G.safetensors")]
    pub grads: PathBuf,
    /// How many steps to take (at most N', the gradients' first dimension).
    #[arg(long, value_name = "N")]
    pub steps: usize,
    /// Set a hyper (`--set lr=1e-4`) or a flag (`--set amsgrad=true`); `--set max_grad_norm=V`
    /// clips by the global gradient norm over every tensor of a step, as
    /// torch.nn.utils.clip_grad_norm_ before the step; repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Make a hyper follow a schedule, e.g. `--schedule 'lr=cosine(warmup=100, total=1000)'`;
    /// the base value is the hyper's (after `--set`). Schedules: docs/schedules.md. Repeatable.
    #[arg(long = "schedule", value_name = "NAME=SPEC")]
    pub schedule: Vec<String>,
    /// Where to run the kernel.
    #[arg(long, value_enum, default_value_t = RunTarget::Cpu)]
    pub target: RunTarget,
    /// Worker threads for the CPU target (default: all cores).
    #[arg(long, value_name = "T", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub threads: Option<usize>,
    /// Do not fuse multiply-adds on the CPU: `+ - * /`, `sqrt` and comparisons then equal
    /// `--target interp` bit for bit (`exp`, `log` and `^` stay within 1 ulp; see docs/language.md).
    #[arg(long)]
    pub no_fma: bool,
    /// The output file.
    #[arg(short = 'o', long = "output", value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Start from this optimizer state: an optc checkpoint or a torch-convention file
    /// (`NAME.step`, `NAME.exp_avg`, ...; docs/torch.md), told apart by content.
    #[arg(long, value_name = "STATE.safetensors")]
    pub resume: Option<PathBuf>,
    /// Also write the final optimizer state to this file.
    #[arg(long, value_name = "STATE.safetensors")]
    pub save_state: Option<PathBuf>,
    /// The layout of --save-state: optc's checkpoint or torch's convention.
    #[arg(long, value_enum, default_value_t = StateFormatArg::Optc, requires = "save_state")]
    pub state_format: StateFormatArg,
    /// Storage dtypes: `P` and `G` hold tensors of `--param-dtype`, and the output has the
    /// parameters in it and each state in its own dtype.
    #[command(flatten)]
    pub precision: super::precision::PrecisionArgs,
    /// Loss scaling: with `S`, the file's gradients are S times the true ones; with `dynamic`,
    /// they are the true ones and each step multiplies them by the scaler's current scale.
    #[command(flatten)]
    pub loss_scale: super::loss_scale::LossScaleArgs,
}

/// The layouts `--save-state` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFormatArg {
    /// optc's checkpoint: hypers, groups and flags included, read back bit for bit.
    Optc,
    /// torch's convention: `NAME.step` and each state under torch's name (docs/torch.md).
    Torch,
}

/// The targets `optc run` can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunTarget {
    /// The CPU JIT.
    Cpu,
    /// The reference interpreter (slow; the meaning of the rule).
    Interp,
    /// An NVIDIA GPU through CUDA (needs a build with `--features cuda` and a driver).
    Cuda,
}

/// One parameter: its name, shape, data, and its gradient history as raw bytes, in the
/// parameters' storage dtype.
struct Tensor<'a> {
    name: String,
    shape: Vec<usize>,
    data: BufVec,
    grads: &'a [u8],
}

/// A parameter's final state, as written to the output file.
struct Final {
    /// Per-element states by name, each in its storage dtype.
    states: Vec<(String, BufVec)>,
    /// Scalar states by name.
    scalars: Vec<(String, f64)>,
}

impl Tensor<'_> {
    /// The gradient row of step `k + 1`.
    fn grad_row(&self, k: usize) -> CliResult<BufVec> {
        let d = self.data.dtype();
        let bytes = d.bytes_per_value() as usize * self.data.len();
        BufVec::from_le_bytes(d, &self.grads[k * bytes..(k + 1) * bytes])
            .ok_or_else(|| format!("gradients `{}`: a partial value", self.name).into())
    }
}

/// Runs `optc run`.
pub fn run(args: RunArgs) -> CliResult<ExitCode> {
    let (compiled, sets) = apply_counts(load_rule(&args.rule)?, &args.set)?;
    let (flags, mut hypers) = split_sets(&compiled, &sets)?;
    let max_grad_norm = take_max_grad_norm(&compiled, &mut hypers);
    let schedules = parse_schedules(&compiled, &args.schedule)?;
    let rule = Rule::from_compiled(compiled);

    let p_bytes = read(&args.params)?;
    let g_bytes = read(&args.grads)?;
    let p_file = parse(&args.params, &p_bytes)?;
    let g_file = parse(&args.grads, &g_bytes)?;
    let precision = args.precision.precision()?;
    let mut tensors = match_tensors(
        &p_file,
        &g_file,
        args.steps,
        (&args.params, &args.grads),
        precision.param,
    )?;

    let target = match args.target {
        RunTarget::Cpu => Target::Cpu,
        RunTarget::Interp => Target::Interp,
        RunTarget::Cuda => super::cuda::target()?,
    };
    let options = Options {
        target,
        threads: args.threads,
        flags,
        allow_fma: !args.no_fma,
        max_grad_norm,
        precision,
        loss_scale: args.loss_scale.initial(),
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(rule, options)?;
    let mut scaler = args.loss_scale.scaler();
    let mut scaling = Scaling::default();
    for (name, value) in &hypers {
        opt.set_hyper(name, *value)?;
    }
    for t in &tensors {
        opt.add_param(&t.name, &t.shape)?;
    }
    if let Some(path) = &args.resume {
        opt.resume(path)
            .map_err(|e| format!("--resume `{}`: {e}", path.display()))?;
    }
    let scheduler = optc_runtime::Scheduler::new(&opt, &schedules)?;
    let mut rows: Vec<BufVec> = tensors
        .iter()
        .map(|t| BufVec::splat(t.data.dtype(), 0.0, t.data.len()))
        .collect();
    let mut norms = Vec::new();
    for k in 0..args.steps {
        for (t, row) in tensors.iter().zip(&mut rows) {
            *row = t.grad_row(k)?;
            if let Some(scaler) = &scaler {
                // The gradients of a loss scaled by the current scale, rounded to f32 (and to
                // the parameters' dtype).
                let scale = scaler.scale() as f32;
                let scaled: Vec<f32> = row.to_f32().iter().map(|x| x * scale).collect();
                *row = BufVec::from_f32(row.dtype(), &scaled);
            }
        }
        let updates = tensors
            .iter_mut()
            .zip(&rows)
            .map(|(t, g)| Update::typed(&t.name, t.data.view(), g.into()));
        scheduler.apply(&mut opt, k as u64)?;
        // Every tensor of the file in one call: a global norm covers them all.
        // The scale this step's gradients carry (a scaler sets it on the optimizer as it steps).
        let used = scaler.as_ref().map(|s| s.scale()).or(opt.loss_scale());
        let report = match &mut scaler {
            Some(scaler) => scaler.step(&mut opt, updates)?,
            None => opt.step(updates)?,
        };
        norms.extend(report.grad_norm);
        if let Some(scale) = used {
            scaling.scales.push(scale);
            scaling.skipped.push(u8::from(report.skipped));
        }
    }
    let mut finals = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let kernel = opt.param_kernel(&t.name)?;
        let dtype_of = |name: &str| {
            kernel
                .states
                .iter()
                .position(|s| s.name == name)
                .map(|i| {
                    kernel
                        .storage
                        .dtype(optc_kernel::Slot::State(optc_kernel::StateId::new(i)))
                })
                .unwrap_or_default()
        };
        finals.push(Final {
            states: opt
                .states(&t.name)?
                .into_iter()
                .map(|(n, v)| (n.to_string(), BufVec::from_f32(dtype_of(n), &v)))
                .collect(),
            scalars: opt
                .scalars(&t.name)?
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        });
    }
    write_output(&tensors, &finals, &norms, &scaling, &args.output)?;
    if let Some(path) = &args.save_state {
        let format = match args.state_format {
            StateFormatArg::Optc => StateFormat::Optc,
            StateFormatArg::Torch => StateFormat::Torch,
        };
        opt.save_state(path, format)
            .map_err(|e| format!("--save-state `{}`: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses every `--schedule NAME=SPEC`, checking that the rule declares NAME and that no hyper
/// has two schedules.
pub(crate) fn parse_schedules(
    rule: &optc_compiler::Rule,
    args: &[String],
) -> CliResult<Vec<optc_runtime::HyperSchedule>> {
    let mut out: Vec<optc_runtime::HyperSchedule> = Vec::with_capacity(args.len());
    for arg in args {
        let s = optc_runtime::HyperSchedule::parse(arg)
            .map_err(|e| format!("bad `--schedule`: {e}"))?;
        if !rule.hypers().iter().any(|h| h.name == s.name) {
            let mut msg = format!(
                "`--schedule {arg}`: rule `{}` has no hyper `{}`",
                rule.name(),
                s.name
            );
            let names = rule.hypers().iter().map(|h| h.name.as_str());
            if let Some(c) = optc_compiler::diag::did_you_mean(&s.name, names) {
                msg.push_str(&format!(" (did you mean `{c}`?)"));
            }
            return Err(msg.into());
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(format!("`--schedule {}=...` is given twice", s.name).into());
        }
        out.push(s);
    }
    Ok(out)
}

fn read(path: &Path) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()).into())
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> CliResult<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| format!("`{}` is not a safetensors file: {e}", path.display()).into())
}

/// Pairs every parameter with its gradients and checks dtypes, shapes and the step count.
fn match_tensors<'a>(
    p: &SafeTensors<'a>,
    g: &SafeTensors<'a>,
    steps: usize,
    (p_path, g_path): (&Path, &Path),
    dtype: optc_kernel::Dtype,
) -> CliResult<Vec<Tensor<'a>>> {
    let (pp, gp) = (p_path.display(), g_path.display());
    let mut names: Vec<&str> = p.names();
    names.sort_unstable();
    if names.is_empty() {
        return Err(format!("`{pp}` holds no tensors").into());
    }
    let mut out = Vec::with_capacity(names.len());
    for &name in &names {
        let pv = p.tensor(name)?;
        let data = BufVec::from_le_bytes(dtype, typed_bytes(name, &pv, dtype, &pp)?)
            .ok_or_else(|| format!("`{pp}`: tensor `{name}` has a partial value"))?;
        let gv = g
            .tensor(name)
            .map_err(|_| format!("`{gp}` has no gradients for parameter `{name}`"))?;
        let grads = typed_bytes(name, &gv, dtype, &gp)?;
        let shape = pv.shape().to_vec();
        let (rows, row_shape) = match gv.shape().split_first() {
            Some((&r, rest)) => (r, rest),
            None => (0, &[][..]),
        };
        if row_shape != shape.as_slice() {
            return Err(format!(
                "gradients `{name}` in `{gp}` have shape {:?}; expected [steps{}] for the parameter of shape {shape:?}",
                gv.shape(),
                shape.iter().map(|d| format!(", {d}")).collect::<String>()
            )
            .into());
        }
        if rows < steps {
            return Err(format!(
                "gradients `{name}` in `{gp}` hold {rows} steps, but --steps is {steps}"
            )
            .into());
        }
        out.push(Tensor {
            name: name.to_string(),
            shape,
            data,
            grads,
        });
    }
    for name in g.names() {
        if p.tensor(name).is_err() {
            let hint = optc_compiler::diag::did_you_mean(name, names.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(
                format!("`{gp}` has gradients `{name}` for no parameter of `{pp}`{hint}").into(),
            );
        }
    }
    Ok(out)
}

/// The output key of the total gradient norm of each step (F64 `[steps]`), written when the steps
/// computed it (`--set max_grad_norm=V`).
pub const GRAD_NORM_KEY: &str = "__optc__/grad_norm";

/// The output key of the loss scale each step used (F64 `[steps]`), with `--loss-scale`.
pub const LOSS_SCALE_KEY: &str = "__optc__/loss_scale";
/// The output key of whether each step was skipped for an inf or a NaN (U8 `[steps]`, 1:
/// skipped), with `--loss-scale`.
pub const SKIPPED_KEY: &str = "__optc__/skipped";

/// What loss scaling did, step by step (empty without it).
#[derive(Default)]
struct Scaling {
    scales: Vec<f64>,
    skipped: Vec<u8>,
}

/// Writes the parameters, `NAME.STATE` states, `NAME.SCALAR` scalar states, the gradient norms
/// and what loss scaling did.
fn write_output(
    tensors: &[Tensor<'_>],
    finals: &[Final],
    norms: &[f64],
    scaling: &Scaling,
    path: &Path,
) -> CliResult<()> {
    let mut owned: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut put = |key: String, entry: (Dtype, Vec<usize>, Vec<u8>)| -> CliResult<()> {
        match owned.insert(key.clone(), entry) {
            Some(_) => Err(format!("two output tensors would be named `{key}`").into()),
            None => Ok(()),
        }
    };
    for (t, fin) in tensors.iter().zip(finals) {
        put(
            t.name.clone(),
            (
                safetensors_dtype(t.data.dtype()),
                t.shape.clone(),
                t.data.to_le_bytes(),
            ),
        )?;
        for (state, values) in &fin.states {
            put(
                format!("{}.{state}", t.name),
                (
                    safetensors_dtype(values.dtype()),
                    t.shape.clone(),
                    values.to_le_bytes(),
                ),
            )?;
        }
        for (scalar, value) in &fin.scalars {
            put(
                format!("{}.{scalar}", t.name),
                (Dtype::F64, vec![], value.to_le_bytes().to_vec()),
            )?;
        }
    }
    if !norms.is_empty() {
        let bytes = norms.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(
            GRAD_NORM_KEY.to_string(),
            (Dtype::F64, vec![norms.len()], bytes),
        )?;
    }
    if !scaling.scales.is_empty() {
        let bytes = scaling
            .scales
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let n = scaling.scales.len();
        put(LOSS_SCALE_KEY.to_string(), (Dtype::F64, vec![n], bytes))?;
        let flags = scaling.skipped.clone();
        put(SKIPPED_KEY.to_string(), (Dtype::U8, vec![n], flags))?;
    }
    let mut views = Vec::with_capacity(owned.len());
    for (key, (dtype, shape, data)) in &owned {
        views.push((key.as_str(), TensorView::new(*dtype, shape.clone(), data)?));
    }
    let bytes = safetensors::serialize(views, None)?;
    optc_runtime::atomic::write_atomic(path, &bytes)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()).into())
}

/// How safetensors names a storage dtype.
fn safetensors_dtype(d: optc_kernel::Dtype) -> Dtype {
    match d {
        optc_kernel::Dtype::Bf16 => Dtype::BF16,
        optc_kernel::Dtype::F16 => Dtype::F16,
        optc_kernel::Dtype::F32 | optc_kernel::Dtype::Int8 => Dtype::F32,
    }
}

/// The data of tensor `name` of file `file`, which must be of `dtype` (`--param-dtype`).
fn typed_bytes<'a>(
    name: &str,
    view: &TensorView<'a>,
    dtype: optc_kernel::Dtype,
    file: &dyn std::fmt::Display,
) -> CliResult<&'a [u8]> {
    let want = safetensors_dtype(dtype);
    if view.dtype() != want {
        return Err(format!(
            "`{file}`: tensor `{name}` is {:?}, but --param-dtype {dtype} reads {want:?} tensors",
            view.dtype()
        )
        .into());
    }
    Ok(view.data())
}
