//! The planned kernels of attention, norms, pooling over steps, axis moves
//! and fusions: numeric code over slices, computing what the candle path's
//! calls (`lower::calls`) compute.

use crate::kernels::attention::{short_keys, Sdpa};
use crate::kernels::lanes::copy_short;
use crate::kernels::linear;
use crate::kernels::par::lane_sum;

/// 1 at real positions (token id ≠ 0), 0 at padding.
fn valid(ids: &[u32]) -> impl Iterator<Item = f32> + '_ {
    ids.iter().map(|i| if *i == 0 { 0.0 } else { 1.0 })
}

/// The allowed (query, key) pairs [B, Tq, Tk] as `lower::calls` builds them:
/// real queries × real keys × (causal) earlier keys; `None` allows all.
fn allowed(
    (b, tq, tk): (usize, usize, usize),
    (queries, keys): (Option<&[u32]>, Option<&[u32]>),
    causal: bool,
) -> Result<Option<Vec<f32>>, String> {
    if queries.is_none() && keys.is_none() && !causal {
        return Ok(None);
    }
    let rows = |m: Option<&[u32]>, t: usize| -> Result<Vec<f32>, String> {
        match m {
            Some(ids) if ids.len() == b * t => Ok(valid(ids).collect()),
            Some(ids) => Err(format!("a mask of {} ids for {b} × {t}", ids.len())),
            None => Ok(vec![1.0; b * t]),
        }
    };
    let (qm, km) = (rows(queries, tq)?, rows(keys, tk)?);
    let mut out = vec![0f32; b * tq * tk];
    for s in 0..b {
        for i in 0..tq {
            for j in 0..tk {
                out[(s * tq + i) * tk + j] = if causal && j > i {
                    0.0
                } else {
                    qm[s * tq + i] * km[s * tk + j]
                };
            }
        }
    }
    Ok(Some(out))
}

/// [B, T, H, d] → [B, H, T, d].
fn heads_first(src: &[f32], dst: &mut [f32], (t, h, d): (usize, usize, usize)) {
    for (sb, db) in src.chunks(t * h * d).zip(dst.chunks_mut(t * h * d)) {
        for ti in 0..t {
            for hi in 0..h {
                copy_short(&mut db[(hi * t + ti) * d..][..d], &sb[(ti * h + hi) * d..]);
            }
        }
    }
}

/// One attention's geometry: heads, key and value widths, query and key
/// lengths, causal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub heads: usize,
    pub kd: usize,
    pub vd: usize,
    pub tq: usize,
    pub tk: usize,
    pub causal: bool,
}

/// (Wᵀ, bias) of a projection.
pub(super) type Proj<'a> = (&'a [f32], &'a [f32]);

/// [B, H, T, d] → [B, T, H, d] (the inverse of [`heads_first`]).
fn heads_last(src: &[f32], dst: &mut [f32], (t, h, d): (usize, usize, usize)) {
    for (sb, db) in src.chunks(t * h * d).zip(dst.chunks_mut(t * h * d)) {
        for hi in 0..h {
            for ti in 0..t {
                copy_short(&mut db[(ti * h + hi) * d..][..d], &sb[(hi * t + ti) * d..]);
            }
        }
    }
}

