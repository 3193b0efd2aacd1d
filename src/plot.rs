//! Figures for `mtl plot RUN [--data TEST] --output FILE.png|.svg`.
//!
//! One figure, a grid of panels (up to three per row, 420×320 px each):
//! per-head train/validation loss, per-head metrics, the loss weights over
//! epochs, and optionally one panel per [`Evaluation`] (a confusion-matrix heat
//! map or a predicted-vs-true scatter).
//!
//! Text is drawn with plotters' `ab_glyph` backend from a small subset of DejaVu
//! Sans embedded in the binary (`plot_font/`, ~29 KB), so no system font lookup
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

/// Family the plot font is registered under in plotters' (global) registry. It is
/// also the `font-family` written into SVGs, so it must be a name that SVG
/// viewers resolve: the generic `sans-serif` (plotters' own default family).
const FONT: &str = "sans-serif";
static EMBEDDED_FONT: &[u8] = include_bytes!("plot_font/DejaVuSans-subset.ttf");

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const NOTE: RGBColor = RGBColor(110, 110, 110);

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

/// Parses `training_statistics.json`:
/// `{"epochs": [{"epoch": 1, "train": {"loss": .., "heads": {"digit": {"loss": .., "accuracy": ..}}},
/// "val": null | {same shape}, "loss_weights": {"digit": 1.0}, ...}], "heads": ["digit"]}`.
///
/// Every key of `heads.HEAD` other than `"loss"` whose values are numbers is a
/// metric. Missing values (and JSON `null`, which is how NaN is written) become
/// NaN, which [`draw`] skips.
pub fn curves_from_json(v: &serde_json::Value) -> Result<Curves, String> {
    let top = v
        .as_object()
        .ok_or("training statistics: expected a JSON object at the top level")?;
    let epochs = top
        .get("epochs")
        .and_then(|e| e.as_array())
        .ok_or("training statistics: missing \"epochs\" array")?;
    for (i, e) in epochs.iter().enumerate() {
        if !e.is_object() {
            return Err(format!("training statistics: epochs[{i}] is not an object"));
        }
    }

    // Head order: the "heads" list if present, then any other head seen, in order.
    let mut heads: Vec<String> = Vec::new();
    if let Some(list) = top.get("heads").and_then(|h| h.as_array()) {
        for h in list {
            let name = h
                .as_str()
                .ok_or("training statistics: \"heads\" must hold strings")?;
            push_unique(&mut heads, name);
        }
    }
    for e in epochs {
        for split in ["train", "val"] {
            if let Some(hs) = e
                .get(split)
                .and_then(|s| s.get("heads"))
                .and_then(|h| h.as_object())
            {
                for name in hs.keys() {
                    push_unique(&mut heads, name);
                }
            }
        }
        if let Some(ws) = e.get("loss_weights").and_then(|w| w.as_object()) {
            for name in ws.keys() {
                push_unique(&mut heads, name);
            }
        }
    }

    let n = epochs.len();
    let epoch_numbers = epochs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.get("epoch")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(i + 1)
        })
        .collect();
    let head_stat = |split: &str, head: &str, key: &str| -> Vec<f64> {
        epochs
            .iter()
            .map(|e| {
                e.get(split)
                    .and_then(|s| s.get("heads"))
                    .and_then(|h| h.get(head))
                    .and_then(|h| h.get(key))
                    .and_then(|x| x.as_f64())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };
    let has_val = |head: &str, key: &str| {
        epochs.iter().any(|e| {
            e.get("val")
                .and_then(|s| s.get("heads"))
                .and_then(|h| h.get(head))
                .and_then(|h| h.get(key))
                .is_some_and(|x| x.is_number())
        })
    };

    let mut curves = Curves {
        epochs: epoch_numbers,
        ..Curves::default()
    };
    for head in &heads {
        let val = has_val(head, "loss").then(|| head_stat("val", head, "loss"));
        curves
            .loss
            .push((head.clone(), head_stat("train", head, "loss"), val));

        let mut metric_names: Vec<String> = Vec::new();
        for e in epochs {
            for split in ["train", "val"] {
                if let Some(m) = e
                    .get(split)
                    .and_then(|s| s.get("heads"))
                    .and_then(|h| h.get(head))
                    .and_then(|h| h.as_object())
                {
                    for (k, x) in m {
                        if k != "loss" && (x.is_number() || x.is_null()) {
                            push_unique(&mut metric_names, k);
                        }
                    }
                }
            }
        }
        for m in metric_names {
            let val = has_val(head, &m).then(|| head_stat("val", head, &m));
            curves
                .metrics
                .push((format!("{head} {m}"), head_stat("train", head, &m), val));
        }
    }
    if epochs
        .iter()
        .any(|e| e.get("loss_weights").is_some_and(|w| w.is_object()))
    {
        for head in &heads {
            let w = epochs
                .iter()
                .map(|e| {
                    e.get("loss_weights")
                        .and_then(|w| w.get(head))
                        .and_then(|x| x.as_f64())
                        .unwrap_or(f64::NAN)
                })
                .collect::<Vec<_>>();
            debug_assert_eq!(w.len(), n);
            curves.weights.push((head.clone(), w));
        }
    }
    Ok(curves)
}

// ---------------------------------------------------------------------------

enum Format {
    Png,
    Svg,
}

enum Output {
    Png(Vec<u8>),
    Svg(String),
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plotting failed: {e}")
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|x| x == name) {
        list.push(name.to_string());
    }
}

fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let (bytes, origin): (&'static [u8], String) = match std::env::var_os("MTL_PLOT_FONT") {
                Some(p) if !p.is_empty() => {
                    let shown = Path::new(&p).display().to_string();
                    let data =
                        std::fs::read(&p).map_err(|e| format!("MTL_PLOT_FONT={shown}: {e}"))?;
                    (
                        Box::leak(data.into_boxed_slice()),
                        format!("MTL_PLOT_FONT={shown}"),
                    )
                }
                _ => (EMBEDDED_FONT, "the embedded plot font".to_string()),
            };
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{origin} is not a usable TrueType/OpenType font"))
        })
        .clone()
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// A value we can place on an axis.
fn ok(v: f64) -> bool {
    v.is_finite() && v.abs() < 1e100
}

/// Pads a data range so that it is never empty (all-equal or no values).
fn padded(lo: f64, hi: f64) -> Range<f64> {
    if !(ok(lo) && ok(hi)) || lo > hi {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if span <= 1e-9 * lo.abs().max(1e-300) || span == 0.0 {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d)..(hi + d);
    }
    (lo - span * 0.06)..(hi + span * 0.06)
}

fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| ok(*v))
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Tick label for a value on an axis spanning `span`.
fn tick(v: f64, span: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().max(span.abs());
    if !(1e-3..1e5).contains(&mag) {
        return format!("{v:.1e}");
    }
    let step = (span / 6.0).abs().max(1e-12);
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Shortens `s` to at most `max` characters (with an ellipsis).
fn ellipsize(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max == 0 {
        return s.to_string();
    }
    let keep: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{keep}…")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
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

/// Title fitted to the panel width (~7.5 px per character at 15 px).
fn caption(title: &str) -> String {
    ellipsize(title, (PANEL_W as usize - 30) / 8)
}

fn draw_note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2, h as i32 / 2),
        font(13.0)
            .color(&NOTE)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(err)
}

