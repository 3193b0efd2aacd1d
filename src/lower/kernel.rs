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
    Linear {
        relu: bool,
        bn: FoldedBn,
    },
    /// Sibling dense layers as one GEMM: (prefix, units) in output order.
    MergedLinear {
        parts: Vec<(String, usize)>,
    },
    Conv(ConvKernel),
    /// Every other op: the candle calls (or our op) named here.
    Op(&'static str),
}

/// A 1-D or 2-D convolution step.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvKernel {
    /// Our im2col + GEMM op (CPU, one group, one stride and dilation for all
    /// axes, zero padding inside); otherwise candle's conv, asymmetric `same`
    /// padding applied as zeros first.
    pub im2col: bool,
    pub rank: usize,
    pub pads: Pads,
    pub relu: bool,
    /// A global average pool fused in (inference: output [N, F]).
    pub mean: bool,
    /// A 2×2, stride-2 max pool fused in (inference: output [N, F, H/2, W/2]).
    pub pool: bool,
    pub bn: FoldedBn,
}

impl Kernel {
    /// The checkpoint prefix of a folded batch norm or of merged parts, besides the step's own.
    pub fn extra_prefixes(&self) -> Vec<&str> {
        match self {
            Kernel::Linear { bn, .. } | Kernel::Conv(ConvKernel { bn, .. }) => {
                bn.iter().map(|b| b.0.as_str()).collect()
            }
            Kernel::MergedLinear { parts } => parts.iter().map(|p| p.0.as_str()).collect(),
            Kernel::Op(_) => vec![],
        }
    }

    /// Fuses a following relu, where the kernel applies it (our GEMM and
    /// im2col ops mask the gradient by the output: no pass of its own).
    pub fn fuse_relu(&mut self) -> bool {
        match self {
            Kernel::Linear { relu, .. } => *relu = true,
            Kernel::Conv(c) if c.im2col && !c.mean && !c.pool => c.relu = true,
            _ => return false,
        }
        true
    }

    /// Fuses a following global average pool into a 2-D im2col convolution.
    pub fn fuse_mean(&mut self) -> bool {
        self.fuse_plane_pool(|c| c.mean = true)
    }

    /// Fuses a following 2×2, stride-2 max pool into a 2-D im2col convolution.
    pub fn fuse_max_pool(&mut self) -> bool {
        self.fuse_plane_pool(|c| c.pool = true)
    }

    /// Fuses a pool over each output plane (`set` marks which) into a 2-D
    /// im2col convolution that has none yet.
    fn fuse_plane_pool(&mut self, set: impl FnOnce(&mut ConvKernel)) -> bool {
        match self {
            Kernel::Conv(c) if c.im2col && c.rank == 2 && !c.mean && !c.pool => {
                set(c);
                true
            }
            _ => false,
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let folded = " (batch_norm folded into weights)";
        match self {
            Kernel::Linear { relu, bn } => {
                f.write_str("matmul+bias")?;
                if bn.is_some() {
                    f.write_str(folded)?;
                }
                if *relu {
                    f.write_str("+relu")?;
                }
                Ok(())
            }
            Kernel::MergedLinear { .. } => f.write_str("merged matmul+bias"),
            Kernel::Conv(c) => {
                match (c.im2col, c.bn.is_some()) {
                    (true, true) => write!(f, "conv{folded}")?,
                    (true, false) => {
                        let pad = if c.pads.iter().any(|(a, b)| a != b) {
                            "pad+"
                        } else {
                            ""
                        };
                        write!(f, "{pad}mtl.conv{}d(im2col+gemm)", c.rank)?
                    }
                    (false, bn) => {
                        write!(f, "candle.conv{}d{}", c.rank, if bn { folded } else { "" })?
                    }
                }
                if c.relu {
                    f.write_str("+relu")?;
                }
                if c.mean {
                    f.write_str("+global_avg_pool")?;
                }
                if c.pool {
                    f.write_str("+max_pool")?;
                }
                Ok(())
            }
            Kernel::Op(name) => f.write_str(name),
        }
    }
}
