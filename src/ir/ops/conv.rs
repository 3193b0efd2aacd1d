//! Convolutions and spatial resampling (Keras `Conv1D`/`Conv2D`,
//! `Conv2DTranspose`, `UpSampling`), channels first.

use super::cx::{glorot, map_dim};
use super::sig::{one, opt, req, two, valid, Kind, ParamSpec};
use super::{Build, Callee, Cx, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::op::list;
use crate::ir::{Dim, Init, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

/// Parameter names: PyTorch layouts, conv weight `[F, C/groups, k...]`,
/// transposed conv weight `[C, F, k, k]`.
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Valid,
    Same,
}

impl Padding {
    fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }
    fn of(b: &Build) -> Padding {
        if b.args.sym("padding") == "same" {
            Padding::Same
        } else {
            Padding::Valid
        }
    }
}

const CONV: &[ParamSpec] = &[
    req("filters", Kind::Int),
    req("kernel", Kind::IntOrPair),
    opt("stride", Kind::IntOrPair, one),
    opt("padding", Kind::Padding, valid),
    opt("dilation", Kind::IntOrPair, one),
    opt("groups", Kind::Int, one),
];

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "conv1d",
        sig: Sig::Layer(CONV),
        build: |b| build_conv(b, 1),
    },
    Callee {
        name: "conv2d",
        sig: Sig::Layer(CONV),
        build: |b| build_conv(b, 2),
    },
    Callee {
        name: "conv_transpose2d",
        sig: Sig::Layer(&[
            req("filters", Kind::Int),
            req("kernel", Kind::Int),
            opt("stride", Kind::Int, one),
            opt("padding", Kind::Padding, valid),
        ]),
        build: |b| {
            Ok(Op::ConvTranspose2d(ConvTranspose2d {
                filters: b.args.int("filters"),
                kernel: b.args.int("kernel"),
                stride: b.args.int("stride"),
                padding: Padding::of(b),
            }))
        },
    },
    Callee {
        name: "upsample",
        sig: Sig::Layer(&[opt("scale", Kind::Int, two)]),
        build: |b| {
            Ok(Op::Upsample(Upsample {
                scale: b.args.int("scale"),
            }))
        },
    },
];

fn build_conv(b: &Build, rank: usize) -> R<Op> {
    let expand = |v: Vec<usize>| if v.len() == 1 { vec![v[0]; rank] } else { v };
    let kernel = expand(b.args.ints("kernel"));
    if kernel.len() != rank {
        return Err(Diagnostic::error(
            "mtl::argument-type",
            format!(
                "`{}` takes a kernel of {rank} size{}",
                b.name,
                if rank == 1 { "" } else { "s" }
            ),
        )
        .label(b.span, "here"));
    }
    Ok(Op::Conv(Conv {
        filters: b.args.int("filters"),
        kernel,
        stride: expand(b.args.ints("stride")),
        padding: Padding::of(b),
        dilation: expand(b.args.ints("dilation")),
        groups: b.args.int("groups"),
    }))
}

/// A 1-D or 2-D convolution; spatial attributes have one entry per axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conv {
    pub filters: usize,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub padding: Padding,
    pub dilation: Vec<usize>,
    pub groups: usize,
}

impl Rules for Conv {
    fn kind_name(&self) -> Cow<'static, str> {
        format!("conv{}d", self.kernel.len()).into()
    }
    fn attrs(&self) -> String {
        format!(
            "filters={}, kernel={}, stride={}, padding={}, dilation={}, groups={}",
            self.filters,
            list(&self.kernel),
            list(&self.stride),
            self.padding.name(),
            list(&self.dilation),
            self.groups
        )
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn rank_help(&self, rank: usize) -> Option<&'static str> {
        match (self.kernel.len(), rank) {
            (2, 1) => {
                Some("conv2d needs a feature map; for vectors use `dense`, for sequences `conv1d`")
            }
            (1, 3) => Some("for images use `conv2d`"),
            _ => None,
        }
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let r = self.kernel.len();
        let what = if r == 1 {
            "a [C, L] value"
        } else {
            "a [C, H, W] value"
        };
        cx.need_rank(r + 1, r + 1, what)?;
        let s = cx.s();
        let (filters, groups) = (self.filters, self.groups);
        let c = cx.fixed(&s[0], "the channel count of a convolution")?;
        if c % groups != 0 || filters % groups != 0 {
            return Err(cx.at_input(
                Diagnostic::error(
                    "mtl::groups",
                    format!("groups = {groups} must divide both the {c} input channels and the {filters} filters"),
                )
                .label(cx.span(), "here"),
            ));
        }
        let mut out = vec![Dim::Fixed(filters)];
        for a in 0..r {
            let (k, d) = (self.kernel[a], self.dilation[a]);
            out.push(match &s[a + 1] {
                Dim::Fixed(len) => {
                    let l = conv_out(*len, k, self.stride[a], d, self.padding);
                    Dim::Fixed(l.ok_or_else(|| {
                        cx.at_input(
                            Diagnostic::error(
                                "mtl::too-small",
                                format!(
                                    "`{}` with kernel {k} (dilation {d}) does not fit a spatial size of {len}",
                                    cx.kind()
                                ),
                            )
                            .label(cx.span(), "the output would be empty"),
                        )
                        .help("use `padding = same`, a smaller kernel, or fewer pooling steps before it")
                    })?)
                }
                d => map_dim(d, |l| l),
            });
        }
        let k: usize = self.kernel.iter().product();
        let mut wshape = vec![filters, c / groups];
        wshape.extend(&self.kernel);
        Ok(Typed::new(Type::f32(out))
            .param(WEIGHT, wshape, glorot(k * c / groups, k * filters))
            .param(BIAS, vec![filters], Init::Zeros))
    }
}

