//! One training step of a gradient method (PCGrad, CAGrad, MGDA-UB, IMTL-G,
//! Nash-MTL, Aligned-MTL) on a forward split at the shared boundary
//! ([`crate::lower::Sharing`]).
//!
//! Each head's backward stops at the boundary leaves, so it costs only that
//! head's own layers and yields the head's gradient at the last shared
//! representation. The shared region is then differentiated once per head
//! (seeded with that gradient: `Σ_c ⟨z_c, ∂L_i/∂z_c⟩` has the parameter
//! gradient `J_iᵀ ∂L_i/∂z`), or once in all for MGDA-UB, whose weights come
//! from the representation gradients alone. Every method's update is a
//! combination `Σ_i α_i g_i` of the task gradients, so the methods need only
//! the k×k Gram matrix of the gradients over the shared parameters.

use super::config::Weighting;
use super::optim::grads_for;
use super::weighting::{aligned_mtl, cagrad, imtl, mgda, nash_mtl, pcgrad, Gram};
use crate::distributed::{all_reduce_grads, Collective};
use crate::lower::Forward;
use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use rand::rngs::StdRng;

/// What a gradient method keeps between steps.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MethodState {
    /// Nash-MTL's previous solution, per head (its warm start).
    pub nash_mtl: Option<Vec<f64>>,
}

/// The per-step inputs: parameters, which of them two or more heads share.
pub struct Params<'a> {
    pub vars: &'a [(String, Var)],
    /// Aligned with `vars`.
    pub shared: &'a [bool],
}

type Grads = Vec<Option<Tensor>>;

fn add(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, b) => a.or(b),
    })
}

fn scaled(g: &Option<Tensor>, s: f64) -> Result<Option<Tensor>> {
    if s == 1.0 {
        return Ok(g.clone());
    }
    g.as_ref().map(|g| g * s).transpose()
}

/// The gradients reaching the boundary leaves, aligned with `fwd.leaves`.
fn leaf_grads(fwd: &Forward, store: &GradStore) -> Grads {
    fwd.leaves
        .iter()
        .map(|(_, v)| store.get(v.as_tensor()).cloned())
        .collect()
}

/// Parameter gradients of the shared region seeded at the boundary with
/// `seeds` (aligned with `fwd.leaves`): one backward through the region.
fn through_region(fwd: &Forward, seeds: &[Option<Tensor>], p: &Params) -> Result<Grads> {
    let mut surrogate: Option<Tensor> = None;
    for ((slot, _), seed) in fwd.leaves.iter().zip(seeds) {
        let (Some(seed), Some(z)) = (seed, fwd.get(*slot)) else {
            continue;
        };
        let term = (z * seed)?.sum_all()?;
        surrogate = add(surrogate, Some(term))?;
    }
    match surrogate {
        Some(s) => Ok(grads_for(p.vars, &s.backward()?)),
        None => Ok(vec![None; p.vars.len()]),
    }
}

/// Σ_i α_i·xs_i, per entry, skipping absent tensors.
fn combination(xs: &[Grads], alpha: &[f64], n: usize) -> Result<Grads> {
    let mut out: Grads = vec![None; n];
    for (x, a) in xs.iter().zip(alpha) {
        for (o, g) in out.iter_mut().zip(x) {
            *o = add(o.take(), scaled(g, *a)?)?;
        }
    }
    Ok(out)
}

