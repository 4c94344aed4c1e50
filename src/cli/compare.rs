//! `optc compare RULE... --task T`: train rules on a built-in task over seeds and compare them.
//!
//! Prints the table on stdout, writes `curves.png` and `results.json` to `--out`, and shows a
//! progress bar on stderr when stderr is a terminal. Every problem with the arguments (unknown
//! task, a rule that does not compile, an unknown hyper, a malformed `--set`) is a
//! [`CompareError`] with a complete message; nothing here panics on user input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::compare::reference::{Reference, ReferenceKind};
use crate::compare::{
    apply_setting, did_you_mean, plot, table, task, Backend, CompareError, Comparison, Contender,
    Progress, RuleContender,
};

/// Arguments of `optc compare`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    optc compare adamw my.opt --task digits-mlp --seeds 5\n  \
    optc compare sgd adamw --task quadratic --set sgd:lr=1e-3 --set adamw:lr=1e-2\n  \
    optc compare adamw sgd --set sgd:lr=0.1 --schedule 'lr=cosine(warmup=100, total=1000)'\n\n\
    Tasks: digits-mlp (MLP on 8x8 digits, target 95% test accuracy), rosenbrock (100-D, target \
    loss <= 1e-2), quadratic (100-D, condition number 1e3, target loss <= 1e-3).")]
pub struct CompareArgs {
    /// Rules to compare: `.opt` files or stdlib names (`adamw`, `sgd`, ...);
    /// `reference:adamw`, `reference:adam` or `reference:sgd` for the plain-Rust references.
    #[arg(required = true, value_name = "RULE")]
    pub rules: Vec<String>,
    /// The task: digits-mlp, rosenbrock or quadratic.
    #[arg(long, default_value = "digits-mlp")]
    pub task: String,
    /// Optimizer steps per run [default: the task's: digits-mlp 1000, rosenbrock 20000,
    /// quadratic 15000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Number of seeds (runs per rule, seeds 0..K).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Set a hyper or flag: `RULE:NAME=VALUE` for one rule, `NAME=VALUE` for every rule that
    /// declares NAME. RULE is the label in the table (the rule's `optimizer` name).
    /// `max_grad_norm=V` clips every compiled rule by the global gradient norm, as
    /// torch.nn.utils.clip_grad_norm_ before each step. Repeatable.
    #[arg(long = "set", value_name = "RULE:NAME=VALUE")]
    pub set: Vec<String>,
    /// Make a hyper follow a schedule: `RULE:NAME=SPEC` for one rule, `NAME=SPEC` for every rule
    /// that declares NAME, e.g. `lr=cosine(warmup=100, total=1000, floor=1e-5)`; the base value is
    /// the hyper's (after `--set`). Schedules: docs/schedules.md. Repeatable.
    #[arg(long = "schedule", value_name = "[RULE:]NAME=SPEC")]
    pub schedule: Vec<String>,
    /// What runs compiled rules: `cpu` (the JIT a training loop uses) or `interp` (the reference
    /// interpreter, slow, for checking).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Keep one rule's per-element states in DTYPE (`f32`, `bf16` or `int8`; `docs/dtypes.md`),
    /// over `--state-dtype`: `LABEL:DTYPE`, e.g. `adamw#2:int8`; repeatable.
    #[arg(long = "rule-state-dtype", value_name = "RULE:DTYPE")]
    pub rule_state_dtype: Vec<String>,
    /// Directory for `curves.png` and `results.json` (created if missing).
    #[arg(long, default_value = "optc-compare")]
    pub out: PathBuf,
    /// Storage dtypes of every compiled rule (the references stay f32): the model's parameters
    /// are kept in `--param-dtype` between steps, and the table's `state B/param` follows.
    #[command(flatten)]
    pub precision: super::precision::PrecisionArgs,
    /// Loss scaling for every compiled rule (the references run unscaled): each step's gradients
    /// are scaled, unscaled by the optimizer, and a step with an inf or a NaN is skipped.
    #[command(flatten)]
    pub loss_scale: super::loss_scale::LossScaleArgs,
}

