//! `optc list`

use clap::Args;
use optc_compiler::stdlib;
use optc_kernel::kernel::fmt_num;
use std::process::ExitCode;

/// Arguments of `optc list`.
#[derive(Args, Debug)]
pub struct ListArgs {}

/// Prints each stdlib rule with its reference, hypers and defaults, flags, integer flags and
/// states.
pub fn run(_args: ListArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for name in stdlib::names() {
        let rule = match stdlib::rule(name) {
            Some(Ok(r)) => r,
            Some(Err(d)) => return Err(Box::new(d)),
            None => continue,
        };
        writeln!(out, "{name}")?;
        for line in rule.doc().lines() {
            writeln!(out, "    {line}")?;
        }
        let hypers: Vec<String> = rule
            .hypers()
            .iter()
            .map(|h| format!("{}={}", h.name, fmt_num(h.default)))
            .collect();
        writeln!(out, "  hypers: {}", hypers.join(", "))?;
        if !rule.flags().is_empty() {
            let flags: Vec<String> = rule
                .flags()
                .iter()
                .map(|f| format!("{}={}", f.name, f.default))
                .collect();
            writeln!(out, "  flags:  {}", flags.join(", "))?;
        }
        if !rule.counts().is_empty() {
            let counts: Vec<String> = rule
                .counts()
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            writeln!(out, "  counts: {} (integer flags)", counts.join(", "))?;
        }
        let states: Vec<String> = rule
            .program()
            .states
            .iter()
            .map(|s| s.name.clone())
            .chain(
                rule.program()
                    .scalars
                    .iter()
                    .map(|s| format!("{} (scalar)", s.name)),
            )
            .collect();
        writeln!(out, "  states: {}", states.join(", "))?;
        writeln!(out)?;
    }
    super::print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}
