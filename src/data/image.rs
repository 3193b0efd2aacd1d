//! Image files to channels-first f32 in [0, 1], converted to the declared
//! channel count and resized to the declared size.

use image::imageops::FilterType;
use std::path::Path;

/// Decodes `path` into `c × h × w` values (c = 1, 3 or 4).
pub fn decode(path: &Path, c: usize, h: usize, w: usize) -> Result<Vec<f32>, String> {
    let img =
        image::open(path).map_err(|e| format!("cannot read image `{}`: {e}", path.display()))?;
    let (h32, w32) = (h as u32, w as u32);
    let img = if img.width() != w32 || img.height() != h32 {
        img.resize_exact(w32, h32, FilterType::Triangle)
    } else {
        img
    };
    let raw: Vec<u8> = match c {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        4 => img.to_rgba8().into_raw(),
        _ => {
            return Err(format!(
                "images have 1, 3 or 4 channels; the input declares {c}"
            ))
        }
    };
    // HWC bytes → CHW floats.
    let mut out = vec![0f32; c * h * w];
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (ch, v) in px.iter().enumerate() {
            out[ch * h * w + i] = *v as f32 / 255.0;
        }
    }
    Ok(out)
}

/// A label mask: one value per pixel (grey level / 255), nearest resize.
pub fn decode_mask(path: &Path, h: usize, w: usize) -> Result<Vec<f32>, String> {
    let img =
        image::open(path).map_err(|e| format!("cannot read mask `{}`: {e}", path.display()))?;
    let img = if img.width() != w as u32 || img.height() != h as u32 {
        img.resize_exact(w as u32, h as u32, FilterType::Nearest)
    } else {
        img
    };
    Ok(img
        .to_luma8()
        .into_raw()
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect())
}

/// Writes an RGB (c = 3) or grey (c = 1) CHW image in [0, 1] as PNG.
pub fn write_png(path: &Path, chw: &[f32], c: usize, h: usize, w: usize) -> Result<(), String> {
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut buf = vec![0u8; c * h * w];
    for i in 0..h * w {
        for ch in 0..c {
            buf[i * c + ch] = byte(chw[ch * h * w + i]);
        }
    }
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::save_buffer(path, &buf, w as u32, h as u32, color)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
