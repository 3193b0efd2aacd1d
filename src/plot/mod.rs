//! Figures for `mtl plot RUN [--data TEST] --output FILE.png|.svg`.
//!
//! One figure, a grid of panels (up to three per row, 420×320 px each):
//! per-head train/validation loss, per-head metrics, the loss weights over
//! epochs, and optionally one panel per [`Evaluation`] (a confusion-matrix heat
//! map or a predicted-vs-true scatter).
//!
//! Text is drawn with plotters' `ab_glyph` backend from a small subset of DejaVu
//! Sans embedded in the binary (`plot/font/`, ~29 KB), so no system font lookup
//! happens at run time and the output is the same on every machine. Set
//! `MTL_PLOT_FONT=/path/to/font.ttf` to draw with another font (for example one
//! that covers CJK class names).
//!
//! Plain data in, no mtl types: [`curves_from_json`] reads
//! `training_statistics.json`, the caller builds the [`Evaluation`]s.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Training curves, as read from `RUN/training_statistics.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    pub epochs: Vec<usize>,
    /// per head: (train loss per epoch, validation loss per epoch if any)
    pub loss: Vec<(String, Vec<f64>, Option<Vec<f64>>)>,
    /// per head and metric: (label like "digit accuracy", train, val)
    pub metrics: Vec<(String, Vec<f64>, Option<Vec<f64>>)>,
    /// loss weights over epochs per head
    pub weights: Vec<(String, Vec<f64>)>,
}

/// One evaluation panel, computed on `--data TEST`.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// `counts[true][pred]`
    Confusion {
        head: String,
        classes: Vec<String>,
        counts: Vec<Vec<u64>>,
    },
    Scatter {
        head: String,
        truth: Vec<f32>,
        pred: Vec<f32>,
    },
}

/// Panel size in pixels (also the SVG's user units).
pub const PANEL_W: u32 = 420;
pub const PANEL_H: u32 = 320;
/// Panels per row.
pub const MAX_COLS: usize = 3;

mod confusion;
mod json;
mod lines;
mod scatter;
mod style;
#[cfg(test)]
mod tests;

use confusion::*;
pub use json::curves_from_json;
use lines::*;
use scatter::*;
use style::*;

/// Draws the figure to `path`; the extension (`.png` or `.svg`) picks the format.
pub fn draw(curves: &Curves, evals: &[Evaluation], path: &Path) -> Result<(), String> {
    let format = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e == "png" => Format::Png,
        Some(e) if e == "svg" => Format::Svg,
        _ => {
            return Err(format!(
                "cannot plot to {}: the output file must end in .png or .svg",
                path.display()
            ))
        }
    };
    ensure_font()?;
    let panels = panels(curves, evals);
    if panels.is_empty() {
        return Err("nothing to plot: the run has no finite training statistics and no evaluation was given".into());
    }
    let cols = panels.len().min(MAX_COLS);
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (PANEL_W * cols as u32, PANEL_H * rows as u32);

    // Plotters should not panic on the inputs we hand it (ranges are padded,
    // non-finite values dropped), but a panic deep inside a drawing library must
    // not take the whole CLI down: turn it into an error.
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match format {
        Format::Png => {
            let mut buf = vec![255u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                render(&root, &panels, (rows, cols))?;
                root.present().map_err(err)?;
            }
            Ok(Output::Png(buf))
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                render(&root, &panels, (rows, cols))?;
                root.present().map_err(err)?;
            }
            Ok(Output::Svg(svg))
        }
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("plotting failed (internal panic: {msg})"))
    })?;

    let written = match rendered {
        Output::Png(buf) => image::save_buffer_with_format(
            path,
            &buf,
            w,
            h,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| e.to_string()),
        Output::Svg(svg) => std::fs::write(path, svg).map_err(|e| e.to_string()),
    };
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

enum Format {
    Png,
    Svg,
}

enum Output {
    Png(Vec<u8>),
    Svg(String),
}

// ---------------------------------------------------------------------------
// Panels

struct Series<'a> {
    name: String,
    values: &'a [f64],
    color: RGBColor,
}

enum Panel<'a> {
    Lines {
        title: String,
        y_desc: String,
        xs: Vec<f64>,
        series: Vec<Series<'a>>,
    },
    Confusion {
        title: String,
        classes: Vec<String>,
        counts: Vec<Vec<u64>>,
    },
    Scatter {
        title: String,
        points: Vec<(f64, f64)>,
        n: usize,
    },
}

