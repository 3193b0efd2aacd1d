//! Predicted-against-true panels, with the y = x line.

use super::*;

pub(super) fn draw_scatter<DB: DrawingBackend>(
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
