//! The look every panel shares: the font, colours, axis ticks, titles,
//! notes, the chart frame, the mesh and the legend.

use super::*;

/// Family the plot font is registered under in plotters' (global) registry. It is
/// also the `font-family` written into SVGs, so it must be a name that SVG
/// viewers resolve: the generic `sans-serif` (plotters' own default family).
pub(super) const FONT: &str = "sans-serif";
pub(super) static EMBEDDED_FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");

pub(super) const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(super) const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);
pub(super) const PALETTE: [RGBColor; 10] = [
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
pub(super) const GRID: RGBColor = RGBColor(225, 225, 225);
pub(super) const NOTE: RGBColor = RGBColor(110, 110, 110);

pub(super) fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plotting failed: {e}")
}

pub(super) fn ensure_font() -> Result<(), String> {
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

pub(super) fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// A value we can place on an axis.
pub(super) fn ok(v: f64) -> bool {
    v.is_finite() && v.abs() < 1e100
}

/// Pads a data range so that it is never empty (all-equal or no values).
pub(super) fn padded(lo: f64, hi: f64) -> Range<f64> {
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

pub(super) fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| ok(*v))
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Tick label for a value on an axis spanning `span`.
pub(super) fn tick(v: f64, span: f64) -> String {
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
pub(super) fn ellipsize(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max == 0 {
        return s.to_string();
    }
    let keep: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{keep}…")
}

pub(super) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Title fitted to the panel width (~7.5 px per character at 15 px).
pub(super) fn caption(title: &str) -> String {
    ellipsize(title, (PANEL_W as usize - 30) / 8)
}

pub(super) fn draw_note<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
) -> Result<(), String> {
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
/// The axes' common look: label fonts and a light grid, then drawn.
pub(super) fn mesh_style<X, Y, DB>(
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
pub(super) fn panel_chart<'a, DB: DrawingBackend>(
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
pub(super) fn legend<'a, DB, CT>(
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
