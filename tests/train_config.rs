//! The `train { }` block: keys, defaults and argument positions.

mod common;

use common::graph_and_train;
use mtl::train::config::{OptimizerKind, Schedule, TrainConfig, Weighting};

fn config(train: &str) -> TrainConfig {
    let src = format!("model m {{\n  input x: f32[4]\n  head y = x -> dense(1) {{ loss: mse }}\n  train {{ {train} }}\n}}");
    graph_and_train(mtl::compile_str("m.mtl", &src, &Default::default())).1
}

#[test]
fn schedule_arguments_by_position_and_name() {
    assert_eq!(
        config("schedule: step(5, 0.5)").schedule,
        Schedule::Step {
            every: 5,
            gamma: 0.5
        }
    );
    assert_eq!(
        config("schedule: step(gamma = 0.2)").schedule,
        Schedule::Step {
            every: 10,
            gamma: 0.2
        }
    );
    assert_eq!(
        config("schedule: cosine(warmup = 3)").schedule,
        Schedule::Cosine { warmup: 3 }
    );
}

#[test]
fn optimizer_and_weighting() {
    let t = config("optimizer: sgd(lr = 0.1, momentum = 0.9, nesterov = true)\n weighting: dwa\n batch_size: 8");
    assert_eq!(t.optimizer.kind, OptimizerKind::Sgd);
    assert_eq!(
        (t.optimizer.lr, t.optimizer.momentum, t.optimizer.nesterov),
        (0.1, 0.9, true)
    );
    assert_eq!(t.weighting, Weighting::Dwa);
    assert_eq!(t.batch_size, 8);
    let d = mtl::compile_str("m.mtl", "model m {\n  input x: f32[4]\n  head y = x -> dense(1) { loss: mse }\n  train { optimiser: adam }\n}", &Default::default());
    assert!(d
        .diagnostics
        .iter()
        .any(|d| d.code == "mtl::unknown-property"
            && d.help.as_deref() == Some("did you mean `optimizer`?")));
}
