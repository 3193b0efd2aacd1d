//! Data sources. Today: safetensors tensor files (see `train::data`) and the
//! built-in generated `shapes` data set.

pub mod shapes;

use std::path::Path;

pub type Generator = fn(&Path, u64) -> Result<(), String>;

/// The generator for a model named after a built-in data set.
pub fn generated_for(model: &str) -> Option<Generator> {
    match model {
        "shapes" => Some(shapes::write_default),
        _ => None,
    }
}
