//! Gradient methods on a forward split at the shared boundary: the pieces
//! (each head's backward stopping at the boundary, the shared region seeded
//! there, auxiliary losses added unchanged) must reassemble exactly the
//! gradients of an ordinary backward.

mod common;

use candle_core::{Device, Tensor};
use common::{abs_max, abs_sum, graph, max_abs_diff, options, random_inputs};
use mtl::lower::{init_params, lower, Cut, Forward, Params, Program};
use mtl::pipeline::Mode;
use mtl::train::combine;
use mtl::train::config::Weighting;
use rand::SeedableRng;
use std::collections::HashMap;

/// A trunk all heads share, a layer two branches share (one per head, so its
/// parameters are shared though no step is), a head reading the trunk
/// directly, and a contrastive auxiliary loss across the branches.
const MODEL: &str = r#"
model split {
  input x: f32[6]
  let trunk = x -> dense(8) as trunk -> tanh -> dense(8) as trunk2 -> tanh
  let a = trunk -> dense(5) as branch_a -> tanh
  let b = trunk -> dense(5) as branch_b -> tanh
  shared proj = dense(4)
  let a2 = a -> proj
  let b2 = b -> proj
  head h1 = a2 -> dense(2) as out1 { loss: mse }
  head h2 = b2 -> dense(1) as out2 { loss: mse }
  head h3 = trunk -> dense(3) as out3 { loss: mse }
  loss align = contrastive(a2, b2, learn_temperature = true) { weight: 0.3 }
}
"#;

fn program() -> Program {
    let c = mtl::compile_str("split.mtl", MODEL, &options(Mode::Train));
    lower(&graph(c), Mode::Train).expect("lowers")
}

/// Head losses (squared error against fixed targets) and the aux loss.
fn losses(p: &Program, params: &Params, fwd: &Forward) -> (Vec<Tensor>, Tensor) {
    let dev = Device::Cpu;
    let hs = p
        .heads
        .iter()
        .enumerate()
        .map(|(i, (_, slot))| {
            let y = fwd.output(*slot).unwrap();
            let t = Tensor::arange(0f32, y.elem_count() as f32, &dev)
                .unwrap()
                .reshape(y.dims())
                .unwrap()
                .affine(0.07, i as f64 - 0.5)
                .unwrap()
                .sin()
                .unwrap();
            (y - t).unwrap().sqr().unwrap().mean_all().unwrap()
        })
        .collect();
    let l = &p.losses[0];
    let scale = params.get("align.logit_scale").unwrap();
    let aux = mtl::train::contrastive::contrastive(
        fwd.output(l.slots[0]).unwrap(),
        fwd.output(l.slots[1]).unwrap(),
        scale,
    )
    .unwrap();
    (hs, (aux * l.weight).unwrap())
}

fn setup() -> (Program, Params, HashMap<String, Tensor>) {
    let p = program();
    let params = init_params(&p, 3, &Device::Cpu).unwrap();
    let x = random_inputs(&p, 7, 5, -1.0);
    (p, params, x)
}