/// Runs of consecutive finite points (NaN / missing values break the line).
fn runs(xs: &[f64], ys: &[f64]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for (&x, &y) in xs.iter().zip(ys) {
        if ok(x) && ok(y) {
            cur.push((x, y));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    xs: &[f64],
    series: &[Series],
) -> Result<(), String> {
    let series_runs: Vec<Vec<Vec<(f64, f64)>>> =
        series.iter().map(|s| runs(xs, s.values)).collect();
    let finite = series_runs.iter().flatten().flatten();
    let (x_lo, x_hi) = min_max(finite.clone().map(|p| p.0)).unwrap_or((1.0, 1.0));
    let (y_lo, y_hi) = min_max(finite.clone().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let empty = finite.clone().next().is_none();
    let x_range = if x_hi - x_lo < 0.5 {
        (x_lo - 0.5)..(x_hi + 0.5)
    } else {
        let pad = (x_hi - x_lo) * 0.03;
        (x_lo - pad)..(x_hi + pad)
    };
    let y_range = padded(y_lo, y_hi);
    let y_span = y_range.end - y_range.start;
    let n_epochs = xs.len().clamp(2, 10);

    let mut chart = panel_chart(area, title, x_range, y_range)?;
    // Whole epochs only on the x axis.
    let epoch = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let y_tick = |v: &f64| tick(*v, y_span);
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(n_epochs)
        .y_labels(6)
        .x_label_formatter(&epoch)
        .y_label_formatter(&y_tick)
        .x_desc("epoch")
        .y_desc(y_desc);
    mesh_style(&mut mesh)?;

    if empty {
        return draw_note(
            &chart.plotting_area().strip_coord_spec(),
            "no finite values",
        );
    }

    // Single-epoch (and isolated) points are only visible as markers.
    let marker = if xs.len() <= 40 { 3 } else { 0 };
    for (s, runs) in series.iter().zip(&series_runs) {
        let color = s.color;
        let style = color.stroke_width(2);
        let mut labelled = false;
        let first: Vec<Vec<(f64, f64)>> = if runs.is_empty() {
            vec![vec![]]
        } else {
            runs.clone()
        };
        for run in first {
            let lone = run.len() == 1;
            let anno = chart
                .draw_series(LineSeries::new(run, style).point_size(if lone {
                    3.max(marker)
                } else {
                    marker
                }))
                .map_err(err)?;
            if !labelled {
                anno.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
                labelled = true;
            }
        }
    }

    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let x_range = chart.x_range();
    let y_range = chart.y_range();
    let norm = |(x, y): (f64, f64)| {
        (
            (x - x_range.start) / (x_range.end - x_range.start),
            (y - y_range.start) / (y_range.end - y_range.start),
        )
    };
    let longest_name = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let legend_px = (
        (longest_name * 7 + 46) as f64,
        (series.len() * 17 + 14) as f64,
    );
    let position = legend_corner(
        series_runs
            .iter()
            .flatten()
            .map(|run| run.iter().map(|&p| norm(p)).collect()),
        (
            legend_px.0 / pw.max(1) as f64,
            legend_px.1 / ph.max(1) as f64,
        ),
    );
    legend(&mut chart, position)
}

/// The corner of the plotting area whose legend-sized box the curves cross
/// least. `runs` are polylines in coordinates normalised to [0, 1]; `size` is
/// the legend's size as a fraction of the plotting area.
fn legend_corner(
    runs: impl Iterator<Item = Vec<(f64, f64)>>,
    size: (f64, f64),
) -> SeriesLabelPosition {
    // Sample the polylines densely so that segments crossing a corner count too.
    let mut samples = Vec::new();
    for run in runs {
        samples.extend(run.first().copied());
        for w in run.windows(2) {
            for t in 1..=16 {
                let t = t as f64 / 16.0;
                samples.push((
                    w[0].0 + (w[1].0 - w[0].0) * t,
                    w[0].1 + (w[1].1 - w[0].1) * t,
                ));
            }
        }
    }
    let (w, h) = (size.0.min(1.0) + 0.03, size.1.min(1.0) + 0.04);
    let corners = [
        (
            SeriesLabelPosition::UpperRight,
            1.0 - w..1.0 + 1.0,
            1.0 - h..1.0 + 1.0,
        ),
        (SeriesLabelPosition::LowerRight, 1.0 - w..1.0 + 1.0, -1.0..h),
        (SeriesLabelPosition::UpperLeft, -1.0..w, 1.0 - h..1.0 + 1.0),
        (SeriesLabelPosition::LowerLeft, -1.0..w, -1.0..h),
    ];
    corners
        .into_iter()
        .map(|(pos, xr, yr)| {
            (
                samples
                    .iter()
                    .filter(|(x, y)| xr.contains(x) && yr.contains(y))
                    .count(),
                pos,
            )
        })
        .min_by_key(|(n, _)| *n) // first of equals: upper right is preferred
        .map_or(SeriesLabelPosition::UpperRight, |(_, pos)| pos)
}

/// `0..k` with one tick (and label) at the centre of each of the k cells.
struct CellAxis(usize);

impl Ranged for CellAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = v / self.0.max(1) as f64;
        limit.0 + ((limit.1 - limit.0) as f64 * f).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new(); // no minor grid
        }
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// White → dark blue.
fn heat(f: f64) -> RGBColor {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(lerp(247, 8), lerp(251, 48), lerp(255, 107))
}

fn draw_confusion<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    classes: &[String],
    counts: &[Vec<u64>],
) -> Result<(), String> {
    let k = classes.len();
    if k == 0 {
        let chart = ChartBuilder::on(area)
            .caption(caption(title), font(15.0))
            .margin(10)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(err)?;
        return draw_note(&chart.plotting_area().strip_coord_spec(), "no classes");
    }
    let kf = k as f64;
    // Column j spans x ∈ [j, j+1]; row i (true class i) spans y ∈ [k-1-i, k-i],
    // so row 0 is at the top. Ticks sit at the cell centres.
    // Too many classes for one label each: label every step-th (≥ ~15 px apart).
    let step = k.div_ceil(20);
    // Column labels run horizontally when they fit under their cells, else
    // vertically (then up to 10 characters).
    let plot_w = (PANEL_W - 10 - 16 - 80) as f64;
    let longest = classes.iter().map(|c| c.chars().count()).max().unwrap_or(1);
    let horizontal = (longest.min(12) * 7 + 6) as f64 <= plot_w / kf * step as f64;
    let (col_chars, x_area) = if horizontal {
        (12, 38)
    } else {
        (10, (longest.min(10) * 7 + 30) as u32)
    };
    let row_chars = 10;
    let mut chart = ChartBuilder::on(area)
        .caption(caption(title), font(15.0))
        .margin(10)
        .margin_right(16)
        .x_label_area_size(x_area)
        .y_label_area_size(80)
        .build_cartesian_2d(CellAxis(k), CellAxis(k))
        .map_err(err)?;
    let name_at = |v: f64| -> Option<&String> {
        let i = (v - 0.5).round();
        (i >= 0.0 && (i as usize) < k).then(|| &classes[i as usize])
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(k)
        .y_labels(k)
        .x_label_formatter(&|v: &f64| {
            let i = (v - 0.5).round() as usize;
            if !i.is_multiple_of(step) || !horizontal {
                return String::new();
            }
            name_at(*v)
                .map(|s| ellipsize(s, col_chars))
                .unwrap_or_default()
        })
        .y_label_formatter(&|v: &f64| {
            let i = (v - 0.5).round() as usize;
            if !(k - 1 - i.min(k - 1)).is_multiple_of(step) {
                return String::new();
            }
            name_at(kf - v)
                .map(|s| ellipsize(s, row_chars))
                .unwrap_or_default()
        })
        .x_label_style(font(12.0))
        .y_label_style(font(12.0))
        .x_desc("predicted")
        .y_desc("true")
        .axis_desc_style(font(13.0))
        .draw()
        .map_err(err)?;

    if !horizontal {
        // Plotters centres rotated tick labels on the tick, over the plot:
        // draw them ourselves, reading downwards from just below the axis.
        let base = area.get_base_pixel();
        for j in (0..k).step_by(step) {
            let (x, y) = chart.backend_coord(&(j as f64 + 0.5, 0.0));
            area.draw(&Text::new(
                ellipsize(&classes[j], col_chars),
                (x - base.0, y - base.1 + 6),
                font(12.0)
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
    }

    // Colour by the row's share (recall), so rare classes are as readable as common ones.
    let row_total: Vec<u64> = counts
        .iter()
        .map(|r| r.iter().fold(0u64, |a, &b| a.saturating_add(b)))
        .collect();
    let frac = |i: usize, j: usize| {
        if row_total[i] == 0 {
            0.0
        } else {
            counts[i][j] as f64 / row_total[i] as f64
        }
    };
    chart
        .draw_series((0..k).flat_map(|i| {
            (0..k).map(move |j| {
                let y = (k - 1 - i) as f64;
                Rectangle::new(
                    [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                    heat(frac(i, j)).filled(),
                )
            })
        }))
        .map_err(err)?;

    // Counts in the cells, if the cells are big enough to hold them.
    let (px_w, px_h) = chart.plotting_area().dim_in_pixel();
    let cell_w = px_w as f64 / kf;
    let cell_h = px_h as f64 / kf;
    let max_digits = counts
        .iter()
        .flatten()
        .map(|c| c.to_string().len())
        .max()
        .unwrap_or(1) as f64;
    let size = (cell_h * 0.4)
        .min(cell_w / (0.62 * max_digits + 0.4))
        .min(15.0);
    if size >= 7.0 {
        for (i, row) in counts.iter().enumerate() {
            for (j, count) in row.iter().enumerate() {
                let f = frac(i, j);
                let color = if f > 0.5 { WHITE } else { BLACK };
                let y = (k - 1 - i) as f64 + 0.5;
                chart
                    .draw_series(std::iter::once(Text::new(
                        count.to_string(),
                        (j as f64 + 0.5, y),
                        font(size)
                            .color(&color)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )))
                    .map_err(err)?;
            }
        }
    }
    // Frame.
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (kf, kf)],
            BLACK.mix(0.4).stroke_width(1),
        )))
        .map_err(err)?;
    Ok(())
}

fn draw_scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[(f64, f64)],
    n: usize,
) -> Result<(), String> {
    let (lo, hi) = min_max(points.iter().flat_map(|&(t, p)| [t, p])).unwrap_or((0.0, 1.0));
    let range = padded(lo, hi);
    let span = range.end - range.start;
    let mut chart = panel_chart(area, title, range.clone(), range.clone())?;
    let at = |v: &f64| tick(*v, span);
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(6)
        .y_labels(6)
        .x_label_formatter(&at)
        .y_label_formatter(&at)
        .x_desc("true")
        .y_desc("predicted");
    mesh_style(&mut mesh)?;
    if points.is_empty() {
        return draw_note(
            &chart.plotting_area().strip_coord_spec(),
            "no finite values",
        );
    }
    let radius = if n > 2000 { 1 } else { 2 };
    let alpha = if n > 2000 { 0.35 } else { 0.6 };
    chart
        .draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, radius, TRAIN_COLOR.mix(alpha).filled())),
        )
        .map_err(err)?
        .label("samples")
        .legend(|(x, y)| Circle::new((x + 9, y), 3, TRAIN_COLOR.filled()));
    let diag = [(range.start, range.start), (range.end, range.end)];
    chart
        .draw_series(DashedLineSeries::new(
            diag,
            6,
            4,
            RGBColor(200, 40, 40).stroke_width(1),
        ))
        .map_err(err)?
        .label("y = x")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 18, y)],
                RGBColor(200, 40, 40).stroke_width(1),
            )
        });
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// The axes' common look: label fonts and a light grid, then drawn.
fn mesh_style<X, Y, DB>(
    mesh: &mut plotters::chart::MeshStyle<'_, '_, X, Y, DB>,
) -> Result<(), String>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>
        + plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>
        + plotters::coord::ranged1d::ValueFormatter<f64>,
    DB: DrawingBackend,
{
    mesh.label_style(font(12.0))
        .axis_desc_style(font(13.0))
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)
}

