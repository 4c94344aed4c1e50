//! `search.png`: every trial of an `optc tune` search at every rung it ran, as its first searched
//! hyper (x; log scale for a log range) against its mean final training loss (y, log scale), one
//! colour per rung. Diverged runs sit on the top edge. Without a system font the chart is drawn
//! without text, as `curves.png` is (see [`crate::compare::plot`]).

use std::path::Path;

use plotters::prelude::*;

use crate::compare::plot::PlotNote;
use crate::compare::tune::TuneResult;
use crate::compare::tune_space::Scale;
use crate::compare::CompareError;

const COLORS: [(RGBColor, &str); 6] = [
    (RGBColor(160, 160, 160), "grey"),
    (RGBColor(31, 119, 180), "blue"),
    (RGBColor(44, 160, 44), "green"),
    (RGBColor(255, 127, 14), "orange"),
    (RGBColor(214, 39, 40), "red"),
    (RGBColor(148, 103, 189), "purple"),
];

/// Draws the search to `path` (PNG).
pub fn write_search(r: &TuneResult, path: &Path) -> Result<PlotNote, CompareError> {
    match draw(r, path, true) {
        Ok(()) => Ok(PlotNote::Complete),
        Err(with_text) => {
            draw(r, path, false).map_err(|e| CompareError::Output {
                path: path.to_path_buf(),
                message: format!("{e} (with text: {with_text})"),
            })?;
            let legend = r
                .rung_steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        format!("rung {i} ({s} steps)"),
                        COLORS[i % COLORS.len()].1.to_string(),
                    )
                })
                .collect();
            Ok(PlotNote::NoText {
                reason: with_text,
                legend,
            })
        }
    }
}

fn draw(r: &TuneResult, path: &Path, text: bool) -> Result<(), String> {
    let Some(dim) = r.space.first() else {
        return Err("no searched hyper".into());
    };
    let points: Vec<(usize, f64, f64)> = r
        .trials
        .iter()
        .flat_map(|t| {
            let x = t.setting.first().map_or(dim.lo, |h| h.value);
            t.rungs.iter().map(move |g| (g.rung, x, g.loss))
        })
        .collect();
    let finite: Vec<f64> = points
        .iter()
        .map(|p| p.2)
        .filter(|l| l.is_finite() && *l > 0.0)
        .collect();
    let (ymin, ymax) = match (
        finite.iter().copied().reduce(f64::min),
        finite.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) => (a / 1.5, b * 3.0),
        _ => (1e-3, 1.0),
    };
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(
            format!(
                "{} on {}: final training loss per trial and rung",
                r.rule, r.task
            ),
            ("sans-serif", 20),
        )
        .x_label_area_size(40)
        .y_label_area_size(70);
    }
    let y = |l: f64| {
        if l.is_finite() && l > 0.0 {
            l.clamp(ymin, ymax)
        } else {
            ymax
        }
    };
    let style = |rung: usize| COLORS[rung % COLORS.len()].0.filled();
    macro_rules! plot_with {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| e.to_string())?;
            let mut mesh = chart.configure_mesh();
            if text {
                mesh.x_desc(dim.name.as_str()).y_desc("final train loss");
            } else {
                mesh.disable_x_axis().disable_y_axis();
            }
            mesh.draw().map_err(|e| e.to_string())?;
            for (rung, steps) in r.rung_steps.iter().enumerate() {
                let series = points
                    .iter()
                    .filter(|p| p.0 == rung)
                    .map(|&(g, x, l)| Circle::new((x, y(l)), 4 + g as i32, style(g)));
                let drawn = chart.draw_series(series).map_err(|e| e.to_string())?;
                if text {
                    drawn
                        .label(format!("rung {rung}: {steps} steps"))
                        .legend(move |(px, py)| Circle::new((px, py), 4, style(rung)));
                }
            }
            if text {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 15))
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
        }};
    }
    match dim.scale {
        Scale::Log => {
            plot_with!(b.build_cartesian_2d((dim.lo..dim.hi).log_scale(), (ymin..ymax).log_scale()))
        }
        Scale::Lin => plot_with!(b.build_cartesian_2d(dim.lo..dim.hi, (ymin..ymax).log_scale())),
    }
    root.present().map_err(|e| e.to_string())
}
