//! Line panels: curves over epochs, broken at missing values, the legend in
//! the emptiest corner.

use super::*;

pub(super) fn runs(xs: &[f64], ys: &[f64]) -> Vec<Vec<(f64, f64)>> {
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

pub(super) fn draw_lines<DB: DrawingBackend>(
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
pub(super) fn legend_corner(
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
