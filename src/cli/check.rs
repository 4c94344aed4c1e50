//! `optc check FILE...`

use clap::Args;
use optc_compiler::Rule;
use std::process::ExitCode;

/// Arguments of `optc check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Rule files to check.
    #[arg(required = true)]
    pub files: Vec<String>,
}

/// Checks every file; prints diagnostics on stderr; exit code 1 if any file has an error.
pub fn run(args: CheckArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let color = super::color_stderr();
    let mut failed = false;
    for f in &args.files {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read `{f}`: {e}");
                failed = true;
                continue;
            }
        };
        match Rule::parse_bytes(f, &bytes) {
            Ok(rule) => {
                if !rule.warnings().is_empty() {
                    eprint!("{}", rule.warnings().render(color));
                }
            }
            Err(d) => {
                eprint!("{}", d.render(color));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