fn panels<'a>(curves: &'a Curves, evals: &'a [Evaluation]) -> Vec<Panel<'a>> {
    let longest = curves
        .loss
        .iter()
        .map(|l| l.1.len().max(l.2.as_ref().map_or(0, Vec::len)))
        .chain(
            curves
                .metrics
                .iter()
                .map(|m| m.1.len().max(m.2.as_ref().map_or(0, Vec::len))),
        )
        .chain(curves.weights.iter().map(|w| w.1.len()))
        .max()
        .unwrap_or(0);
    // An epoch number per value; values past the end of `epochs` get index + 1.
    let xs: Vec<f64> = (0..longest)
        .map(|i| curves.epochs.get(i).map_or((i + 1) as f64, |&e| e as f64))
        .collect();

    let train_val = |train: &'a [f64], val: &'a Option<Vec<f64>>| {
        let mut s = vec![Series {
            name: "train".into(),
            values: train,
            color: TRAIN_COLOR,
        }];
        if let Some(v) = val {
            s.push(Series {
                name: "validation".into(),
                values: v,
                color: VAL_COLOR,
            });
        }
        s
    };

    let mut out = Vec::new();
    for (head, train, val) in &curves.loss {
        out.push(Panel::Lines {
            title: format!("{head} loss"),
            y_desc: "loss".into(),
            xs: xs.clone(),
            series: train_val(train, val),
        });
    }
    for (label, train, val) in &curves.metrics {
        let y_desc = label
            .split_once(' ')
            .map_or(label.as_str(), |(_, m)| m.trim())
            .to_string();
        out.push(Panel::Lines {
            title: label.clone(),
            y_desc,
            xs: xs.clone(),
            series: train_val(train, val),
        });
    }
    let weights_vary = curves
        .weights
        .iter()
        .any(|(_, w)| w.iter().any(|&x| ok(x) && x != 1.0));
    if !curves.weights.is_empty() && (curves.weights.len() >= 2 || weights_vary) {
        let series = curves
            .weights
            .iter()
            .enumerate()
            .map(|(i, (head, w))| Series {
                name: head.clone(),
                values: w,
                color: PALETTE[i % PALETTE.len()],
            })
            .collect();
        out.push(Panel::Lines {
            title: "loss weights".into(),
            y_desc: "weight".into(),
            xs: xs.clone(),
            series,
        });
    }
    // Without a single finite training value the curve panels say nothing.
    let any_finite = out.iter().any(|p| match p {
        Panel::Lines { xs, series, .. } => series
            .iter()
            .any(|s| s.values.iter().zip(xs).any(|(&y, &x)| ok(x) && ok(y))),
        _ => false,
    });
    if !any_finite {
        out.clear();
    }

    for e in evals {
        match e {
            Evaluation::Confusion {
                head,
                classes,
                counts,
            } => {
                let k = classes
                    .len()
                    .max(counts.len())
                    .max(counts.iter().map(Vec::len).max().unwrap_or(0));
                let names: Vec<String> = (0..k)
                    .map(|i| classes.get(i).cloned().unwrap_or_else(|| i.to_string()))
                    .collect();
                let cell =
                    |i: usize, j: usize| counts.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0);
                let grid: Vec<Vec<u64>> = (0..k)
                    .map(|i| (0..k).map(|j| cell(i, j)).collect())
                    .collect();
                let total: u64 = grid
                    .iter()
                    .flatten()
                    .fold(0u64, |a, &b| a.saturating_add(b));
                let correct: u64 = (0..k).fold(0u64, |a, i| a.saturating_add(grid[i][i]));
                let title = if total > 0 {
                    format!(
                        "{head}: confusion (acc {}, n={total})",
                        pct(correct as f64 / total as f64)
                    )
                } else {
                    format!("{head}: confusion (n=0)")
                };
                out.push(Panel::Confusion {
                    title,
                    classes: names,
                    counts: grid,
                });
            }
            Evaluation::Scatter { head, truth, pred } => {
                let all: Vec<(f64, f64)> = truth
                    .iter()
                    .zip(pred)
                    .map(|(&t, &p)| (t as f64, p as f64))
                    .filter(|&(t, p)| ok(t) && ok(p))
                    .collect();
                let n = all.len();
                let title = if n > 0 {
                    let mae = all.iter().map(|(t, p)| (t - p).abs()).sum::<f64>() / n as f64;
                    format!("{head}: predicted vs true (MAE {}, n={n})", tick(mae, mae))
                } else {
                    format!("{head}: predicted vs true (n=0)")
                };
                // Thin very large sets evenly: the picture is the same, the SVG stays small.
                const MAX_POINTS: usize = 5000;
                let points = if n > MAX_POINTS {
                    (0..MAX_POINTS).map(|i| all[i * n / MAX_POINTS]).collect()
                } else {
                    all
                };
                out.push(Panel::Scatter { title, points, n });
            }
        }
    }
    out
}

fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    (rows, cols): (usize, usize),
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        match panel {
            Panel::Lines {
                title,
                y_desc,
                xs,
                series,
            } => draw_lines(area, title, y_desc, xs, series)?,
            Panel::Confusion {
                title,
                classes,
                counts,
            } => draw_confusion(area, title, classes, counts)?,
            Panel::Scatter { title, points, n } => draw_scatter(area, title, points, *n)?,
        }
    }
    Ok(())
}
