//! mtl: a declarative model-graph compiler for multi-task, multi-modal deep learning.
//!
//! `.mtl` text → [`syntax`] (AST) → [`elaborate`] (IR) → [`ir::shape`] (typed IR)
//! → [`passes`] (optimized IR) → [`lower`] (candle program) → [`train`].
//! [`driver`] runs the front half as [`pipeline`]'s options say; [`data`] reads
//! a lowered model's [`signature`], not its program. Nothing in the library
//! prints.
//!
//! # Example: compile a model, snapshot its lowering, predict
//!
//! ```
//! use mtl::{compile_str, lower::{init_params, lower}, pipeline::Mode};
//! let src = r#"
//! model tiny {
//!   input x: f32[4]
//!   head y = x -> dense(8) -> relu -> dense(2) { loss: cross_entropy }
//! }"#;
//! let c = compile_str("tiny.mtl", src, &mtl::Options::default());
//! let (graph, _) = c.into_graph().map_err(|(d, _)| format!("{d:?}")).unwrap();
//! let plan = lower(&graph, Mode::Infer).expect("lowers");
//! // In your own tests: `insta::assert_snapshot!(plan.render());`
//! assert!(plan.render().contains("matmul+bias"));
//! let dev = candle_core::Device::Cpu;
//! let params = init_params(&plan, 0, &dev).unwrap();
//! let x = candle_core::Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
//! let inputs = [("x".to_string(), x)].into_iter().collect();
//! let inputs = mtl::data::Dataset::from_tensors(inputs, "inputs").unwrap();
//! let out = mtl::predict::predict(&plan, &params, &inputs, 2, &dev).unwrap();
//! assert_eq!(out["y"].dims(), &[3, 2]);
//! ```

pub mod data;
pub mod diagnostics;
pub mod distributed;
pub mod driver;
pub mod elaborate;
pub mod export;
pub mod files;
pub mod ir;
pub mod kernels;
pub mod lower;
pub mod passes;
pub mod pipeline;
pub mod plot;
pub mod predict;
pub mod pretrained;
pub mod render;
pub mod serve;
pub mod signature;
pub mod summary;
pub mod syntax;
pub mod train;

pub use driver::{compile_file, compile_str, Compiled};
pub use pipeline::Options;