/// Multi-head attention: the projections as GEMMs, our fused scaled dot
/// product per (sample, head), the output projection (when `out` has one).
/// `t`: the nine scratch buffers the schedule gave the step; `saved`
/// (training): where Q, K and V by heads, the probabilities and the merged
/// heads are kept for [`attention_grads`].
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    g: &Geometry,
    (wq, wk, wv, wo): (Proj, Proj, Proj, Option<Proj>),
    (query, context): (&[f32], &[f32]),
    masks: (Option<&[u32]>, Option<&[u32]>),
    batch: usize,
    (t, saved): (&mut [&mut [f32]], Option<&mut Vec<Vec<f32>>>),
    out: &mut [f32],
) -> Result<(), String> {
    let (h, kd, vd, tq, tk) = (g.heads, g.kd, g.vd, g.tq, g.tk);
    let (hk, hv) = (h * kd, h * vd);
    let [q, k, v, qh, kh, vh, o, probs, om] = t else {
        return Err("attention scratch".into());
    };
    let (dq, dc) = (wq.0.len() / hk, wk.0.len() / hk);
    linear::forward_into(q, query, wq.0, wq.1, (batch * tq, dq, hk), false);
    linear::forward_into(k, context, wk.0, wk.1, (batch * tk, dc, hk), false);
    linear::forward_into(v, context, wv.0, wv.1, (batch * tk, dc, hv), false);
    let mask = allowed((batch, tq, tk), masks, g.causal)?;
    // Keras scales the query before the product; our op scales the scores.
    let op = Sdpa::new(1.0 / (kd as f32).sqrt(), mask, false);
    let merged: &mut [f32] = if wo.is_some() { om } else { &mut *out };
    if short_keys(tk, kd) && saved.is_none() {
        op.forward_rows_into((q, k, v), (batch, h, tq, tk, kd, vd), merged);
        return project(wo, om, out, (batch * tq, hv));
    }
    heads_first(q, qh, (tq, h, kd));
    heads_first(k, kh, (tk, h, kd));
    heads_first(v, vh, (tk, h, vd));
    op.forward_into((qh, kh, vh), (batch, h, tq, tk, kd, vd), o, probs);
    // [B, H, Tq, V] → [B, Tq, H·V], then the output projection.
    heads_last(o, merged, (tq, h, vd));
    if let Some(saved) = saved {
        let keep: [&[f32]; 5] = [qh, kh, vh, probs, merged];
        saved.resize_with(keep.len(), Vec::new);
        for (s, v) in saved.iter_mut().zip(keep) {
            s.clear();
            s.extend_from_slice(v);
        }
    }
    project(wo, om, out, (batch * tq, hv))
}

/// The backward of a training [`attention`] from its output's gradient
/// `gy` and what it kept (`saved`): the output projection's weight and bias
/// gradients added to `dwo` (`wo`: its weight [D, H·V], if it has one), and
/// the gradients of the projected Q, K and V rows ([B, T, H·K] or [H·V]),
/// which the projections' backward carries to their weights and operands.
pub(super) fn attention_grads(
    g: &Geometry,
    wo: Option<&[f32]>,
    dwo: (&mut [f32], &mut [f32]),
    saved: &[Vec<f32>],
    batch: usize,
    gy: &[f32],
) -> Result<[Vec<f32>; 3], String> {
    let [qh, kh, vh, probs, merged] = saved else {
        return Err("the forward kept no attention states".into());
    };
    let (h, kd, vd, tq, tk) = (g.heads, g.kd, g.vd, g.tq, g.tk);
    let hv = h * vd;
    let dmerged = match wo {
        Some(w) => {
            let mut d = vec![0f32; batch * tq * hv];
            let dims = (batch * tq, hv, gy.len() / (batch * tq).max(1));
            linear::backward_into(merged, w, gy, dims, Some(&mut d), dwo.0, dwo.1);
            d
        }
        None => gy.to_vec(),
    };
    let mut doh = vec![0f32; dmerged.len()];
    heads_first(&dmerged, &mut doh, (tq, h, vd));
    let (mut dqh, mut dkh, mut dvh) = (
        vec![0f32; qh.len()],
        vec![0f32; kh.len()],
        vec![0f32; vh.len()],
    );
    let op = Sdpa::new(1.0 / (kd as f32).sqrt(), None, false);
    let dims = (batch, h, tq, tk, kd, vd);
    op.backward_into(
        (qh, kh, vh),
        probs,
        &doh,
        dims,
        (&mut dqh, &mut dkh, &mut dvh),
    );
    let rows = |src: &[f32], (t, d): (usize, usize)| {
        let mut r = vec![0f32; src.len()];
        heads_last(src, &mut r, (t, h, d));
        r
    };
    Ok([
        rows(&dqh, (tq, kd)),
        rows(&dkh, (tk, kd)),
        rows(&dvh, (tk, vd)),
    ])
}

/// The output projection of the merged heads `om` ([rows, hv]) into `out`,
/// if there is one.
fn project(
    wo: Option<Proj>,
    om: &[f32],
    out: &mut [f32],
    (rows, hv): (usize, usize),
) -> Result<(), String> {
    if let Some((w, b)) = wo {
        linear::forward_into(out, om, w, b, (rows, hv, b.len()), false);
    }
    Ok(())
}

