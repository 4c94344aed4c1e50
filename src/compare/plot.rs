//! `curves.png`: the mean evaluated training loss over seeds per contender (log scale), with a
//! shaded min–max band across seeds, and for tasks with a test split a second panel of test
//! accuracy.
//!
//! Text (axis labels, legend) needs a system font through plotters' `ttf` feature. Where none can
//! be loaded the chart is drawn again without any text, and [`write_curves`] says so and gives the
//! colour of each contender, so the file is still written and still readable next to the table.

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::compare::{CompareError, Comparison, Entry};

/// Colours for the contenders, in order, with names for the no-font fallback.
const COLORS: [(RGBColor, &str); 8] = [
    (RGBColor(31, 119, 180), "blue"),
    (RGBColor(214, 39, 40), "red"),
    (RGBColor(44, 160, 44), "green"),
    (RGBColor(255, 127, 14), "orange"),
    (RGBColor(148, 103, 189), "purple"),
    (RGBColor(140, 86, 75), "brown"),
    (RGBColor(0, 0, 0), "black"),
    (RGBColor(227, 119, 194), "pink"),
];

/// Per evaluated step: (step, mean, min, max) over seeds, while every seed has a finite value.
type Band = Vec<(f64, f64, f64, f64)>;

fn band(entry: &Entry, value: impl Fn(&crate::compare::Eval) -> Option<f64>) -> Band {
    let Some(first) = entry.runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, point) in first.evals.iter().enumerate() {
        let vals: Option<Vec<f64>> = entry
            .runs
            .iter()
            .map(|r| {
                r.evals
                    .get(i)
                    .filter(|p| p.step == point.step)
                    .and_then(|p| value(&p.eval))
                    .filter(|v| v.is_finite())
            })
            .collect();
        let Some(vals) = vals else { break };
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push((point.step as f64, mean, lo, hi));
    }
    out
}

/// What the caller should tell the user after writing the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlotNote {
    /// Drawn with labels and legend.
    Complete,
    /// Drawn without text because no font could be loaded: the reason and `label = colour` pairs.
    NoText {
        /// Why text could not be drawn.
        reason: String,
        /// The colour of each contender.
        legend: Vec<(String, String)>,
    },
}

/// Draw `comparison` to `path` (PNG, 1000 pixels wide), atomically (`optc_runtime::atomic`).
pub fn write_curves(comparison: &Comparison, path: &Path) -> Result<PlotNote, CompareError> {
    let mut note = PlotNote::Complete;
    optc_runtime::atomic::replace_with(path, |tmp| match draw(comparison, tmp, true) {
        Ok(()) => Ok(()),
        Err(with_text) => {
            draw(comparison, tmp, false)
                .map_err(|e| std::io::Error::other(format!("{e} (with text: {with_text})")))?;
            let legend = comparison
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.label.clone(), COLORS[i % COLORS.len()].1.to_string()))
                .collect();
            note = PlotNote::NoText {
                reason: with_text,
                legend,
            };
            Ok(())
        }
    })
    .map_err(|e| CompareError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(note)
}

