//! The `optc` command line: one module per verb.

pub mod bench;
pub mod check;
pub mod compare;
pub mod compile;
pub mod compile_time;
mod cuda;
pub mod list;
pub mod loss_scale;
pub mod precision;
pub mod run;
pub mod source;
pub mod tune;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// optc: compile optimizer update rules (.opt) into fused CPU and CUDA kernels.
#[derive(Parser, Debug)]
#[command(name = "optc", version, about, long_about = None)]
pub struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and check rule files; print diagnostics; exit 1 if any has errors.
    Check(check::CheckArgs),
    /// Train rules on a built-in task over seeds; print a table, write curves.png and results.json.
    Compare(compare::CompareArgs),
    /// Compile a rule and print or write its IR, CLIF, PTX or CUDA artifact.
    Compile(compile::CompileArgs),
    /// List the stdlib rules with their hypers, defaults and flags.
    List(list::ListArgs),
    /// Step parameters from a safetensors file with recorded gradients; write params and state.
    Run(run::RunArgs),
    /// Time a rule's step on the CPU against a bandwidth probe measured in the same run.
    Bench(bench::BenchArgs),
    /// Search a rule's hypers on a built-in task with successive halving; print a leaderboard.
    Tune(tune::TuneArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Check(a) => check::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Compare(a) => compare::run(a),
        Command::List(a) => list::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tune(a) => tune::run(a),
    }
}

/// Whether stderr is a terminal (for coloured diagnostics).
pub fn color_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Writes `text` to standard output. A closed pipe (as in `optc list | head`) ends the output
/// quietly instead of failing.
pub fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