/// The Gram matrix of the vectors `xs` restricted to the entries `keep`:
/// each task's entries flattened into one row (zeros where it has none),
/// then one matrix product.
/// With `comm`, the vectors are this rank's parts of longer ones (gradients
/// at its own samples' activations) and the products are summed over ranks.
fn gram(xs: &[Grads], keep: &[bool], comm: Option<&dyn Collective>) -> Result<Gram> {
    let k = xs.len();
    // Per kept entry, one task's gradient there (for the zeros of the others).
    let entries: Vec<(usize, &Tensor)> = keep
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .filter_map(|(e, _)| xs.iter().find_map(|x| x[e].as_ref()).map(|t| (e, t)))
        .collect();
    if k == 0 || entries.is_empty() {
        let mut m = vec![0.0; k * k];
        if let Some(c) = comm {
            c.all_reduce_f64(&mut m)?;
        }
        return Ok(Gram::new(k, m));
    }
    let mut rows = vec![];
    for x in xs {
        let parts: Vec<Tensor> = entries
            .iter()
            .map(|&(e, other)| match &x[e] {
                Some(t) => t.flatten_all()?.to_dtype(DType::F32),
                None => other.flatten_all()?.to_dtype(DType::F32)?.zeros_like(),
            })
            .collect::<Result<_>>()?;
        rows.push(Tensor::cat(&parts, 0)?);
    }
    let g = Tensor::stack(&rows, 0)?;
    let m: Vec<Vec<f32>> = g.matmul(&g.t()?)?.to_vec2()?;
    let mut m: Vec<f64> = m.into_iter().flatten().map(f64::from).collect();
    if let Some(c) = comm {
        c.all_reduce_f64(&mut m)?;
    }
    Ok(Gram::new(k, m))
}

/// The method's coefficients α over the present tasks, from their Gram matrix.
fn coefficients(
    method: Weighting,
    g: &Gram,
    present: &[usize],
    state: &mut MethodState,
    rng: &mut StdRng,
    heads: usize,
) -> Vec<f64> {
    // A task whose gradient over the shared part is zero (a head that
    // reaches none of it) takes no part: MGDA's min-norm point would
    // otherwise be that zero vector and stop all shared learning. Its
    // coefficient is moot (it pulls on nothing shared); it is logged as 1.
    let live: Vec<usize> = (0..g.k).filter(|&i| g.at(i, i) > 0.0).collect();
    if live.len() == g.k {
        return method_coefficients(method, g, present, state, rng, heads);
    }
    let mut alpha = vec![1.0; g.k];
    if !live.is_empty() {
        let heads_live: Vec<usize> = live.iter().map(|&i| present[i]).collect();
        let a = method_coefficients(method, &g.subset(&live), &heads_live, state, rng, heads);
        for (&i, a) in live.iter().zip(a) {
            alpha[i] = a;
        }
    }
    alpha
}

/// The method proper, on tasks that all have a shared gradient.
fn method_coefficients(
    method: Weighting,
    g: &Gram,
    present: &[usize],
    state: &mut MethodState,
    rng: &mut StdRng,
    heads: usize,
) -> Vec<f64> {
    match method {
        Weighting::Pcgrad => pcgrad::coefficients(g, &pcgrad::random_order(g.k, rng)),
        Weighting::Cagrad { c } => cagrad::coefficients(g, c),
        Weighting::Mgda => mgda::min_norm(g),
        Weighting::Imtl => imtl::coefficients(g),
        Weighting::NashMtl { .. } => {
            let prev = state.nash_mtl.get_or_insert_with(|| vec![1.0; heads]);
            let init: Vec<f64> = present.iter().map(|&i| prev[i]).collect();
            let alpha = nash_mtl::solve(g, Some(&init));
            for (&i, a) in present.iter().zip(&alpha) {
                prev[i] = *a;
            }
            alpha
        }
        Weighting::AlignedMtl => aligned_mtl::coefficients(g),
        // Loss-based schemes never reach here: equal weights.
        _ => vec![1.0; g.k],
    }
}

