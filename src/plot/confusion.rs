//! Confusion-matrix panels: a heat map with counts, class names on both axes.

use super::*;

/// `0..k` with one tick (and label) at the centre of each of the k cells.
pub(super) struct CellAxis(usize);

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
pub(super) fn heat(f: f64) -> RGBColor {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(lerp(247, 8), lerp(251, 48), lerp(255, 107))
}

pub(super) fn draw_confusion<DB: DrawingBackend>(
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