/// A line or scatter panel's chart: its title, margins and label areas.
fn panel_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<
    ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    String,
> {
    ChartBuilder::on(area)
        .caption(caption(title), font(15.0))
        .margin(10)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(58)
        .build_cartesian_2d(x, y)
        .map_err(err)
}

/// Every panel's legend looks the same: a translucent box in one corner.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .margin(6)
        .label_font(font(12.0))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mtl-plot-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample_curves() -> Curves {
        Curves {
            epochs: vec![1, 2, 3, 4, 5],
            loss: vec![
                (
                    "digit".into(),
                    vec![2.0, 1.2, 0.8, 0.6, 0.5],
                    Some(vec![2.1, 1.4, 1.0, 0.9, 0.85]),
                ),
                ("parity".into(), vec![0.7, 0.5, 0.4, 0.35, 0.3], None),
            ],
            metrics: vec![(
                "digit accuracy".into(),
                vec![0.3, 0.6, 0.75, 0.82, 0.88],
                Some(vec![0.28, 0.55, 0.7, 0.76, 0.8]),
            )],
            weights: vec![
                ("digit".into(), vec![1.0, 1.0, 0.9, 0.8, 0.8]),
                ("parity".into(), vec![1.0, 1.1, 1.2, 1.2, 1.3]),
            ],
        }
    }

    fn sample_evals() -> Vec<Evaluation> {
        vec![
            Evaluation::Confusion {
                head: "digit".into(),
                classes: vec!["zero".into(), "one".into(), "two".into()],
                counts: vec![vec![50, 3, 1], vec![2, 40, 8], vec![0, 5, 61]],
            },
            Evaluation::Scatter {
                head: "count".into(),
                truth: (0..100).map(|i| i as f32 * 0.1).collect(),
                pred: (0..100)
                    .map(|i| i as f32 * 0.1 + ((i * 37 % 11) as f32 - 5.0) * 0.05)
                    .collect(),
            },
        ]
    }

    /// Decodes a PNG and checks its size and that it is not one flat colour.
    fn check_png(path: &Path, w: u32, h: u32) -> image::RgbImage {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        assert_eq!(img.dimensions(), (w, h));
        let first = *img.get_pixel(0, 0);
        let differing = img.pixels().filter(|p| **p != first).count();
        assert!(
            differing > (w * h / 100) as usize,
            "image is (almost) blank: {differing} pixels differ"
        );
        img
    }

    #[test]
    fn png_has_expected_size_and_content() {
        let dir = tmp_dir("png");
        let path = dir.join("fig.png");
        draw(&sample_curves(), &sample_evals(), &path).unwrap();
        // 2 loss + 1 metric + weights + confusion + scatter = 6 panels: 3 × 2.
        let img = check_png(&path, 3 * PANEL_W, 2 * PANEL_H);
        // Text was rasterised: the title row of the first panel has dark pixels.
        let dark_in_title = (0..PANEL_W)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(
            dark_in_title > 50,
            "no title text drawn ({dark_in_title} dark pixels)"
        );
        // The confusion matrix's darkest cell is dark blue.
        let has_heat = img
            .pixels()
            .any(|p| p.0[2] > 90 && p.0[0] < 30 && p.0[1] < 70);
        assert!(has_heat, "no heat map colours found");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn svg_names_every_head_and_panel() {
        let dir = tmp_dir("svg");
        let path = dir.join("fig.SVG");
        draw(&sample_curves(), &sample_evals(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        assert!(svg.contains(&format!("width=\"{}\"", 3 * PANEL_W)));
        for needle in [
            "digit loss",
            "parity loss",
            "digit accuracy",
            "loss weights",
            "digit: confusion",
            "count: predicted vs true",
            "epoch",
            "validation",
            "predicted",
            "zero",
            "two",
            "y = x",
        ] {
            assert!(svg.contains(needle), "SVG lacks {needle:?}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn layout_one_and_four_panels() {
        let dir = tmp_dir("layout");
        let one = Curves {
            epochs: vec![1, 2],
            loss: vec![("h".into(), vec![1.0, 0.5], None)],
            ..Default::default()
        };
        draw(&one, &[], &dir.join("one.png")).unwrap();
        check_png(&dir.join("one.png"), PANEL_W, PANEL_H);
        let mut four = one.clone();
        four.loss.push(("g".into(), vec![1.0, 0.4], None));
        four.weights = vec![("h".into(), vec![1.0, 1.0]), ("g".into(), vec![1.0, 1.0])];
        four.metrics.push(("h mae".into(), vec![3.0, 2.0], None));
        draw(&four, &[], &dir.join("four.png")).unwrap();
        check_png(&dir.join("four.png"), 3 * PANEL_W, 2 * PANEL_H);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unknown_extension_is_a_clear_error() {
        let dir = tmp_dir("ext");
        for name in ["fig.jpg", "fig", "fig.png.txt"] {
            let e = draw(&sample_curves(), &[], &dir.join(name)).unwrap_err();
            assert!(e.contains(".png or .svg"), "{e}");
            assert!(!dir.join(name).exists());
        }
        let e = draw(&sample_curves(), &[], &dir.join("missing-dir/fig.png")).unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn weights_panel_only_when_informative() {
        let one_head = Curves {
            epochs: vec![1, 2],
            loss: vec![("h".into(), vec![1.0, 0.5], None)],
            weights: vec![("h".into(), vec![1.0, 1.0])],
            ..Default::default()
        };
        assert_eq!(panels(&one_head, &[]).len(), 1);
        let mut varying = one_head.clone();
        varying.weights[0].1 = vec![1.0, 0.5];
        assert_eq!(panels(&varying, &[]).len(), 2);
    }

    #[test]
    fn edge_cases_never_panic() {
        let dir = tmp_dir("edge");
        let evals = sample_evals();
        let nan = f64::NAN;
        let cases: Vec<(&str, Curves, Vec<Evaluation>, bool)> = vec![
            ("empty", Curves::default(), vec![], false),
            ("empty-with-evals", Curves::default(), evals.clone(), true),
            (
                "empty-epochs",
                Curves {
                    loss: vec![("h".into(), vec![], Some(vec![]))],
                    ..Default::default()
                },
                vec![],
                false,
            ),
            (
                "all-nan",
                Curves {
                    epochs: vec![1, 2],
                    loss: vec![("h".into(), vec![nan, nan], Some(vec![nan, nan]))],
                    ..Default::default()
                },
                vec![],
                false,
            ),
            (
                "some-nan",
                Curves {
                    epochs: vec![1, 2, 3, 4],
                    loss: vec![(
                        "h".into(),
                        vec![1.0, nan, 0.5, f64::INFINITY],
                        Some(vec![nan, nan, nan, nan]),
                    )],
                    metrics: vec![("h acc".into(), vec![nan; 4], None)],
                    weights: vec![
                        ("h".into(), vec![nan, 1.0, 2.0, nan]),
                        ("g".into(), vec![1.0; 4]),
                    ],
                },
                vec![],
                true,
            ),
            (
                "single-epoch",
                Curves {
                    epochs: vec![3],
                    loss: vec![("h".into(), vec![0.7], Some(vec![0.9]))],
                    metrics: vec![("h accuracy".into(), vec![1.0], Some(vec![1.0]))],
                    weights: vec![("h".into(), vec![1.0]), ("g".into(), vec![1.0])],
                },
                vec![],
                true,
            ),
            (
                "ragged",
                Curves {
                    epochs: vec![1],
                    loss: vec![("h".into(), vec![0.7, 0.6, 0.5], Some(vec![0.9]))],
                    ..Default::default()
                },
                vec![],
                true,
            ),
            (
                "odd-evals",
                Curves::default(),
                vec![
                    Evaluation::Confusion {
                        head: "a".into(),
                        classes: vec![],
                        counts: vec![],
                    },
                    Evaluation::Confusion {
                        head: "b".into(),
                        classes: vec!["x".into(), "y".into()],
                        counts: vec![vec![0, 0], vec![3]],
                    },
                    Evaluation::Confusion {
                        head: "c".into(),
                        classes: (0..40).map(|i| format!("class-{i}")).collect(),
                        counts: (0..40)
                            .map(|i| {
                                (0..40)
                                    .map(|j| if i == j { 1000 } else { (i + j) as u64 % 3 })
                                    .collect()
                            })
                            .collect(),
                    },
                    Evaluation::Confusion {
                        head: "d".into(),
                        classes: vec!["big".into()],
                        counts: vec![vec![u64::MAX]],
                    },
                    Evaluation::Scatter {
                        head: "e".into(),
                        truth: vec![2.0; 10],
                        pred: vec![2.0; 10],
                    },
                    Evaluation::Scatter {
                        head: "f".into(),
                        truth: vec![],
                        pred: vec![],
                    },
                    Evaluation::Scatter {
                        head: "g".into(),
                        truth: vec![f32::NAN, 1.0, 0.0],
                        pred: vec![1.0, f32::INFINITY, 0.0],
                    },
                    Evaluation::Scatter {
                        head: "h".into(),
                        truth: vec![0.0; 3],
                        pred: vec![0.0; 3],
                    },
                ],
                true,
            ),
        ];
        for (name, curves, evals, expect_ok) in cases {
            for ext in ["png", "svg"] {
                let path = dir.join(format!("{name}.{ext}"));
                let r = draw(&curves, &evals, &path);
                match (&r, expect_ok) {
                    (Ok(()), true) => assert!(path.exists()),
                    (Err(e), false) => assert!(e.contains("nothing to plot"), "{name}: {e}"),
                    _ => panic!("{name}.{ext}: unexpected {r:?}"),
                }
            }
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn scatter_of_many_points_is_thinned() {
        let n = 20_000;
        let e = [Evaluation::Scatter {
            head: "x".into(),
            truth: vec![1.0; n],
            pred: vec![1.5; n],
        }];
        match &panels(&Curves::default(), &e)[0] {
            Panel::Scatter {
                points,
                n: total,
                title,
            } => {
                assert_eq!(*total, n);
                assert!(points.len() <= 5000);
                assert!(title.contains("MAE 0.5"), "{title}");
            }
            _ => unreachable!(),
        }
    }

    const SAMPLE_JSON: &str = r#"{
      "epochs": [
        {"epoch": 1, "lr": 0.001,
         "train": {"loss": 1.2, "heads": {"digit": {"loss": 0.9, "accuracy": 0.7}, "parity": {"loss": 0.3}}, "aux": {"l2": 0.1}},
         "val": null,
         "loss_weights": {"digit": 1.0, "parity": 1.0}, "samples_per_sec": 1234.0, "best": true},
        {"epoch": 2, "lr": 0.001,
         "train": {"loss": 0.8, "heads": {"digit": {"loss": 0.6, "accuracy": null}, "parity": {"loss": 0.2, "f1": 0.5}}},
         "val": {"loss": 0.9, "heads": {"digit": {"loss": 0.7, "accuracy": 0.75}, "parity": {"loss": 0.25}}},
         "loss_weights": {"digit": 1.0, "parity": 0.5}, "samples_per_sec": 1300.0, "best": true}
      ],
      "heads": ["parity", "digit"]
    }"#;

    fn same(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn parses_training_statistics() {
        let v: serde_json::Value = serde_json::from_str(SAMPLE_JSON).unwrap();
        let c = curves_from_json(&v).unwrap();
        let nan = f64::NAN;
        assert_eq!(c.epochs, vec![1, 2]);
        let heads: Vec<&str> = c.loss.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(heads, ["parity", "digit"], "order of the \"heads\" list");
        assert!(same(&c.loss[0].1, &[0.3, 0.2]));
        assert!(same(c.loss[0].2.as_ref().unwrap(), &[nan, 0.25]));
        assert!(same(&c.loss[1].1, &[0.9, 0.6]));
        assert!(same(c.loss[1].2.as_ref().unwrap(), &[nan, 0.7]));
        let labels: Vec<&str> = c.metrics.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(labels, ["parity f1", "digit accuracy"]);
        assert!(same(&c.metrics[0].1, &[nan, 0.5]));
        assert!(c.metrics[0].2.is_none(), "no validation f1");
        assert!(same(&c.metrics[1].1, &[0.7, nan]));
        assert!(same(c.metrics[1].2.as_ref().unwrap(), &[nan, 0.75]));
        assert_eq!(
            c.weights,
            vec![
                ("parity".to_string(), vec![1.0, 0.5]),
                ("digit".to_string(), vec![1.0, 1.0])
            ]
        );

        // And it draws.
        let dir = tmp_dir("json");
        draw(&c, &[], &dir.join("fig.svg")).unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn parse_errors_and_minimal_inputs() {
        let parse = |s: &str| curves_from_json(&serde_json::from_str(s).unwrap());
        assert!(parse("[]").unwrap_err().contains("object"));
        assert!(parse("{}").unwrap_err().contains("epochs"));
        assert!(parse(r#"{"epochs": [1]}"#)
            .unwrap_err()
            .contains("epochs[0]"));
        assert!(parse(r#"{"epochs": [], "heads": [1]}"#)
            .unwrap_err()
            .contains("heads"));
        let c = parse(r#"{"epochs": []}"#).unwrap();
        assert_eq!(c, Curves::default());
        // No "heads" list, no "epoch" numbers, no weights, no val.
        let c = parse(r#"{"epochs": [{"train": {"heads": {"a": {"loss": 1}}}}, {"train": {"heads": {"a": {"loss": 0.5}}}}]}"#).unwrap();
        assert_eq!(c.epochs, vec![1, 2]);
        assert_eq!(c.loss, vec![("a".to_string(), vec![1.0, 0.5], None)]);
        assert!(c.weights.is_empty() && c.metrics.is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(padded(1.0, 1.0), 0.9..1.1);
        assert_eq!(padded(0.0, 0.0), -1.0..1.0);
        assert_eq!(padded(f64::NAN, 1.0), 0.0..1.0);
        assert_eq!(tick(0.5, 1.0), "0.5");
        assert_eq!(tick(0.25, 0.1), "0.25");
        assert_eq!(tick(3.0, 8.0), "3");
        assert_eq!(tick(-0.0001, 1.0), "0.0");
        assert_eq!(tick(123456.0, 1.0), "1.2e5");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
        let corner =
            |run: Vec<(f64, f64)>| format!("{:?}", legend_corner(std::iter::once(run), (0.3, 0.2)));
        assert_eq!(
            corner(vec![(0.0, 1.0), (0.5, 0.2), (1.0, 0.0)]),
            "UpperRight"
        );
        assert_eq!(
            corner(vec![(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)]),
            "LowerRight"
        );
        assert_eq!(
            corner(vec![(0.0, 0.0), (1.0, 1.0), (1.0, 0.0)]),
            "UpperLeft"
        );
        assert_eq!(
            runs(&[1.0, 2.0, 3.0, 4.0], &[1.0, f64::NAN, 2.0, 3.0]),
            vec![vec![(1.0, 1.0)], vec![(3.0, 2.0), (4.0, 3.0)]]
        );
    }
}
