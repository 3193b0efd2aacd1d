//! Pooling: windows (Keras `MaxPooling`/`AveragePooling`) and over all
//! spatial axes (`GlobalMaxPooling`/`GlobalAveragePooling`).

use super::cx::map_dim;
use super::sig::{opt, req, zero_int, Kind, ParamSpec};
use super::{Build, Callee, Cx, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::op::list;
use crate::ir::{Dim, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Max,
    Avg,
}

impl PoolKind {
    fn name(self) -> &'static str {
        match self {
            PoolKind::Max => "max",
            PoolKind::Avg => "avg",
        }
    }
}

fn build_pool(b: &Build, kind: PoolKind) -> R<Op> {
    let size = b.args.ints("size");
    // stride 0 (the default) means "the pool size", as in Keras.
    let stride = match b.args.ints("stride").as_slice() {
        [0] => size.clone(),
        s => s.to_vec(),
    };
    Ok(Op::Pool(Pool { kind, size, stride }))
}

const POOL: Sig = Sig::Layer(&[
    req("size", Kind::IntOrPair),
    opt("stride", Kind::IntOrPair, zero_int),
]);

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "max_pool",
        sig: POOL,
        build: |b| build_pool(b, PoolKind::Max),
    },
    Callee {
        name: "avg_pool",
        sig: POOL,
        build: |b| build_pool(b, PoolKind::Avg),
    },
    Callee {
        name: "global_avg_pool",
        sig: Sig::Layer(GLOBAL),
        build: |b| build_global(b, PoolKind::Avg),
    },
    Callee {
        name: "global_max_pool",
        sig: Sig::Layer(GLOBAL),
        build: |b| build_global(b, PoolKind::Max),
    },
];

/// `axis = 0` (the default, shown as `all`) keeps the first-round rule.
const GLOBAL: &[ParamSpec] = &[opt("axis", Kind::SignedInt, all_axes)];

fn all_axes() -> super::Value {
    super::Value::Sym("all".into())
}

fn build_global(b: &Build, kind: PoolKind) -> R<Op> {
    let axis = match b.args.values.get("axis") {
        Some(super::Value::Int(a)) => Some(*a),
        _ => None,
    };
    Ok(Op::GlobalPool(GlobalPool { kind, axis }))
}

/// A pooling window over the spatial axes; one size and stride per axis (or one for all).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub kind: PoolKind,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

impl Rules for Pool {
    fn kind_name(&self) -> Cow<'static, str> {
        format!("{}_pool", self.kind.name()).into()
    }
    fn attrs(&self) -> String {
        format!("size={}, stride={}", list(&self.size), list(&self.stride))
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 3, "a [C, L] or [C, H, W] value")?;
        let s = cx.s();
        let r = s.len() - 1;
        let (size, stride) = (expand(&self.size, r), expand(&self.stride, r));
        let mut out = vec![s[0].clone()];
        for a in 0..r {
            out.push(match &s[a + 1] {
                Dim::Fixed(len) if *len < size[a] => {
                    return Err(cx
                        .at_input(
                            Diagnostic::error(
                                "mtl::too-small",
                                format!(
                                    "`{}` of size {} does not fit a spatial size of {len}",
                                    cx.kind(),
                                    size[a]
                                ),
                            )
                            .label(cx.span(), "the output would be empty"),
                        )
                        .help("pool less, or use `global_max_pool` / `global_avg_pool`"))
                }
                d => map_dim(d, |len| (len - size[a]) / stride[a] + 1),
            });
        }
        Ok(Typed::new(Type::f32(out)))
    }
}

/// One entry for every axis, or one per axis.
fn expand(v: &[usize], r: usize) -> Vec<usize> {
    if v.len() == 1 {
        vec![v[0]; r]
    } else {
        v.to_vec()
    }
}

/// Max or mean over every axis after the channels: `[C, ...]` → `[C]`; with
/// `axis`, over that per-sample axis only (Keras numbering, 1 = first), and
/// over unpadded positions only when the value carries a padding mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalPool {
    pub kind: PoolKind,
    pub axis: Option<i64>,
}

impl GlobalPool {
    /// The per-sample axis (from 0) reduced by an `axis = A` pool of a rank-`rank` value.
    pub fn axis_index(&self, rank: usize) -> Option<usize> {
        let a = self.axis?;
        let a = if a < 0 { rank as i64 + a } else { a - 1 };
        (0..rank as i64).contains(&a).then_some(a as usize)
    }
}

impl Rules for GlobalPool {
    /// A pool over one axis skips padded positions.
    fn reads_mask(&self) -> bool {
        self.axis.is_some()
    }
    fn kind_name(&self) -> Cow<'static, str> {
        format!("global_{}_pool", self.kind.name()).into()
    }
    fn attrs(&self) -> String {
        self.axis.map(|a| format!("axis={a}")).unwrap_or_default()
    }
    fn rank_help(&self, _rank: usize) -> Option<&'static str> {
        Some("this value has no spatial axes left to pool")
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let Some(axis) = self.axis else {
            cx.need_rank(
                2,
                usize::MAX,
                "a [C, ...] value with at least one axis after the channels",
            )?;
            return Ok(Typed::new(Type::f32(vec![cx.s()[0].clone()])));
        };
        cx.need_rank(2, usize::MAX, "a value of rank ≥ 2")?;
        let rank = cx.s().len();
        let Some(a) = self.axis_index(rank) else {
            return Err(Diagnostic::error(
                "mtl::pool-axis",
                format!("axis {axis} is out of range for a rank-{rank} value"),
            )
            .label(cx.span(), "here")
            .help(format!(
                "number the per-sample axes from 1 (1..={rank}), or -1 for the last"
            )));
        };
        let mut out = cx.s().to_vec();
        out.remove(a);
        Ok(Typed::new(Type::f32(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer};
    use super::*;

    fn pool(size: usize, stride: usize) -> Op {
        Op::Pool(Pool {
            kind: PoolKind::Max,
            size: vec![size],
            stride: vec![stride],
        })
    }

    #[test]
    fn windows_floor_the_output() {
        assert_eq!(
            infer(pool(2, 2), &[f32(&[4, 9, 8])]).unwrap().ty,
            f32(&[4, 4, 4])
        );
        assert_eq!(infer(pool(3, 1), &[f32(&[4, 9])]).unwrap().ty, f32(&[4, 7]));
    }

    #[test]
    fn a_window_larger_than_the_value_is_an_error() {
        assert_eq!(
            code(infer(pool(4, 4), &[f32(&[4, 3, 3])])),
            "mtl::too-small"
        );
        assert_eq!(code(infer(pool(2, 2), &[f32(&[4])])), "mtl::rank");
    }

    #[test]
    fn global_pools_keep_the_channels() {
        let op = Op::GlobalPool(GlobalPool {
            kind: PoolKind::Avg,
            axis: None,
        });
        assert_eq!(infer(op.clone(), &[f32(&[6, 3, 3])]).unwrap().ty, f32(&[6]));
        assert_eq!(code(infer(op, &[f32(&[6])])), "mtl::rank");
    }

    #[test]
    fn an_axis_pools_that_axis_only() {
        let op = |axis| {
            Op::GlobalPool(GlobalPool {
                kind: PoolKind::Max,
                axis: Some(axis),
            })
        };
        assert_eq!(infer(op(1), &[f32(&[12, 16])]).unwrap().ty, f32(&[16]));
        assert_eq!(infer(op(-1), &[f32(&[12, 16])]).unwrap().ty, f32(&[12]));
        assert_eq!(code(infer(op(3), &[f32(&[12, 16])])), "mtl::pool-axis");
    }
}