/// Runs `optc compare`.
pub fn run(args: CompareArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let comparison = execute(&args)?;
    super::print_out(&table::render(&comparison))?;
    write_outputs(&comparison, &args.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Everything but the printing and the files: check the arguments, load the rules, run.
pub fn execute(args: &CompareArgs) -> Result<Comparison, CompareError> {
    let task = task::by_name(&args.task)?;
    let steps = args.steps.unwrap_or_else(|| task.default_steps());
    if steps == 0 {
        return Err(CompareError::Usage("--steps must be at least 1".into()));
    }
    if args.seeds == 0 {
        return Err(CompareError::Usage("--seeds must be at least 1".into()));
    }
    let precision = args
        .precision
        .precision()
        .map_err(|message| CompareError::Rule {
            rule: args.rules.join(" "),
            message,
        })?;
    let mut contenders = load_contenders(&args.rules, args.backend, precision)?;
    for arg in &args.set {
        apply_set(&mut contenders, arg)?;
    }
    for arg in &args.rule_state_dtype {
        apply_state_dtype(&mut contenders, arg)?;
    }
    if let Some(scale) = args.loss_scale.loss_scale {
        for c in contenders.iter_mut().filter(|c| c.scales_loss()) {
            c.set_loss_scale(scale)?;
        }
    }
    let contenders = crate::compare::schedule::attach(contenders, &args.schedule)?;

    let total = contenders.len() as u64 * args.seeds * steps as u64;
    let mut bar = Bar::new(total);
    let result = crate::compare::compare(&*task, &contenders, steps, args.seeds, &mut bar);
    bar.0.finish_and_clear();
    result
}

/// Load every rule argument and give each a distinct label.
pub fn load_contenders(
    args: &[String],
    backend: Backend,
    precision: optc_kernel::Precision,
) -> Result<Vec<Box<dyn Contender>>, CompareError> {
    let color = super::color_stderr();
    let mut out: Vec<Box<dyn Contender>> = Vec::with_capacity(args.len());
    for arg in args {
        let mut labels = out.iter().map(|c| c.label().to_string());
        if let Some(name) = arg.strip_prefix("reference:") {
            let kind = ReferenceKind::from_name(name).ok_or_else(|| CompareError::Rule {
                rule: arg.clone(),
                message: format!(
                    "no reference optimizer `{name}`{}; the references are: {}",
                    did_you_mean(name, ReferenceKind::NAMES)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default(),
                    ReferenceKind::NAMES.join(", ")
                ),
            })?;
            let label = unique(&format!("ref-{name}"), &mut labels);
            out.push(Box::new(Reference::new(kind, label)));
        } else {
            let mut c = RuleContender::load(arg, backend, color)?;
            c.set_precision(precision);
            let label = unique(c.label(), &mut labels);
            c.set_label(label);
            out.push(Box::new(c));
        }
    }
    Ok(out)
}

/// Applies one `--rule-state-dtype LABEL:DTYPE` to the contender labelled LABEL.
pub fn apply_state_dtype(
    contenders: &mut [Box<dyn Contender>],
    arg: &str,
) -> Result<(), CompareError> {
    let usage = |why: String| {
        CompareError::Usage(format!(
            "`--rule-state-dtype {arg}`: {why} (expected RULE:DTYPE with DTYPE f32, bf16 or \
             int8, e.g. `adamw#2:int8`)"
        ))
    };
    let (label, name) = arg.rsplit_once(':').ok_or_else(|| usage("no `:`".into()))?;
    let dtype = optc_kernel::Dtype::from_name(name.trim())
        .ok_or_else(|| usage(format!("`{name}` is not a state dtype")))?;
    let labels: Vec<String> = contenders.iter().map(|c| c.label().to_string()).collect();
    let c = contenders
        .iter_mut()
        .find(|c| c.label() == label)
        .ok_or_else(|| {
            usage(format!(
                "no rule labelled `{label}`{}; the rules are: {}",
                did_you_mean(label, labels.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default(),
                labels.join(", ")
            ))
        })?;
    c.set_state_dtype(dtype)
}

/// `base`, or `base#2`, `base#3`, ... if taken.
fn unique(base: &str, taken: &mut dyn Iterator<Item = String>) -> String {
    let taken: Vec<String> = taken.collect();
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}#{i}"))
        .find(|l| !taken.contains(l))
        .unwrap_or_else(|| base.to_string())
}

/// Apply one `--set` argument.
pub fn apply_set(contenders: &mut [Box<dyn Contender>], arg: &str) -> Result<(), CompareError> {
    let bad = |why: &str| CompareError::BadSet {
        arg: arg.to_string(),
        why: why.to_string(),
    };
    let (lhs, value) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
    if value.trim().is_empty() {
        return Err(bad("no value after `=`"));
    }
    match lhs.rsplit_once(':') {
        Some((label, name)) => {
            let name = name.trim();
            if name.is_empty() {
                return Err(bad("no name between `:` and `=`"));
            }
            let labels: Vec<String> = contenders.iter().map(|c| c.label().to_string()).collect();
            let c = contenders
                .iter_mut()
                .find(|c| c.label() == label)
                .ok_or_else(|| CompareError::UnknownRule {
                    arg: arg.to_string(),
                    label: label.to_string(),
                    suggestion: did_you_mean(label, labels.iter().map(String::as_str)),
                    known: labels.clone(),
                })?;
            apply_setting(c.as_mut(), name, value)
        }
        None => {
            let name = lhs.trim();
            if name.is_empty() {
                return Err(bad("no name before `=`"));
            }
            let declares = |c: &dyn Contender| {
                c.hypers().iter().any(|(n, _)| n == name)
                    || c.flags().iter().any(|(n, _)| n == name)
                    || c.counts().iter().any(|(n, _)| n == name)
                    || (name == crate::compare::stepper::MAX_GRAD_NORM && c.clips())
            };
            let mut applied = false;
            for c in contenders.iter_mut() {
                if declares(c.as_ref()) {
                    apply_setting(c.as_mut(), name, value)?;
                    applied = true;
                }
            }
            if applied {
                return Ok(());
            }
            // Report against the first rule, with its nearest name.
            match contenders.first() {
                Some(c) => Err(crate::compare::stepper::unknown_setting(c.as_ref(), name)),
                None => Err(bad("there are no rules")),
            }
        }
    }
}

/// Losses and evaluations kept per run in `results.json` (evenly strided beyond that).
pub const JSON_POINTS: usize = 1000;

/// Write `curves.png` and `results.json` into `dir`, saying where on stderr.
pub fn write_outputs(c: &Comparison, dir: &std::path::Path) -> Result<(), CompareError> {
    let output = |path: &std::path::Path, e: &dyn std::fmt::Display| CompareError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| output(dir, &e))?;
    let json_path = dir.join("results.json");
    let json =
        serde_json::to_string(&c.thinned(JSON_POINTS)).map_err(|e| output(&json_path, &e))?;
    optc_runtime::atomic::write_atomic(&json_path, json.as_bytes())
        .map_err(|e| output(&json_path, &e))?;
    let png_path = dir.join("curves.png");
    match plot::write_curves(c, &png_path)? {
        plot::PlotNote::Complete => {}
        plot::PlotNote::NoText { reason, legend } => {
            let legend: Vec<String> = legend.iter().map(|(l, c)| format!("{l} = {c}")).collect();
            eprintln!(
                "warning: no font for the plot's text ({reason}); {} has no labels. Colours: {}",
                png_path.display(),
                legend.join(", ")
            );
        }
    }
    eprintln!("wrote {} and {}", png_path.display(), json_path.display());
    Ok(())
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new(total: u64) -> Bar {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:24} [{bar:30}] {percent:>3}% ({eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl Progress for Bar {
    fn run_started(&mut self, label: &str, seed: u64) {
        self.0.set_message(format!("{label} seed {seed}"));
    }
    fn stepped(&mut self) {
        self.0.inc(1);
    }
}
