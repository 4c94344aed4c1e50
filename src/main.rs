//! The `optc` command-line tool.

mod cli;
mod compare;

use clap::Parser as _;
use cli::source::LoadError;
use optc_compiler::CompileError;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` are not errors; every bad argument exits with 1.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Rendered diagnostics carry their own `error[E....]:` headers.
            let rendered = matches!(
                e.downcast_ref::<LoadError>(),
                Some(LoadError::Diagnostics(_))
            ) || matches!(
                e.downcast_ref::<CompileError>(),
                Some(CompileError::Diagnostics(_))
            );
            if rendered {
                eprintln!("{}", e.to_string().trim_end());
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(1)
        }
    }
}
