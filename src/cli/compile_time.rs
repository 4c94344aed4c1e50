//! The time from `.opt` source to a runnable CPU kernel, phase by phase, for `optc bench`.
//!
//! Takes a rule's source text and the flag values, compile options and rank class of the kernel
//! being benchmarked. Runs the compiler's public phases one at a time, each on the previous
//! phase's output, and the whole path end to end (what a program that loads a rule pays:
//! [`Rule::parse`], then [`Rule::specialize_values_with`], then [`CpuKernel::compile`]); repeats
//! each several times and reports the medians in seconds as a [`CompileTime`]. The phases add up
//! to about the end-to-end time; each is timed on its own, so they need not sum exactly.

use optc_compiler::backend::clif;
use optc_compiler::{check, ir, syntax, CompileOptions, RankClass, Rule};
use optc_runtime::cpu::{CpuKernel, RowKernel};
use std::time::{Duration, Instant};

/// Repetitions: at least this many...
const MIN_REPS: usize = 5;
/// ...and more while the measurement has taken less than this much time in all...
const BUDGET: Duration = Duration::from_millis(300);
/// ...up to this many.
const MAX_REPS: usize = 50;

/// Medians, in seconds, of the time from source to a runnable CPU kernel and of its phases.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompileTime {
    /// End to end: parse and check the source (every flag set included), specialize the kernel,
    /// JIT-compile it.
    pub total_s: f64,
    /// Parsing the source to a syntax tree.
    pub parse_s: f64,
    /// Checking the tree and lowering it to the flag-generic IR.
    pub check_s: f64,
    /// Compiling every flag set (and rank class) once, as [`Rule::parse`] does to report errors
    /// in any of them up front.
    pub flag_sets_s: f64,
    /// Specializing the benchmarked kernel (the IR passes for its flags).
    pub specialize_s: f64,
    /// JIT-compiling it: lowering to Cranelift IR, Cranelift's code generation, mapping the code.
    pub jit_s: f64,
    /// Of `jit_s`, the lowering to Cranelift IR (and its verification).
    pub clif_s: f64,
    /// Repetitions behind each median.
    pub reps: usize,
}

/// Measures the compile time of the kernel for `flags`, `clip`, `loss_scale` and `rank` from
/// `source`, which already parsed as `file_name`.
pub fn measure(
    file_name: &str,
    source: &str,
    flags: &[bool],
    clip: bool,
    loss_scale: bool,
    rank: RankClass,
) -> Result<CompileTime, Box<dyn std::error::Error>> {
    let options = CompileOptions {
        clip,
        loss_scale,
        rank,
    };
    let start = Instant::now();
    let mut t: [Vec<Duration>; 7] = Default::default();
    let mut reps = 0;
    while reps < MIN_REPS || (reps < MAX_REPS && start.elapsed() < BUDGET) {
        // End to end, as a program that loads the rule pays it.
        let t0 = Instant::now();
        let rule = Rule::parse(file_name, source).map_err(|d| d.render(false))?;
        let kernel = rule.specialize_values_with(flags, &options)?;
        let cpu = jit(&kernel)?;
        t[0].push(t0.elapsed());

        // Phase by phase, each on the previous phase's output.
        let t0 = Instant::now();
        let file = syntax::parse(source).map_err(|d| d.message.clone())?;
        t[1].push(t0.elapsed());
        let t0 = Instant::now();
        let found = check::check(&file);
        let program = ir::lower::lower(&file, &check::decl_table(&file));
        t[2].push(t0.elapsed());
        drop((found, program));
        let t0 = Instant::now();
        let ranks: &[RankClass] = if rule.uses_rank() {
            &[RankClass::Matrix, RankClass::Vector]
        } else {
            &[RankClass::Any]
        };
        for set in rule.flag_sets() {
            for &rank in ranks {
                let every = CompileOptions {
                    clip: false,
                    rank,
                    ..Default::default()
                };
                rule.specialize_values_with(&set, &every)?;
            }
        }
        t[3].push(t0.elapsed());
        let t0 = Instant::now();
        let kernel = rule.specialize_values_with(flags, &options)?;
        t[4].push(t0.elapsed());
        let t0 = Instant::now();
        jit(&kernel)?;
        t[5].push(t0.elapsed());
        let t0 = Instant::now();
        let opts = clif::Options {
            fma: cpu,
            ..clif::Options::default()
        };
        if kernel.is_factored() {
            clif::emit(&clif::rows::row_form(&kernel)?.kernel, &opts)?;
        } else {
            clif::emit(&kernel, &opts)?;
        }
        t[6].push(t0.elapsed());
        reps += 1;
    }
    let [total, parse, check, sets, spec, jit, lower] = t.map(|mut v| super::bench::median(&mut v));
    Ok(CompileTime {
        total_s: total,
        parse_s: parse,
        check_s: check,
        flag_sets_s: sets,
        specialize_s: spec,
        jit_s: jit,
        clif_s: lower,
        reps,
    })
}

/// JIT-compiles `kernel` as the CPU target does (a factored kernel through its row form);
/// returns whether the code fuses multiply-adds.
fn jit(kernel: &optc_kernel::Kernel) -> Result<bool, optc_runtime::cpu::CpuError> {
    Ok(if kernel.is_factored() {
        RowKernel::compile(kernel, true)?.uses_fma()
    } else {
        CpuKernel::compile(kernel)?.uses_fma()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_of_adamw_is_timed() {
        let source = optc_compiler::stdlib::source("adamw").expect("adamw is in the stdlib");
        let c = measure(
            "adamw.opt",
            source,
            &[false, false],
            false,
            false,
            RankClass::Any,
        )
        .expect("adamw compiles");
        assert!(c.reps >= MIN_REPS);
        for (name, s) in [
            ("total", c.total_s),
            ("parse", c.parse_s),
            ("check", c.check_s),
            ("flag sets", c.flag_sets_s),
            ("specialize", c.specialize_s),
            ("jit", c.jit_s),
            ("clif", c.clif_s),
        ] {
            assert!(s > 0.0 && s < 10.0, "{name}: {s} s");
        }
    }

    #[test]
    fn a_rank_class_rule_needs_a_rank_class() {
        let source = optc_compiler::stdlib::source("lars").expect("lars is in the stdlib");
        let rule = Rule::parse("lars.opt", source).expect("lars parses");
        let flags = rule.flag_values(&[]).expect("default flags");
        // lars reads `matrix`: there is no kernel for `Any` tensors, so nothing is timed.
        assert!(measure("lars.opt", source, &flags, false, false, RankClass::Any).is_err());
        assert!(measure("lars.opt", source, &flags, false, false, RankClass::Matrix).is_ok());
    }
}