/// Output length of a convolution along one axis (Keras `valid` / `same`).
pub fn conv_out(
    len: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    match padding {
        Padding::Same => Some(len.div_ceil(stride)),
        Padding::Valid if len >= span => Some((len - span) / stride + 1),
        Padding::Valid => None,
    }
}

/// Keras `same` padding: (before, after), the odd pixel after.
pub fn same_padding(len: usize, k: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let span = dilation * (k - 1) + 1;
    let total = ((out - 1) * stride + span).saturating_sub(len);
    (total / 2, total - total / 2)
}

/// A transposed convolution's (padding, output padding) per side, in
/// PyTorch's / ONNX's terms, for Keras's `valid` and `same`.
pub fn transposed_padding(kernel: usize, stride: usize, padding: Padding) -> (usize, usize) {
    let (k, s) = (kernel, stride);
    match padding {
        Padding::Valid if k >= s => (0, 0),
        Padding::Valid => (0, s - k),
        Padding::Same if k >= s => ((k - s).div_ceil(2), (k - s) % 2),
        Padding::Same => (0, s - k),
    }
}

/// A 2-D transposed convolution (square kernel and stride).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvTranspose2d {
    pub filters: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
}

impl Rules for ConvTranspose2d {
    fn kind_name(&self) -> Cow<'static, str> {
        "conv_transpose2d".into()
    }
    fn attrs(&self) -> String {
        format!(
            "filters={}, kernel={}, stride={}, padding={}",
            self.filters,
            self.kernel,
            self.stride,
            self.padding.name()
        )
    }
    fn params(&self) -> &'static [&'static str] {
        &[WEIGHT, BIAS]
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(3, 3, "a [C, H, W] value")?;
        let c = cx.fixed(&cx.s()[0], "the channel count of a convolution")?;
        let (f, k, st) = (self.filters, self.kernel, self.stride);
        let mut out = vec![Dim::Fixed(f)];
        for d in &cx.s()[1..] {
            out.push(map_dim(d, |len| match self.padding {
                Padding::Valid => len * st + k.saturating_sub(st),
                Padding::Same => len * st,
            }));
        }
        Ok(Typed::new(Type::f32(out))
            .param(WEIGHT, vec![c, f, k, k], glorot(k * k * f, k * k * c))
            .param(BIAS, vec![f], Init::Zeros))
    }
}

/// Nearest-neighbour upsampling of every spatial axis by `scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upsample {
    pub scale: usize,
}

impl Rules for Upsample {
    fn kind_name(&self) -> Cow<'static, str> {
        "upsample".into()
    }
    fn attrs(&self) -> String {
        format!("scale={}", self.scale)
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 3, "a [C, L] or [C, H, W] value")?;
        let s = cx.s();
        let mut out = vec![s[0].clone()];
        out.extend(s[1..].iter().map(|d| map_dim(d, |l| l * self.scale)));
        Ok(Typed::new(Type::f32(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    fn conv(filters: usize, k: usize, padding: Padding, groups: usize) -> Op {
        Op::Conv(Conv {
            filters,
            kernel: vec![k, k],
            stride: vec![1, 1],
            padding,
            dilation: vec![1, 1],
            groups,
        })
    }

    #[test]
    fn conv2d_valid_and_same() {
        let t = infer(conv(16, 3, Padding::Valid, 1), &[f32(&[3, 8, 8])]).unwrap();
        assert_eq!(t.ty, f32(&[16, 6, 6]));
        assert_eq!(shapes(&t), [(WEIGHT, vec![16, 3, 3, 3]), (BIAS, vec![16])]);
        let t = infer(conv(16, 3, Padding::Same, 1), &[f32(&[3, 8, 8])]).unwrap();
        assert_eq!(t.ty, f32(&[16, 8, 8]));
    }

    #[test]
    fn conv_errors_are_located_by_code() {
        assert_eq!(
            code(infer(conv(16, 9, Padding::Valid, 1), &[f32(&[3, 8, 8])])),
            "mtl::too-small"
        );
        assert_eq!(
            code(infer(conv(16, 3, Padding::Valid, 2), &[f32(&[3, 8, 8])])),
            "mtl::groups"
        );
        assert_eq!(
            code(infer(conv(16, 3, Padding::Valid, 1), &[f32(&[8])])),
            "mtl::rank"
        );
    }

    #[test]
    fn grouped_weights_hold_channels_per_group() {
        let t = infer(conv(8, 3, Padding::Same, 2), &[f32(&[4, 5, 5])]).unwrap();
        assert_eq!(shapes(&t)[0], (WEIGHT, vec![8, 2, 3, 3]));
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(same_padding(8, 4, 1, 1), (1, 2));
        assert_eq!(same_padding(7, 3, 2, 1), (1, 1));
        assert_eq!(conv_out(7, 3, 2, 1, Padding::Same), Some(4));
        assert_eq!(conv_out(2, 3, 1, 1, Padding::Valid), None);
    }

    #[test]
    fn transposed_conv_and_upsample_grow_space() {
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            filters: 4,
            kernel: 3,
            stride: 2,
            padding: Padding::Valid,
        });
        let t = infer(op, &[f32(&[2, 5, 5])]).unwrap();
        assert_eq!(t.ty, f32(&[4, 11, 11]));
        assert_eq!(shapes(&t)[0], (WEIGHT, vec![2, 4, 3, 3]));
        let t = infer(Op::Upsample(Upsample { scale: 2 }), &[f32(&[2, 5])]).unwrap();
        assert_eq!(t.ty, f32(&[2, 10]));
    }
}
