//! `optc tune RULE --task T --space NAME=log:LO:HI ...`: search a rule's hypers with successive
//! halving (or random search) on a built-in task.
//!
//! Prints the leaderboard and the best setting as `--set` arguments for `optc compare` and
//! `optc run`, and writes `results.json` and `search.png` to `--out`, each atomically. Every
//! problem with the arguments is a [`CompareError`] with a complete message.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::compare::tune::{self, Strategy, TuneConfig, TuneResult};
use crate::compare::tune_space::Dimension;
use crate::compare::{
    apply_setting, task, Backend, CompareError, Contender, HyperValue, RuleContender,
};

/// Arguments of `optc tune`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    optc tune adamw --task digits-mlp --space 'lr=log:1e-4:1e-1' --trials 27\n  \
    optc tune sgd --space 'lr=log:1e-3:1' --space 'momentum=lin:0:0.99' --set momentum=0.5\n  \
    optc tune adamw --space 'lr=log:1e-4:1e-1' --schedule 'lr=cosine(warmup=50, total=1000)'\n\n\
    Successive halving: rung 0 runs every setting for steps/eta^(k-1) steps, each later rung \
    the best 1/eta for eta times longer, the last for --steps. See docs/tune.md.")]
pub struct TuneArgs {
    /// The rule: a `.opt` file or a stdlib name.
    #[arg(value_name = "RULE")]
    pub rule: String,
    /// The task: digits-mlp, rosenbrock or quadratic.
    #[arg(long, default_value = "digits-mlp")]
    pub task: String,
    /// A hyper to search: `NAME=log:LO:HI` (log-uniform) or `NAME=lin:LO:HI`. Repeatable.
    #[arg(long = "space", value_name = "NAME=log:LO:HI", required = true)]
    pub space: Vec<String>,
    /// Settings to sample.
    #[arg(long, default_value_t = 27)]
    pub trials: usize,
    /// Seeds per run (0..K); a setting's score is its mean over them.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Steps of the longest runs [default: the task's: digits-mlp 1000, rosenbrock 20000,
    /// quadratic 15000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// The halving factor: each rung keeps the best 1/eta for eta times more steps.
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
    /// The seed of the sampler; the same seed gives the same search.
    #[arg(long, default_value_t = 0)]
    pub search_seed: u64,
    /// `halving` (successive halving) or `random` (every setting for --steps).
    #[arg(long, value_enum, default_value_t = Strategy::Halving)]
    pub strategy: Strategy,
    /// Set a hyper or flag that is not searched: `NAME=VALUE`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Make a hyper follow a schedule in every run, e.g. `lr=cosine(total=1000)`; a searched
    /// hyper is the schedule's base value. Repeatable.
    #[arg(long = "schedule", value_name = "NAME=SPEC")]
    pub schedule: Vec<String>,
    /// What runs the rule: `cpu` (the JIT) or `interp` (the reference interpreter, slow).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Rows of the leaderboard to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Directory for `results.json` and `search.png` (created if missing).
    #[arg(long, default_value = "optc-tune")]
    pub out: PathBuf,
}