fn forward(p: &Program, params: &Params, x: &HashMap<String, Tensor>, cut: Option<Cut>) -> Forward {
    let inputs = p.prepare_inputs(x, &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    match cut {
        Some(c) => p.forward_cut(params, inputs, &mut rng, c).unwrap(),
        None => p.forward(params, inputs, &mut rng).unwrap(),
    }
}

fn vars(params: &Params) -> Vec<(String, candle_core::Var)> {
    params
        .trainable
        .iter()
        .map(|k| (k.clone(), params.vars[k].clone()))
        .collect()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    let d = max_abs_diff(a, b);
    assert!(d <= 1e-5 * abs_max(b).max(1.0), "{what}: differs by {d}");
}

/// The trainable vars, which two or more heads share, and the forward cut
/// at the shared boundary.
fn split(
    p: &Program,
    params: &Params,
    x: &HashMap<String, Tensor>,
) -> (Vec<(String, candle_core::Var)>, Vec<bool>, Forward) {
    let vars = vars(params);
    let s = p.sharing();
    let keys: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    let shared = s.shared_flags(&keys);
    let fwd = forward(p, params, x, Some(s.cut()));
    (vars, shared, fwd)
}

#[test]
fn the_sharing_table_names_who_reaches_what() {
    let s = program().sharing();
    let heads = |prefix: &str| {
        let g = s.groups.iter().find(|g| g.prefix == prefix).unwrap();
        g.heads
            .iter()
            .map(|&h| s.heads[h].as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(heads("trunk"), ["h1", "h2", "h3"]);
    assert_eq!(heads("branch_a"), ["h1"]);
    assert_eq!(heads("proj.0"), ["h1", "h2"]);
    assert_eq!(heads("out3"), ["h3"]);
    let keys = s.shared_keys();
    assert!(keys.contains("proj.0.weight") && keys.contains("trunk2.bias"));
    assert!(!keys.contains("branch_b.weight") && !keys.contains("align.logit_scale"));
    // trunk2's activation is read by three branches: it is the boundary.
    assert_eq!(s.boundary.len(), 1);
}

/// With every coefficient 1 the split step equals one backward of Σ L_i + aux.
#[test]
fn split_backward_reassembles_the_plain_gradient() {
    let (p, params, x) = setup();
    let plain = forward(&p, &params, &x, None);
    let (hs, aux) = losses(&p, &params, &plain);
    let mut total = aux.clone();
    for h in &hs {
        total = (total + h).unwrap();
    }
    let want = total.backward().unwrap();
    let (vars, shared, split) = split(&p, &params, &x);
    assert_eq!(split.leaves.len(), p.sharing().boundary.len());
    let (hs, aux) = losses(&p, &params, &split);
    let cp = combine::Params {
        vars: &vars,
        shared: &shared,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut state = combine::MethodState::default();
    let (got, alpha) = combine::step(
        Weighting::Fixed, // every coefficient 1
        &mut state,
        &split,
        &hs,
        &[true, true, true],
        Some(&aux),
        &cp,
        &mut rng,
        None,
    )
    .unwrap();
    assert_eq!(alpha, vec![1.0, 1.0, 1.0]);
    for ((k, v), g) in vars.iter().zip(&got) {
        let w = want
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{k}: no plain gradient"));
        close(
            g.as_ref()
                .unwrap_or_else(|| panic!("{k}: no split gradient")),
            w,
            k,
        );
    }
}

/// MGDA-UB: shared parameters get Σ α_i ∇L_i, a head's own its ∇L_i, and a
/// head without labels gets α = 0 and no pull on anything.
#[test]
fn mgda_weights_shared_parameters_only_and_skips_absent_heads() {
    let (p, params, x) = setup();
    let (vars, shared, split) = split(&p, &params, &x);
    let (hs, _) = losses(&p, &params, &split);
    let cp = combine::Params {
        vars: &vars,
        shared: &shared,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut state = combine::MethodState::default();
    let present = [true, false, true];
    let (got, alpha) = combine::step(
        Weighting::Mgda,
        &mut state,
        &split,
        &hs,
        &present,
        None,
        &cp,
        &mut rng,
        None,
    )
    .unwrap();
    assert_eq!(alpha[1], 0.0);
    assert!((alpha[0] + alpha[2] - 1.0).abs() < 1e-9 && alpha[0] >= 0.0 && alpha[2] >= 0.0);
    // Each head's own gradient from a plain forward.
    let per_head: Vec<_> = [0usize, 2]
        .iter()
        .map(|&i| {
            let plain = forward(&p, &params, &x, None);
            losses(&p, &params, &plain).0[i].backward().unwrap()
        })
        .collect();
    for (((k, v), g), sh) in vars.iter().zip(&got).zip(&shared) {
        let mut want: Option<Tensor> = None;
        for (store, a) in per_head.iter().zip([alpha[0], alpha[2]]) {
            if let Some(gi) = store.get(v.as_tensor()) {
                let gi = if *sh { (gi * a).unwrap() } else { gi.clone() };
                want = Some(match want {
                    Some(w) => (w + gi).unwrap(),
                    None => gi,
                });
            }
        }
        match (g, want) {
            (Some(g), Some(w)) => close(g, &w, k),
            (None, None) => {}
            (Some(g), None) => {
                let n = abs_sum(g);
                assert!(n == 0.0, "{k}: a gradient ({n}) from the absent head");
            }
            (None, Some(_)) => panic!("{k}: missing gradient"),
        }
    }
}

/// A head that reaches nothing shared takes no part in the combination:
/// MGDA's min-norm point would otherwise be its zero vector and freeze the
/// shared trunk.
#[test]
fn a_head_outside_the_shared_part_does_not_freeze_it() {
    const SRC: &str = r#"
model apart {
  input x: f32[6]
  input z: f32[3]
  let trunk = x -> dense(8) as trunk -> tanh
  head h1 = trunk -> dense(2) as out1 { loss: mse }
  head h2 = trunk -> dense(1) as out2 { loss: mse }
  head h3 = z -> dense(2) as out3 { loss: mse }
}
"#;
    let c = mtl::compile_str("apart.mtl", SRC, &options(Mode::Train));
    let p = lower(&graph(c), Mode::Train).expect("lowers");
    let params = init_params(&p, 3, &Device::Cpu).unwrap();
    let x = random_inputs(&p, 7, 5, -1.0);
    let (vars, shared, split) = split(&p, &params, &x);
    let hs: Vec<Tensor> = p
        .heads
        .iter()
        .map(|(_, slot)| {
            split
                .output(*slot)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
        })
        .collect();
    let cp = combine::Params {
        vars: &vars,
        shared: &shared,
    };
    for method in [
        Weighting::Mgda,
        Weighting::build("nash_mtl", &[]).unwrap(),
        Weighting::Pcgrad,
    ] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut state = combine::MethodState::default();
        let (got, alpha) = combine::step(
            method, &mut state, &split, &hs, &[true; 3], None, &cp, &mut rng, None,
        )
        .unwrap();
        assert!(alpha.iter().all(|a| a.is_finite()), "{method:?}: {alpha:?}");
        let i = vars.iter().position(|(k, _)| k == "trunk.weight").unwrap();
        let norm = abs_sum(got[i].as_ref().expect("trunk gradient"));
        assert!(norm > 0.0, "{method:?}: the shared trunk got no gradient");
    }
}
