//! mtl: a declarative model-graph compiler for multi-task, multi-modal deep learning.
//!
//! `.mtl` text → [`syntax`] (AST) → [`elaborate`] (IR) → [`ir::shape`] (typed IR)
//! → [`passes`] (optimized IR) → [`lower`] (candle program) → [`train`].
//! [`driver`] runs the front half; nothing in the library prints.

pub mod data;
pub mod diagnostics;
pub mod driver;
pub mod elaborate;
pub mod ir;
pub mod lower;
pub mod passes;
pub mod predict;
pub mod render;
pub mod summary;
pub mod syntax;
pub mod train;

pub use driver::{compile_file, compile_str, Compiled, Options};