/// Runs `optc tune`.
pub fn run(args: TuneArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let result = execute(&args)?;
    super::print_out(&render(&result, args.top))?;
    write_outputs(&result, &args.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Everything but the printing and the files: check the arguments, load the rule, search.
pub fn execute(args: &TuneArgs) -> Result<TuneResult, CompareError> {
    let task = task::by_name(&args.task)?;
    let steps = args.steps.unwrap_or_else(|| task.default_steps());
    let mut base = RuleContender::load(&args.rule, args.backend, super::color_stderr())?;
    for arg in &args.set {
        let (name, value) = arg.split_once('=').ok_or_else(|| CompareError::BadSet {
            arg: arg.clone(),
            why: "no `=`".into(),
        })?;
        apply_setting(&mut base, name.trim(), value)?;
    }
    let mut space: Vec<Dimension> = Vec::with_capacity(args.space.len());
    for arg in &args.space {
        let d = Dimension::parse(arg)?;
        if !base.hypers().iter().any(|(n, _)| *n == d.name) {
            return Err(crate::compare::stepper::unknown_setting(&base, &d.name));
        }
        if space.iter().any(|s| s.name == d.name) {
            return Err(CompareError::Usage(format!(
                "`--space {}=...` is given twice",
                d.name
            )));
        }
        space.push(d);
    }
    // Check the schedules once, before any run.
    crate::compare::schedule::attach(vec![Box::new(base.clone())], &args.schedule)?;
    let config = TuneConfig {
        trials: args.trials,
        seeds: args.seeds,
        steps,
        eta: args.eta,
        search_seed: args.search_seed,
        strategy: args.strategy,
    };
    let make = |setting: &[HyperValue]| -> Result<Box<dyn Contender>, CompareError> {
        let mut c = base.clone();
        for h in setting {
            c.set_hyper(&h.name, h.value)?;
        }
        let mut v = crate::compare::schedule::attach(vec![Box::new(c)], &args.schedule)?;
        v.pop()
            .ok_or_else(|| CompareError::Internal("no contender".into()))
    };
    tune::tune(&*task, &make, &space, &config)
}

/// The leaderboard and the best setting, as printed.
pub fn render(r: &TuneResult, top: usize) -> String {
    let c = &r.config;
    let strategy = match c.strategy {
        Strategy::Halving => format!("successive halving (eta {})", c.eta),
        Strategy::Random => "random search".to_string(),
    };
    let rungs: Vec<String> = r.rung_steps.iter().map(usize::to_string).collect();
    let mut out = format!(
        "tune {} on {}: {strategy}, {} trials, rungs of {} steps, {} seed(s) per run; {} optimizer steps in all\ntarget: {}\n\n",
        r.rule,
        r.task,
        c.trials,
        rungs.join("/"),
        c.seeds,
        r.budget,
        r.target
    );
    let mut header = vec!["rank".to_string(), "trial".to_string()];
    header.extend(r.space.iter().map(|d| d.name.clone()));
    header.extend(
        ["steps", "steps to target", "final train loss", "test acc %"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut rows = vec![header];
    for (rank, &id) in r.leaderboard.iter().take(top.max(1)).enumerate() {
        let t = &r.trials[id];
        let mut row = vec![format!("{}", rank + 1), format!("#{id}")];
        row.extend(t.setting.iter().map(|h| format!("{:.3e}", h.value)));
        match t.last() {
            Some(g) => {
                row.push(g.steps.to_string());
                row.push(match g.steps_to_target {
                    Some(s) if g.reached as u64 == c.seeds => format!("{s:.0}"),
                    Some(s) => format!("{s:.0} ({}/{} seeds)", g.reached, c.seeds),
                    None => "not reached".into(),
                });
                row.push(if g.loss.is_finite() {
                    format!("{:.3e}", g.loss)
                } else {
                    format!("diverged ({}/{})", g.diverged, c.seeds)
                });
                row.push(
                    g.test_accuracy
                        .map_or("-".into(), |a| format!("{:.1}", a * 100.0)),
                );
            }
            None => row.extend(["-".into(), "-".into(), "-".into(), "-".into()]),
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(best) = r.best() {
        out.push('\n');
        out.push_str(&best_line(r, best));
    }
    out
}

/// The best setting as arguments of `optc compare` and `optc run`.
fn best_line(r: &TuneResult, best: &tune::Trial) -> String {
    let sets = |prefix: &str| -> String {
        best.setting
            .iter()
            .map(|h| format!("--set {prefix}{}={}", h.name, h.value))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "best: trial #{}\n  optc compare {} --task {} {}\n  optc run {} {} ...\n",
        best.id,
        r.source.strip_prefix("stdlib:").unwrap_or(&r.source),
        r.task,
        sets(&format!("{}:", r.rule)),
        r.source.strip_prefix("stdlib:").unwrap_or(&r.source),
        sets("")
    )
}

/// Writes `results.json` (a diverged run's infinite loss as `null`) and `search.png` into `dir`,
/// each atomically, saying where on stderr.
pub fn write_outputs(r: &TuneResult, dir: &std::path::Path) -> Result<(), CompareError> {
    let err = |path: &std::path::Path, e: &dyn std::fmt::Display| CompareError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    let json_path = dir.join("results.json");
    let json = serde_json::to_string_pretty(r).map_err(|e| err(&json_path, &e))?;
    optc_runtime::atomic::write_atomic(&json_path, json.as_bytes())
        .map_err(|e| err(&json_path, &e))?;
    let png_path = dir.join("search.png");
    let mut plotted = None;
    optc_runtime::atomic::replace_with(&png_path, |tmp| {
        match crate::compare::tune_plot::write_search(r, tmp) {
            Ok(note) => {
                plotted = Some(Ok(note));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                plotted = Some(Err(e));
                Err(std::io::Error::other(message))
            }
        }
    })
    .map_err(|e| match plotted.take() {
        Some(Err(plot_error)) => plot_error,
        _ => err(&png_path, &e),
    })?;
    let note = match plotted {
        Some(Ok(note)) => note,
        _ => return Err(err(&png_path, &"the plot was not written")),
    };
    if let crate::compare::plot::PlotNote::NoText { reason, legend } = note {
        let legend: Vec<String> = legend.iter().map(|(l, c)| format!("{l} = {c}")).collect();
        eprintln!(
            "warning: no font for the plot's text ({reason}); {} has no labels. Colours: {}",
            png_path.display(),
            legend.join(", ")
        );
    }
    eprintln!("wrote {} and {}", json_path.display(), png_path.display());
    Ok(())
}
