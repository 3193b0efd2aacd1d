//! Shape ops: `flatten`, `reshape(...)`, `permute(...)` (Keras `Flatten`,
//! `Reshape`, `Permute`) and `select(index, axis = 1)` (one position, e.g. a
//! `[CLS]` token): per-sample, the batch axis untouched.

use super::sig::{opt, req, Kind, Value};
use super::{Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::diagnostics::Diagnostic;
use crate::ir::{shape_str, Dim, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "flatten",
        sig: Sig::Layer(&[]),
        build: |_| Ok(Op::Flatten(Flatten)),
    },
    Callee {
        name: "reshape",
        sig: Sig::IntVariadic,
        build: |b| {
            Ok(Op::Reshape(Reshape {
                shape: b.args.variadic.clone(),
            }))
        },
    },
    Callee {
        name: "select",
        sig: Sig::Layer(&[
            req("index", Kind::SignedInt),
            opt("axis", Kind::SignedInt, first_axis),
        ]),
        build: |b| {
            Ok(Op::Select(Select {
                index: b.args.signed("index"),
                axis: b.args.signed("axis"),
            }))
        },
    },
    Callee {
        name: "permute",
        sig: Sig::IntVariadic,
        build: |b| {
            Ok(Op::Permute(Permute {
                axes: b
                    .args
                    .variadic
                    .iter()
                    .map(|x| (*x).max(0) as usize)
                    .collect(),
            }))
        },
    },
];

fn first_axis() -> Value {
    Value::Int(1)
}

/// The element count of the operand; every dim must be fixed.
fn total(cx: &Cx, what: &str) -> R<usize> {
    cx.s().iter().try_fold(1, |t, d| Ok(t * cx.fixed(d, what)?))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flatten;

impl Rules for Flatten {
    fn kind_name(&self) -> Cow<'static, str> {
        "flatten".into()
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let n = total(cx, "every dimension flattened")?;
        Ok(Typed::new(Type::f32(vec![Dim::Fixed(n)])))
    }
}

/// Per-sample target shape; one entry may be -1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reshape {
    pub shape: Vec<i64>,
}

impl Rules for Reshape {
    fn kind_name(&self) -> Cow<'static, str> {
        "reshape".into()
    }
    fn attrs(&self) -> String {
        format!("shape={:?}", self.shape)
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let shape = &self.shape;
        let total = total(cx, "every dimension reshaped")?;
        let known: i64 = shape.iter().filter(|d| **d != -1).product();
        let holes = shape.iter().filter(|d| **d == -1).count();
        let bad = shape.iter().any(|d| *d == 0 || *d < -1)
            || holes > 1
            || known <= 0
            || (holes == 0 && known as usize != total)
            || (holes == 1 && !total.is_multiple_of(known as usize));
        if bad {
            return Err(cx
                .at_input(
                    Diagnostic::error(
                        "mtl::reshape",
                        format!(
                            "cannot reshape {} ({total} values) to {shape:?}",
                            shape_str(cx.x())
                        ),
                    )
                    .label(cx.span(), "reshape here"),
                )
                .help("the sizes must multiply to the same count; at most one may be -1"));
        }
        let out = shape
            .iter()
            .map(|d| {
                Dim::Fixed(if *d == -1 {
                    total / known as usize
                } else {
                    *d as usize
                })
            })
            .collect();
        Ok(Typed::new(Type::f32(out)))
    }
}

/// Per-sample axes numbered from 1, as Keras's Permute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Permute {
    pub axes: Vec<usize>,
}

impl Rules for Permute {
    fn kind_name(&self) -> Cow<'static, str> {
        "permute".into()
    }
    fn attrs(&self) -> String {
        format!("axes={:?}", self.axes)
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        let (axes, s) = (&self.axes, cx.s());
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        if sorted != (1..=s.len()).collect::<Vec<_>>() {
            return Err(cx
                .at_input(
                    Diagnostic::error(
                        "mtl::permute",
                        format!(
                            "permute{axes:?} is not a permutation of the axes 1..={} of {}",
                            s.len(),
                            shape_str(cx.x())
                        ),
                    )
                    .label(cx.span(), "permute here"),
                )
                .help("number the per-sample axes from 1, as Keras's Permute"));
        }
        Ok(Typed::new(Type::f32(
            axes.iter().map(|a| s[a - 1].clone()).collect(),
        )))
    }
}