fn draw(c: &Comparison, path: &Path, text: bool) -> Result<(), String> {
    let losses: Vec<Band> = c
        .entries
        .iter()
        .map(|e| band(e, |v| Some(v.loss)))
        .collect();
    let accs: Vec<Band> = c
        .entries
        .iter()
        .map(|e| band(e, |v| v.test_accuracy))
        .collect();
    let has_acc = accs.iter().any(|b| !b.is_empty());

    let height = if has_acc { 900 } else { 560 };
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = if has_acc {
        root.split_vertically(500)
    } else {
        (root.clone(), root.margin(0, 0, 0, 0).shrink((0, 0), (0, 0)))
    };

    // Loss panel, log scale over the positive values shown.
    let positive = losses
        .iter()
        .flatten()
        .flat_map(|&(_, m, lo, hi)| [m, lo, hi]);
    let positive: Vec<f64> = positive.filter(|v| *v > 0.0).collect();
    let ymin = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let ymax = positive.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = if ymin.is_finite() && ymax.is_finite() {
        (ymin / 1.5, ymax * 1.5)
    } else {
        (1e-3, 1.0)
    };
    let steps = c.steps.max(1) as f64;
    let title = format!(
        "{}: training loss (mean over {} seeds, band = min–max)",
        c.task,
        c.seeds.len()
    );
    let mut chart = builder(&top, text, &title)
        .build_cartesian_2d(0.0..steps, (ymin..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    mesh(&mut chart, text, "train loss (full batch)")?;
    for (i, b) in losses.iter().enumerate() {
        let clamp = |v: f64| v.max(ymin);
        series(&mut chart, b, i, &c.entries[i].label, text, clamp)?;
    }
    legend(&mut chart, text, SeriesLabelPosition::UpperRight)?;

    if has_acc {
        let title = format!("{}: test accuracy", c.task);
        let floor = accuracy_floor(&accs);
        let mut chart = builder(&bottom, text, &title)
            .build_cartesian_2d(0.0..steps, floor..100.0)
            .map_err(|e| e.to_string())?;
        mesh(&mut chart, text, "test accuracy %")?;
        for (i, b) in accs.iter().enumerate() {
            let pct: Band = b
                .iter()
                .map(|&(s, m, lo, hi)| (s, m * 100.0, lo * 100.0, hi * 100.0))
                .collect();
            series(&mut chart, &pct, i, &c.entries[i].label, text, |v| {
                v.max(floor)
            })?;
        }
        legend(&mut chart, text, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// A short axis label: plain for moderate magnitudes, `1e-4` style otherwise.
fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || (1e-2..1e4).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// The bottom of the accuracy axis, in percent: 10 points below the lowest mean accuracy over the
/// second half of the run (rounded down to a multiple of 10), so the interesting end is not
/// squeezed against the top by the first steps' chance-level accuracy.
fn accuracy_floor(accs: &[Band]) -> f64 {
    let late = accs
        .iter()
        .flat_map(|b| b.iter().skip(b.len() / 2).map(|&(_, m, _, _)| m * 100.0))
        .fold(f64::INFINITY, f64::min);
    if late.is_finite() {
        ((late - 10.0) / 10.0).floor().clamp(0.0, 9.0) * 10.0
    } else {
        0.0
    }
}

fn builder<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    text: bool,
    title: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    b
}

fn mesh<Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    text: bool,
    y_desc: &str,
) -> Result<(), String> {
    let mut m = chart.configure_mesh();
    if text {
        m.x_desc("step")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| tick(*y));
    } else {
        m.disable_x_axis().disable_y_axis();
    }
    m.draw().map_err(|e| e.to_string())
}

fn series<Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    band: &Band,
    index: usize,
    label: &str,
    text: bool,
    clamp: impl Fn(f64) -> f64,
) -> Result<(), String> {
    let color = COLORS[index % COLORS.len()].0;
    if band.len() > 1 {
        let outline: Vec<(f64, f64)> = band
            .iter()
            .map(|&(s, _, _, hi)| (s, clamp(hi)))
            .chain(band.iter().rev().map(|&(s, _, lo, _)| (s, clamp(lo))))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                outline,
                color.mix(0.15).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    let line = chart
        .draw_series(LineSeries::new(
            band.iter().map(|&(s, m, _, _)| (s, clamp(m))),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    if text {
        line.label(label.to_string()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
        });
    }
    Ok(())
}

fn legend<'a, 'b: 'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
    text: bool,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    if !text {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(0.05), "0.05");
        assert_eq!(tick(1e-6), "1e-6");
        assert_eq!(tick(1e5), "1e5");
        assert_eq!(tick(95.0), "95");
    }

    #[test]
    fn the_no_text_fallback_draws_a_png() {
        use crate::compare::reference::{Reference, ReferenceKind};
        let task = crate::compare::task::Rosenbrock::new(4);
        let adam: Box<dyn crate::compare::Contender> =
            Box::new(Reference::new(ReferenceKind::Adam, "adam"));
        let c = crate::compare::compare(&task, &[adam], 5, 2, &mut crate::compare::Silent)
            .expect("runs");
        let path = std::env::temp_dir().join(format!("optc-plot-{}.png", std::process::id()));
        draw(&c, &path, false).expect("draws without any font");
        let bytes = std::fs::read(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[..4], b"\x89PNG");
    }
}