/// Layer norm over rows of `d` values (biased variance, as Keras and candle).
pub(super) fn layer_norm(x: &[f32], (w, b): (&[f32], &[f32]), eps: f64, out: &mut [f32]) {
    let d = w.len();
    // Sums in 8 lanes and loops compiled for the widest vector unit: one
    // sequential f32 sum per row ran 0.9 ns a value on `captions`.
    crate::kernels::par::widest(
        #[inline(always)]
        || {
            let mut dev = vec![0f32; d];
            for (xr, yr) in x.chunks(d).zip(out.chunks_mut(d)) {
                let mean = lane_sum(xr) / d as f32;
                dev.iter_mut()
                    .zip(xr)
                    .for_each(|(e, v)| *e = (v - mean) * (v - mean));
                let inv = 1.0 / (lane_sum(&dev) / d as f32 + eps as f32).sqrt();
                for (((y, v), w), b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    *y = (v - mean) * inv * w + b;
                }
            }
        },
    )
}

/// The mean over the steps of each [T, D] sample; under a mask, over real
/// steps only (0 where there are none).
pub(super) fn mean_steps(x: &[f32], (t, d): (usize, usize), ids: Option<&[u32]>, out: &mut [f32]) {
    for (s, (xs, ys)) in x.chunks(t * d).zip(out.chunks_mut(d)).enumerate() {
        ys.fill(0.0);
        for (row, wt) in xs.chunks(d).zip(&step_weights(ids, s, t)) {
            ys.iter_mut().zip(row).for_each(|(y, v)| *y += wt * v);
        }
    }
}

/// The backward of [`mean_steps`]: each step's share of the gradient added
/// to `dx`.
pub(super) fn mean_steps_backward(
    gy: &[f32],
    (t, d): (usize, usize),
    ids: Option<&[u32]>,
    dx: &mut [f32],
) {
    for (s, (dxs, g)) in dx.chunks_mut(t * d).zip(gy.chunks(d)).enumerate() {
        for (row, wt) in dxs.chunks_mut(d).zip(&step_weights(ids, s, t)) {
            row.iter_mut().zip(g).for_each(|(r, g)| *r += wt * g);
        }
    }
}

/// Sample `s`'s weight per step: 1/T, or 1/(real steps) at real steps only.
fn step_weights(ids: Option<&[u32]>, s: usize, t: usize) -> Vec<f32> {
    match ids {
        Some(ids) => {
            let m: Vec<f32> = valid(&ids[s * t..(s + 1) * t]).collect();
            let n = m.iter().sum::<f32>().max(1.0);
            m.iter().map(|v| v / n).collect()
        }
        None => vec![1.0 / t as f32; t],
    }
}