/// One position along `axis` (Keras numbering, 1 = first per-sample axis;
/// negative from the end); `index` negative counts from the end too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Select {
    pub index: i64,
    pub axis: i64,
}

impl Select {
    /// (axis, index) from 0 for a rank-`rank` value of per-sample shape `dims`.
    pub fn resolve(&self, dims: &[Dim]) -> Option<(usize, Option<usize>)> {
        let rank = dims.len() as i64;
        let a = if self.axis < 0 {
            rank + self.axis
        } else {
            self.axis - 1
        };
        if !(0..rank).contains(&a) {
            return None;
        }
        let i = dims[a as usize].fixed().and_then(|len| {
            let i = if self.index < 0 {
                len as i64 + self.index
            } else {
                self.index
            };
            (0..len as i64).contains(&i).then_some(i as usize)
        });
        Some((a as usize, i))
    }
}

impl Rules for Select {
    fn kind_name(&self) -> Cow<'static, str> {
        "select".into()
    }
    fn attrs(&self) -> String {
        format!("index={}, axis={}", self.index, self.axis)
    }
    /// Selecting along the sequence axis removes it, and its mask.
    fn mask_flow(&self) -> MaskFlow {
        if self.axis == 1 {
            MaskFlow::Drop
        } else {
            MaskFlow::First
        }
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(1, usize::MAX, "a value of rank ≥ 1")?;
        let s = cx.s();
        let Some((a, i)) = self.resolve(s) else {
            return Err(Diagnostic::error(
                "mtl::select",
                format!(
                    "axis {} is out of range for {}",
                    self.axis,
                    shape_str(cx.x())
                ),
            )
            .label(cx.span(), "select here")
            .help(format!(
                "number the per-sample axes from 1 (1..={}), or -1 for the last",
                s.len()
            )));
        };
        let len = cx.fixed(&s[a], "the axis `select` takes a position from")?;
        if i.is_none() {
            return Err(cx
                .at_input(
                    Diagnostic::error(
                        "mtl::select",
                        format!("index {} is out of range for an axis of {len}", self.index),
                    )
                    .label(cx.span(), "select here"),
                )
                .help(format!("use 0..{len}, or -1 for the last position")));
        }
        let mut out = s.to_vec();
        out.remove(a);
        Ok(Typed::new(Type::f32(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer};
    use super::*;

    #[test]
    fn flatten_multiplies_out() {
        assert_eq!(
            infer(Op::Flatten(Flatten), &[f32(&[2, 3, 4])]).unwrap().ty,
            f32(&[24])
        );
    }

    #[test]
    fn reshape_fills_one_hole() {
        let op = |s: &[i64]| Op::Reshape(Reshape { shape: s.to_vec() });
        assert_eq!(
            infer(op(&[4, -1]), &[f32(&[2, 6])]).unwrap().ty,
            f32(&[4, 3])
        );
        assert_eq!(code(infer(op(&[5, -1]), &[f32(&[2, 6])])), "mtl::reshape");
        assert_eq!(code(infer(op(&[-1, -1]), &[f32(&[2, 6])])), "mtl::reshape");
    }

    #[test]
    fn select_takes_one_position() {
        let op = |index, axis| Op::Select(Select { index, axis });
        assert_eq!(infer(op(0, 1), &[f32(&[12, 16])]).unwrap().ty, f32(&[16]));
        assert_eq!(infer(op(-1, -1), &[f32(&[12, 16])]).unwrap().ty, f32(&[12]));
        assert_eq!(code(infer(op(12, 1), &[f32(&[12, 16])])), "mtl::select");
        assert_eq!(code(infer(op(0, 3), &[f32(&[12, 16])])), "mtl::select");
    }

    #[test]
    fn permute_numbers_axes_from_one() {
        let op = |a: &[usize]| Op::Permute(Permute { axes: a.to_vec() });
        assert_eq!(
            infer(op(&[2, 1]), &[f32(&[3, 5])]).unwrap().ty,
            f32(&[5, 3])
        );
        assert_eq!(code(infer(op(&[0, 1]), &[f32(&[3, 5])])), "mtl::permute");
    }
}
