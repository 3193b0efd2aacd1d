//! The kernel each step runs, chosen once at lowering from the op, the mode
//! and the device. The plan (`--emit plan`) is this value's `Display`, so
//! what the plan says is what runs.

use super::Pads;
use std::fmt;

/// A batch norm folded into a dense or conv: (its checkpoint prefix, epsilon).
pub type FoldedBn = Option<(String, f64)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// x·Wᵀ + b over the last axis: our GEMM op on CPU (f32), candle's
    /// matmul elsewhere; `relu` fused after the bias.
    Linear { relu: bool, bn: FoldedBn },
    /// Sibling dense layers as one GEMM: (prefix, units) in output order.
    MergedLinear { parts: Vec<(String, usize)> },
    /// Our im2col + GEMM convolution (CPU, one group, one stride and
    /// dilation for all axes), zero padding inside; `relu` fused, and `mean`
    /// a global average pool fused in (inference: output [N, F]).
    Im2colConv {
        rank: usize,
        pads: Pads,
        relu: bool,
        mean: bool,
        bn: FoldedBn,
    },
    /// candle's convolution (other devices, groups, per-axis strides):
    /// asymmetric `same` padding applied as zeros first.
    CandleConv {
        rank: usize,
        pads: Pads,
        relu: bool,
        mean: bool,
        bn: FoldedBn,
    },
    /// Every other op: the candle calls (or our op) named here.
    Op(&'static str),
}

impl Kernel {
    /// The checkpoint prefix of a folded batch norm or of merged parts, besides the step's own.
    pub fn extra_prefixes(&self) -> Vec<&str> {
        match self {
            Kernel::Linear { bn, .. }
            | Kernel::Im2colConv { bn, .. }
            | Kernel::CandleConv { bn, .. } => bn.iter().map(|b| b.0.as_str()).collect(),
            Kernel::MergedLinear { parts } => parts.iter().map(|p| p.0.as_str()).collect(),
            Kernel::Op(_) => vec![],
        }
    }

    /// Fuses a following relu, where the kernel applies it (our GEMM and
    /// im2col ops mask the gradient by the output: no pass of its own).
    pub fn fuse_relu(&mut self) -> bool {
        match self {
            Kernel::Linear { relu, .. } => *relu = true,
            Kernel::Im2colConv {
                relu, mean: false, ..
            } => *relu = true,
            _ => return false,
        }
        true
    }

    /// Fuses a following global average pool into a 2-D convolution.
    pub fn fuse_mean(&mut self) -> bool {
        match self {
            Kernel::Im2colConv { rank: 2, mean, .. } => {
                *mean = true;
                true
            }
            _ => false,
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fused = |f: &mut fmt::Formatter<'_>, relu: bool, mean: bool| {
            if relu {
                f.write_str("+relu")?;
            }
            if mean {
                f.write_str("+global_avg_pool")?;
            }
            Ok(())
        };
        match self {
            Kernel::Linear { relu, bn } => {
                f.write_str("matmul+bias")?;
                if bn.is_some() {
                    f.write_str(" (batch_norm folded into weights)")?;
                }
                fused(f, *relu, false)
            }
            Kernel::MergedLinear { .. } => f.write_str("merged matmul+bias"),
            Kernel::Im2colConv {
                rank,
                pads,
                relu,
                mean,
                bn,
            } => {
                if bn.is_some() {
                    f.write_str("conv (batch_norm folded into weights)")?;
                } else {
                    let pad = if pads.iter().any(|(a, b)| a != b) {
                        "pad+"
                    } else {
                        ""
                    };
                    write!(f, "{pad}mtl.conv{rank}d(im2col+gemm)")?;
                }
                fused(f, *relu, *mean)
            }
            Kernel::CandleConv {
                rank,
                relu,
                mean,
                bn,
                ..
            } => {
                write!(f, "candle.conv{rank}d")?;
                if bn.is_some() {
                    f.write_str(" (batch_norm folded into weights)")?;
                }
                fused(f, *relu, *mean)
            }
            Kernel::Op(name) => f.write_str(name),
        }
    }
}
