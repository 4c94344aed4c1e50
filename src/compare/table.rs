//! The text table `optc compare` prints: one row per contender, each cell mean ± sample standard
//! deviation over seeds.

use crate::compare::summary::{Spread, Summary};
use crate::compare::Comparison;

fn pm(s: &Spread, fmt: impl Fn(f64) -> String) -> String {
    if s.n > 1 {
        format!("{} ± {}", fmt(s.mean), fmt(s.std))
    } else {
        fmt(s.mean)
    }
}

fn steps_cell(s: &Summary) -> String {
    match &s.steps_to_target {
        None => "not reached".to_string(),
        Some(sp) => {
            let cell = pm(sp, |x| format!("{x:.0}"));
            if s.reached < s.runs {
                format!("{cell} ({}/{} seeds)", s.reached, s.runs)
            } else {
                cell
            }
        }
    }
}

fn loss_cell(s: &Summary) -> String {
    let cell = s
        .final_loss
        .as_ref()
        .map_or_else(|| "-".to_string(), |sp| pm(sp, |x| format!("{x:.3e}")));
    if s.diverged > 0 {
        format!("{cell} ({}/{} diverged)", s.diverged, s.runs)
    } else {
        cell
    }
}

/// Render the table (with a header naming the task, target and spread convention).
pub fn render(c: &Comparison) -> String {
    let has_acc = c.entries.iter().any(|e| e.summary.test_accuracy.is_some());
    let mut header = vec![
        "rule".to_string(),
        "steps to target".to_string(),
        "final train loss".to_string(),
    ];
    if has_acc {
        header.push("test acc %".to_string());
    }
    header.extend(["opt µs/step".to_string(), "state B/param".to_string()]);

    let rows: Vec<Vec<String>> = c
        .entries
        .iter()
        .map(|e| {
            let s = &e.summary;
            let mut row = vec![e.label.clone(), steps_cell(s), loss_cell(s)];
            if has_acc {
                row.push(s.test_accuracy.as_ref().map_or_else(
                    || "-".to_string(),
                    |sp| pm(sp, |x| format!("{:.1}", x * 100.0)),
                ));
            }
            row.push(
                s.micros_per_step
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |sp| pm(sp, |x| format!("{x:.2}"))),
            );
            row.push(format!("{:.2}", s.state_bytes_per_param));
            row
        })
        .collect();

    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                let pad = w - cell.chars().count();
                if i == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };

    let mut out = format!(
        "task {}: {}\n{} steps, {} seed{}, target: {} (checked every {} step{}); \
         cells are mean ± sample std over seeds\n\n",
        c.task,
        c.description,
        c.steps,
        c.seeds.len(),
        if c.seeds.len() == 1 { "" } else { "s" },
        c.target,
        c.eval_every,
        if c.eval_every == 1 { "" } else { "s" },
    );
    out.push_str(&line(&header));
    out.push_str(&line(
        &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>(),
    ));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}
