//! Leaving mtl: a trained model as a file other engines run.

pub mod onnx;
