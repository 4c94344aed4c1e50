//! `optc compile RULE [--target cpu|cuda] [--emit ir|clif|ptx|artifact] [--set flag=v]...
//! [--clip] [--rank matrix|vector] [-o OUT]`

use super::source::{apply_counts, load_rule, split_sets, take_max_grad_norm};
use clap::{Args, ValueEnum};
use std::process::ExitCode;

/// Where the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The CPU, through the Cranelift JIT.
    Cpu,
    /// CUDA, through PTX.
    Cuda,
}

/// What to print or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The optimized kernel IR and the host scalar program, as text.
    Ir,
    /// Cranelift IR (CPU).
    Clif,
    /// PTX text (CUDA).
    Ptx,
    /// The loadable artifact (JSON): the default for `--target cuda`.
    Artifact,
}

/// The rank class to compile a rule that reads `matrix` for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rank {
    /// Tensors with 2 or more dims.
    Matrix,
    /// Tensors with 0 or 1 dim.
    Vector,
}

/// Arguments of `optc compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// A `.opt` file, or a stdlib rule's name.
    pub rule: String,
    /// The target.
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    pub target: Target,
    /// What to produce (default: `ir` for cpu, `artifact` for cuda).
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Clip the gradients by their global norm (adds the hyper `max_grad_norm`, default 1).
    #[arg(long)]
    pub clip: bool,
    /// Compile in loss scaling: every gradient is divided by the hyper `loss_scale` (default 1)
    /// and a step whose gradients hold an inf or a NaN is skipped (docs/loss_scaling.md).
    #[arg(long)]
    pub loss_scale: bool,
    /// The rank class, for rules that read `matrix` (such as `lars`).
    #[arg(long, value_enum)]
    pub rank: Option<Rank>,
    /// Flag values, as `--set amsgrad=true` (hypers are runtime values and are not compiled in);
    /// `--set max_grad_norm=V` compiles in clipping by global norm (threshold V by default).
    #[arg(long = "set", value_name = "FLAG=VALUE")]
    pub sets: Vec<String>,
    /// PTX `.version` (cuda).
    #[arg(long, default_value = "8.0")]
    pub ptx_version: String,
    /// PTX `.target` (cuda).
    #[arg(long, default_value = "sm_80")]
    pub sm: String,
    /// Use approximate division, square root and exp/log on CUDA.
    #[arg(long)]
    pub fast_math: bool,
    /// Write here instead of standard output.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
}

/// Compiles and prints or writes the requested form.
pub fn run(args: CompileArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (rule, sets) = apply_counts(load_rule(&args.rule)?, &args.sets)?;
    let (flags, mut hypers) = split_sets(&rule, &sets)?;
    let max_grad_norm = take_max_grad_norm(&rule, &mut hypers);
    if let Some((name, _)) = hypers.first() {
        return Err(format!(
            "`--set {name}=...`: `{name}` is a hyper, a runtime value; `compile` takes flags only (hypers are set with `optc run --set` or the runtime API)"
        )
        .into());
    }
    let overrides: Vec<(&str, bool)> = flags.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let rank = match (args.rank, rule.uses_rank()) {
        (Some(Rank::Matrix), _) => optc_compiler::RankClass::Matrix,
        (Some(Rank::Vector), _) => optc_compiler::RankClass::Vector,
        (None, false) => optc_compiler::RankClass::Any,
        (None, true) => {
            return Err(format!(
                "rule `{}` reads `matrix`, so it has one kernel per rank class: pass `--rank matrix` or `--rank vector`",
                rule.name()
            )
            .into())
        }
    };
    let options = optc_compiler::CompileOptions {
        clip: args.clip || max_grad_norm.is_some(),
        loss_scale: args.loss_scale,
        rank,
    };
    let mut kernel = rule.specialize_with(&overrides, &options)?;
    let values = rule.flag_values(&overrides)?;
    let conditions = rule.conditions(&values, &options)?;
    let mut variants = Vec::new();
    if !conditions.is_empty() {
        for v in conditions.variants() {
            variants.push(rule.specialize_variant(&values, &options, v)?);
        }
    }
    // The threshold given with `--set max_grad_norm=V` becomes the hyper's default.
    if let Some(v) = max_grad_norm {
        for k in std::iter::once(&mut kernel).chain(variants.iter_mut()) {
            for h in k.hypers.iter_mut().filter(|h| h.name == "max_grad_norm") {
                h.default = v;
            }
        }
    }
    let emit = args.emit.unwrap_or(match args.target {
        Target::Cpu => Emit::Ir,
        Target::Cuda => Emit::Artifact,
    });
    let text = match (emit, args.target) {
        // A rule with conditions on hypers: the variants table, then each variant the runtime
        // may run (the kernel with the selects only describes the flag set).
        (Emit::Ir, _) if !variants.is_empty() => {
            let mut text = optc_kernel::variant::listing(&conditions, &variants);
            for k in &variants {
                text.push('\n');
                text.push_str(&k.to_string());
            }
            text
        }
        (Emit::Ir, _) => kernel.to_string(),
        (Emit::Clif, Target::Cpu) if !variants.is_empty() => {
            let mut text = String::new();
            for k in &variants {
                text.push_str(&format!("; {}\n", k.to_string().lines().next().unwrap_or("")));
                text.push_str(&emit_clif(k)?);
            }
            text
        }
        (Emit::Clif, Target::Cpu) => emit_clif(&kernel)?,
        (Emit::Ptx, Target::Cuda) | (Emit::Artifact, Target::Cuda) => {
            let opts = optc_compiler::backend::ptx::Options {
                version: args.ptx_version.clone(),
                target: args.sm.clone(),
                fast_math: args.fast_math,
            };
            let emit_one = |k: &optc_kernel::Kernel| {
                optc_compiler::backend::ptx::emit(k, &opts).map_err(|e| format!("{e}"))
            };
            let module = emit_one(&kernel)?;
            let mut entries = Vec::with_capacity(variants.len());
            for k in variants {
                let ptx = emit_one(&k)?;
                entries.push(optc_kernel::artifact::ArtifactVariant {
                    kernel: k,
                    ptx: Some(ptx),
                });
            }
            if emit == Emit::Ptx {
                // One module per kernel: the variants the runtime picks from, else the one.
                if entries.is_empty() {
                    module.source
                } else {
                    // Each module after a comment line naming its variant (`--emit artifact`
                    // holds them apart, as data).
                    entries
                        .iter()
                        .filter_map(|e| {
                            let head = e.kernel.to_string();
                            let head = head.lines().next().unwrap_or("");
                            e.ptx.as_ref().map(|p| format!("// {head}\n{}", p.source))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            } else {
                optc_kernel::Artifact::new(kernel, Some(module))
                    .with_variants(conditions, entries)
                    .to_json()?
            }
        }
        (e, t) => {
            return Err(format!("`--emit {e:?}` is not available for `--target {t:?}` (clif is cpu-only; ptx and artifact are cuda-only)").to_lowercase().into())
        }
    };
    match &args.output {
        Some(path) => optc_runtime::atomic::write_atomic(path, text.as_bytes())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?,
        None => super::print_out(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn emit_clif(kernel: &optc_kernel::Kernel) -> Result<String, Box<dyn std::error::Error>> {
    let opts = optc_compiler::backend::clif::Options::default();
    optc_compiler::backend::clif::emit_text(kernel, &opts).map_err(|e| format!("{e}").into())
}