/// Each sample's axes moved: output axis `i` is input axis `axes[i]`.
pub(super) fn permute(x: &[f32], dims: &[usize], axes: &[usize], out: &mut [f32]) {
    let len: usize = dims.iter().product();
    let mut strides = vec![1; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * dims[a + 1];
    }
    let out_dims: Vec<usize> = axes.iter().map(|a| dims[*a]).collect();
    let Some((&last, lead)) = axes.split_last() else {
        out.copy_from_slice(x);
        return;
    };
    // Output row by output row (all axes but the last), each one strided
    // read: an index computed per value measured 5 ns a value.
    let (row, step) = (dims[last], strides[last]);
    for (xs, ys) in x.chunks(len).zip(out.chunks_mut(len)) {
        let mut idx = vec![0; lead.len()];
        for yr in ys.chunks_exact_mut(row) {
            let at: usize = idx.iter().zip(lead).map(|(i, a)| i * strides[*a]).sum();
            for (k, y) in yr.iter_mut().enumerate() {
                *y = xs[at + k * step];
            }
            // The next output row, its last leading axis fastest.
            for a in (0..idx.len()).rev() {
                idx[a] += 1;
                if idx[a] < out_dims[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
}

/// g = σ([a, b]·Wᵀ + c); out = g·a + (1 − g)·b.
pub(super) fn gated(
    (a, b): (&[f32], &[f32]),
    (wt, bias): (&[f32], &[f32]),
    d: usize,
    (cat, g): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let n = a.len() / d;
    for ((c, a), b) in cat.chunks_mut(2 * d).zip(a.chunks(d)).zip(b.chunks(d)) {
        c[..d].copy_from_slice(a);
        c[d..].copy_from_slice(b);
    }
    linear::forward_into(g, cat, wt, bias, (n, 2 * d, d), false);
    for (((y, g), a), b) in out.iter_mut().zip(g.iter()).zip(a).zip(b) {
        let g = 1.0 / (1.0 + (-g).exp());
        *y = g * a + (1.0 - g) * b;
    }
}

/// The backward of [`gated`] from its output's gradient `gy`: the gate's
/// weight [d, 2d] and bias gradients added to `dw` and `db`, and the
/// gradients of `a` and `b` returned (the gate recomputed from them).
pub(super) fn gated_grads(
    (a, b): (&[f32], &[f32]),
    (wt, bias, w): (&[f32], &[f32], &[f32]),
    d: usize,
    gy: &[f32],
    (dw, db): (&mut [f32], &mut [f32]),
) -> (Vec<f32>, Vec<f32>) {
    let n = a.len() / d;
    let (mut cat, mut g) = (vec![0f32; n * 2 * d], vec![0f32; n * d]);
    let mut y = vec![0f32; n * d];
    gated((a, b), (wt, bias), d, (&mut cat, &mut g), &mut y);
    let (mut da, mut dbv) = (vec![0f32; a.len()], vec![0f32; b.len()]);
    // g again as the forward's σ; dz = gy·(a − b)·g(1 − g).
    let mut dz = vec![0f32; n * d];
    for k in 0..n * d {
        let s = 1.0 / (1.0 + (-g[k]).exp());
        da[k] = s * gy[k];
        dbv[k] = (1.0 - s) * gy[k];
        dz[k] = gy[k] * (a[k] - b[k]) * s * (1.0 - s);
    }
    let mut dcat = vec![0f32; n * 2 * d];
    linear::backward_into(&cat, w, &dz, (n, 2 * d, d), Some(&mut dcat), dw, db);
    for ((c, da), dbv) in dcat
        .chunks(2 * d)
        .zip(da.chunks_mut(d))
        .zip(dbv.chunks_mut(d))
    {
        da.iter_mut().zip(&c[..d]).for_each(|(x, v)| *x += v);
        dbv.iter_mut().zip(&c[d..]).for_each(|(x, v)| *x += v);
    }
    (da, dbv)
}

/// Σᵢ softmax(gate·Wᵀ + b)ᵢ · expertᵢ per sample.
pub(super) fn mixture(
    experts: &[&[f32]],
    gate: &[f32],
    (wt, bias): (&[f32], &[f32]),
    logits: &mut [f32],
    out: &mut [f32],
) {
    let e = experts.len();
    let n = logits.len() / e;
    linear::forward_into(logits, gate, wt, bias, (n, gate.len() / n, e), false);
    logits
        .chunks_mut(e)
        .for_each(crate::kernels::softmax::softmax_row);
    let len = out.len() / n;
    for (s, ys) in out.chunks_mut(len).enumerate() {
        for (i, ex) in experts.iter().enumerate() {
            let g = logits[s * e + i];
            let xs = &ex[s * len..(s + 1) * len];
            if i == 0 {
                ys.iter_mut().zip(xs).for_each(|(y, v)| *y = v * g);
            } else {
                ys.iter_mut().zip(xs).for_each(|(y, v)| *y += v * g);
            }
        }
    }
}

/// A mixture's gate probabilities [N, E]: softmax(gate·Wᵀ + b) per sample,
/// as [`mixture`] computes them.
pub(super) fn gate_probs(gate: &[f32], (wt, bias): (&[f32], &[f32]), e: usize) -> Vec<f32> {
    let n = gate.len() / (wt.len() / e).max(1);
    let mut p = vec![0f32; n * e];
    linear::forward_into(&mut p, gate, wt, bias, (n, gate.len() / n.max(1), e), false);
    p.chunks_mut(e)
        .for_each(crate::kernels::softmax::softmax_row);
    p
}

/// The gradient of a mixture's gate logits [N, E] from its output's `gy`:
/// dpᵢ = gy·expertᵢ per sample, then through the softmax
/// (dz = p ⊙ (dp − Σ p·dp)).
pub(super) fn mixture_gate_grad(experts: &[&[f32]], p: &[f32], gy: &[f32]) -> Vec<f32> {
    let e = experts.len();
    let n = p.len() / e;
    let len = gy.len() / n.max(1);
    let mut dz = vec![0f32; n * e];
    for (s, (dzs, ps)) in dz.chunks_mut(e).zip(p.chunks(e)).enumerate() {
        let g = &gy[s * len..(s + 1) * len];
        for (d, ex) in dzs.iter_mut().zip(experts) {
            *d = g.iter().zip(&ex[s * len..]).map(|(a, b)| a * b).sum();
        }
        let dot: f32 = dzs.iter().zip(ps).map(|(d, p)| d * p).sum();
        dzs.iter_mut()
            .zip(ps)
            .for_each(|(d, p)| *d = p * (*d - dot));
    }
    dz
}

/// The operands' gradients of a left fold of maxima (`max`) or minima,
/// as candle's backward of each pairwise step gives them: where a step's
/// two sides tie, each gets half.
pub(super) fn extremum_grads(xs: &[&[f32]], max: bool, gy: &[f32]) -> Vec<Vec<f32>> {
    let n = xs.len();
    let mut d = vec![vec![0f32; gy.len()]; n];
    let mut acc = vec![0f32; n];
    for (j, g) in gy.iter().enumerate() {
        acc[0] = xs[0][j];
        for k in 1..n {
            let v = xs[k][j];
            acc[k] = if max {
                acc[k - 1].max(v)
            } else {
                acc[k - 1].min(v)
            };
        }
        let mut g = *g;
        for k in (1..n).rev() {
            let (ml, mr) = (
                f32::from(u8::from(acc[k] == acc[k - 1])),
                f32::from(u8::from(acc[k] == xs[k][j])),
            );
            d[k][j] = mr * g / (ml + 1.0);
            g = ml * g / (mr + 1.0);
        }
        d[0][j] = g;
    }
    d
}

#[cfg(test)]
mod tests {
    /// Maxima and minima of three operands, with two- and three-way ties:
    /// the operands' gradients equal candle's backward of the same fold.
    #[test]
    fn extremum_grads_equal_candle_with_ties() {
        use candle_core::{Device, Tensor, Var};
        let xs: [Vec<f32>; 3] = [
            vec![1.0, 2.0, 3.0, 0.5, 4.0, -1.0],
            vec![1.0, 5.0, 0.0, 0.5, 4.0, -2.0],
            vec![1.0, 2.0, 3.0, 0.7, 3.0, -1.0],
        ];
        let gy = [0.3f32, -1.1, 2.0, 0.9, 1.7, -0.4];
        for max in [true, false] {
            let vars: Vec<Var> = xs
                .iter()
                .map(|x| Var::new(x.as_slice(), &Device::Cpu).unwrap())
                .collect();
            let mut acc = vars[0].as_tensor().clone();
            for v in &vars[1..] {
                acc = if max {
                    acc.maximum(v.as_tensor()).unwrap()
                } else {
                    acc.minimum(v.as_tensor()).unwrap()
                };
            }
            let g = Tensor::new(&gy[..], &Device::Cpu).unwrap();
            let store = (acc * g).unwrap().sum_all().unwrap().backward().unwrap();
            let slices: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
            let ours = super::extremum_grads(&slices, max, &gy);
            for (v, o) in vars.iter().zip(&ours) {
                let want: Vec<f32> = store.get(v.as_tensor()).unwrap().to_vec1().unwrap();
                assert_eq!(&want, o, "max {max}");
            }
        }
    }

    /// Every axis order of a [2, 3, 4] sample (two samples) moves each value
    /// where its index says.
    #[test]
    fn permute_moves_each_value_to_its_permuted_index() {
        let dims = [2, 3, 4];
        let x: Vec<f32> = (0..48).map(|i| i as f32).collect();
        for axes in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let mut out = vec![0f32; 48];
            super::permute(&x, &dims, &axes, &mut out);
            let od: Vec<usize> = axes.iter().map(|a| dims[*a]).collect();
            for s in 0..2 {
                for i in 0..od[0] {
                    for j in 0..od[1] {
                        for k in 0..od[2] {
                            let mut idx = [0; 3];
                            idx[axes[0]] = i;
                            idx[axes[1]] = j;
                            idx[axes[2]] = k;
                            let src = s * 24 + (idx[0] * 3 + idx[1]) * 4 + idx[2];
                            let dst = s * 24 + (i * od[1] + j) * od[2] + k;
                            assert_eq!(out[dst], x[src], "axes {axes:?}");
                        }
                    }
                }
            }
        }
    }
}
