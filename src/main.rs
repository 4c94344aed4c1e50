//! The `optc` command-line tool.

use clap::Parser;
use optc::cli::source::LoadError;
use optc::compiler::CompileError;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = optc::cli::Cli::parse();
    match optc::cli::run(cli) {
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