/// One step: the combined gradients (aligned with `p.vars`) and each head's
/// coefficient (0 for a head with no label in the batch). `losses` are the
/// heads' losses (file weights applied), `present` whether each has a label.
#[allow(clippy::too_many_arguments)]
pub fn step(
    method: Weighting,
    state: &mut MethodState,
    fwd: &Forward,
    losses: &[Tensor],
    present: &[bool],
    aux: Option<&Tensor>,
    p: &Params,
    rng: &mut StdRng,
    comm: Option<&dyn Collective>,
) -> Result<(Grads, Vec<f64>)> {
    let idx: Vec<usize> = (0..losses.len()).filter(|&i| present[i]).collect();
    // Parameter gradients summed over ranks (data-parallel training) before
    // any method reads them; gradients at the boundary stay per rank: they
    // belong to each rank's own samples.
    let summed = |g: Grads| all_reduce_grads(comm, g);
    // Each present head's backward, stopping at the boundary.
    let mut own: Vec<Grads> = vec![];
    let mut at_leaves: Vec<Grads> = vec![];
    for &i in &idx {
        let store = losses[i].backward()?;
        own.push(summed(grads_for(p.vars, &store))?);
        at_leaves.push(leaf_grads(fwd, &store));
    }
    let mut alpha_all = vec![0.0; losses.len()];
    let mut out = if method == Weighting::Mgda {
        // MGDA-UB (Sener & Koltun 2018, Sec. 3.3): the min-norm weights of the
        // gradients at the shared representation, then one backward of the
        // weighted sum through the shared region.
        let all_leaves = vec![true; fwd.leaves.len()];
        let gram = gram(&at_leaves, &all_leaves, comm)?;
        let alpha = coefficients(method, &gram, &idx, state, rng, 0);
        let seeds = combination(&at_leaves, &alpha, fwd.leaves.len())?;
        let region = summed(through_region(fwd, &seeds, p)?)?;
        let mut out = combine_own(&own, &alpha, p)?;
        for (o, r) in out.iter_mut().zip(region) {
            *o = add(o.take(), r)?;
        }
        for (&i, a) in idx.iter().zip(&alpha) {
            alpha_all[i] = *a;
        }
        out
    } else {
        // Full task gradients: own layers plus the shared region's share.
        let mut full: Vec<Grads> = vec![];
        for (g, seeds) in own.into_iter().zip(&at_leaves) {
            let region = summed(through_region(fwd, seeds, p)?)?;
            full.push(
                g.into_iter()
                    .zip(region)
                    .map(|(a, b)| add(a, b))
                    .collect::<Result<_>>()?,
            );
        }
        let alpha = coefficients(
            method,
            &gram(&full, p.shared, None)?,
            &idx,
            state,
            rng,
            losses.len(),
        );
        for (&i, a) in idx.iter().zip(&alpha) {
            alpha_all[i] = *a;
        }
        let mut out = combine_own(&full, &alpha, p)?;
        if let Weighting::NashMtl { max_norm } = method {
            clip_shared(&mut out, p.shared, max_norm)?;
        }
        out
    };
    // Auxiliary losses add their gradient unchanged.
    if let Some(a) = aux {
        let store = a.backward()?;
        let region = through_region(fwd, &leaf_grads(fwd, &store), p)?;
        let own = grads_for(p.vars, &store).into_iter().zip(region);
        let own = summed(own.map(|(g, r)| add(g, r)).collect::<Result<_>>()?)?;
        for (o, g) in out.iter_mut().zip(own) {
            *o = add(o.take(), g)?;
        }
    }
    Ok((out, alpha_all))
}

/// Shared parameters get Σ α_i g_i; a head's own parameters its gradient.
fn combine_own(xs: &[Grads], alpha: &[f64], p: &Params) -> Result<Grads> {
    let mut out: Grads = vec![None; p.vars.len()];
    for (e, o) in out.iter_mut().enumerate() {
        for (x, a) in xs.iter().zip(alpha) {
            let w = if p.shared[e] { *a } else { 1.0 };
            *o = add(o.take(), scaled(&x[e], w)?)?;
        }
    }
    Ok(out)
}

/// Nash-MTL's authors clip the shared parameters' gradient norm (max_norm 1; 0 = off).
fn clip_shared(out: &mut Grads, shared: &[bool], max_norm: f64) -> Result<()> {
    if max_norm <= 0.0 {
        return Ok(());
    }
    let mut sq = 0f64;
    for (g, _) in out.iter().zip(shared).filter(|(_, s)| **s) {
        if let Some(g) = g {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        for (g, _) in out.iter_mut().zip(shared).filter(|(_, s)| **s) {
            *g = scaled(g, max_norm / norm)?;
        }
    }
    Ok(())
}
