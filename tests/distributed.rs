//! Data-parallel training under `mpirun` (Open MPI; `.ci/run` installs it):
//! two ranks give one process's final weights, rank 0 alone writes, a lost
//! rank ends the job with an error, and `--resume` continues the run.
//!
//! The in-process checks of the same semantics (ranks as threads) are in
//! `src/distributed` and `tests/weighting.rs`; these run the real binary.

mod common;

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "tests/distributed/dp.mtl";

/// A fresh scratch folder per test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtl-dp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mpirun() -> Command {
    mpirun_n(2)
}

fn mpirun_n(ranks: usize) -> Command {
    let ok = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need Open MPI's `mpirun` (apt-get install openmpi-bin libopenmpi-dev; .ci/run installs it)"
    );
    let mut c = Command::new("mpirun");
    // Root in CI containers; more ranks than cores on small machines.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .args(["-np", &ranks.to_string()]);
    c
}

/// 189 rows: 151 for training with batch 30 leave a last batch of one row,
/// which both ranks then run whole. A fifth of each label is missing.
fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("dp.csv");
    let mut s = String::from("x,z,c,y\n");
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    for i in 0..189 {
        let x: Vec<f64> = (0..16).map(|_| next()).collect();
        let z: Vec<f64> = (0..4).map(|_| next()).collect();
        let c = if i % 5 == 1 {
            String::new()
        } else {
            (((x[0] + x[1] + z[0]) * 1.5).round().clamp(-1.0, 1.0) as i64 + 1).to_string()
        };
        let y = if i % 5 == 3 {
            String::new()
        } else {
            format!("{:.5}", x[2] * 2.0 - z[1] + 0.1 * next())
        };
        let join = |v: &[f64]| {
            v.iter()
                .map(|a| format!("{a:.5}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        s.push_str(&format!("{},{},{c},{y}\n", join(&x), join(&z)));
    }
    std::fs::write(&path, s).unwrap();
    path
}

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

fn mtl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtl"));
    c.current_dir(common::root());
    c
}

fn run(mut c: Command) -> Output {
    let out = c.current_dir(common::root()).output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Per tensor: the largest difference relative to the tensor's largest
/// magnitude; the worst over tensors.
fn worst_relative(a: &Path, b: &Path) -> (f64, String) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    let mut worst = (0.0, String::new());
    for (k, x) in &a {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[k].flatten_all().unwrap().to_vec1().unwrap();
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        let d = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64;
        if d / scale > worst.0 {
            worst = (d / scale, k.clone());
        }
    }
    worst
}

#[test]
fn two_ranks_give_one_process_weights_and_rank_zero_alone_writes() {
    let tmp = scratch("equal");
    let data = write_data(&tmp);
    for weighting in [
        "fixed",
        "dwa",
        "uncertainty",
        "gradnorm",
        "famo",
        "rlw",
        "pcgrad",
        "mgda",
        "cagrad",
        "imtl",
        "nash_mtl",
        "aligned_mtl",
    ] {
        let (one, two) = (
            tmp.join(format!("one_{weighting}")),
            tmp.join(format!("two_{weighting}")),
        );
        let mut c = mtl();
        c.args(train_args(&data, &one))
            .args(["--weighting", weighting])
            .env("RAYON_NUM_THREADS", "1");
        run(c);
        let mut c = mpirun();
        c.arg(env!("CARGO_BIN_EXE_mtl"))
            .args(train_args(&data, &two))
            .args(["--weighting", weighting, "--distributed"]);
        run(c);
        for f in ["last.safetensors", "weights.safetensors"] {
            let (d, at) = worst_relative(&one.join(f), &two.join(f));
            assert!(d < 1e-4, "{weighting}: {f}: {at} differs by {d:e}");
        }
        // The same history: losses and metrics merged over ranks.
        let stats = |dir: &Path| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(dir.join("training_statistics.json")).unwrap(),
            )
            .unwrap()
        };
        let (s1, s2) = (stats(&one), stats(&two));
        for (e1, e2) in s1["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(s2["epochs"].as_array().unwrap())
        {
            for part in ["train", "val"] {
                let (a, b) = (e1[part]["loss"].as_f64(), e2[part]["loss"].as_f64());
                let (a, b) = (a.unwrap(), b.unwrap());
                assert!(
                    (a - b).abs() < 1e-4 * a.abs().max(1.0),
                    "{part}: {a} vs {b}"
                );
                let (a, b) = (&e1[part]["heads"]["c"], &e2[part]["heads"]["c"]);
                assert_eq!(a["accuracy"], b["accuracy"], "{weighting} {part}");
            }
        }
    }
    // Three ranks: another summation order, the same run.
    let three = tmp.join("three_fixed");
    let mut c = mpirun_n(3);
    c.arg(env!("CARGO_BIN_EXE_mtl"))
        .args(train_args(&data, &three))
        .arg("--distributed");
    run(c);
    let one = tmp.join("one_fixed");
    let (d, at) = worst_relative(
        &one.join("last.safetensors"),
        &three.join("last.safetensors"),
    );
    assert!(d < 1e-4, "three ranks: {at} differs by {d:e}");
    // Rank 0 alone wrote: one TensorBoard event file, no stray temporaries.
    let two = tmp.join("two_fixed");
    let events = std::fs::read_dir(two.join("tensorboard/train"))
        .unwrap()
        .count();
    assert_eq!(events, 1);
    let stray: Vec<_> = std::fs::read_dir(&two)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Starts a long two-rank run and returns it once its first epoch is
/// checkpointed.
fn start_long_run(data: &Path, out: &Path, extra: &[&str]) -> std::process::Child {
    let mut c = mpirun();
    c.arg(env!("CARGO_BIN_EXE_mtl"))
        .args(train_args(data, out))
        .args(["--distributed", "--epochs", "400"])
        .args(extra)
        .current_dir(common::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let started = Instant::now();
    while !out.join("state.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The PIDs of the ranks `mpirun` started (its `mtl` descendants).
fn rank_pids(launcher: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", env!("CARGO_BIN_EXE_mtl")])
        .output()
        .unwrap();
    let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p != launcher && descends_from(*p, launcher))
        .collect();
    pids.sort();
    pids
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..8 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(ppid) = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        pid = ppid;
    }
    false
}

fn wait_ended(
    mut child: std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            return (status, text);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the run did not end within {limit:?} after a rank was lost");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_and_resume_continues() {
    let tmp = scratch("kill");
    let data = write_data(&tmp);
    let out = tmp.join("run");
    let child = start_long_run(&data, &out, &[]);
    let pids = rank_pids(child.id());
    assert_eq!(pids.len(), 2, "ranks {pids:?}");
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    let (status, text) = wait_ended(child, Duration::from_secs(60));
    assert!(!status.success(), "{text}");
    eprintln!("ended {:?} after the kill:\n{text}", killed.elapsed());
    // The checkpoint is whole and the run continues from it.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let done = state["epoch"].as_u64().unwrap();
    assert!(done >= 1);
    let mut c = mpirun();
    let epochs = (done + 2).to_string();
    c.arg(env!("CARGO_BIN_EXE_mtl")).args([
        "train",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--resume",
        out.to_str().unwrap(),
        "--epochs",
        &epochs,
        "--distributed",
        "--quiet",
    ]);
    run(c);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"].as_u64().unwrap(), done + 2);
    // Exactly where an uninterrupted run of as many epochs is.
    let whole = tmp.join("whole");
    let mut c = mpirun();
    c.arg(env!("CARGO_BIN_EXE_mtl"))
        .args(train_args(&data, &whole))
        .args(["--distributed", "--epochs", &epochs]);
    run(c);
    let (d, at) = worst_relative(
        &out.join("last.safetensors"),
        &whole.join("last.safetensors"),
    );
    assert!(d < 1e-6, "resumed: {at} differs by {d:e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_stalled_rank_ends_the_run_after_the_timeout() {
    let tmp = scratch("stall");
    let data = write_data(&tmp);
    let out = tmp.join("run");
    let child = start_long_run(&data, &out, &["--timeout", "3"]);
    let pids = rank_pids(child.id());
    assert_eq!(pids.len(), 2, "ranks {pids:?}");
    // Stopped, not dead: only the collective's timeout can notice.
    Command::new("kill")
        .args(["-STOP", &pids[1].to_string()])
        .status()
        .unwrap();
    let (status, text) = wait_ended(child, Duration::from_secs(60));
    let _ = Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status();
    assert!(!status.success());
    assert!(text.contains("waited 3 s for the other ranks"), "{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_collective_check_passes_on_two_ranks() {
    let mut c = mpirun();
    c.arg(env!("CARGO_BIN_EXE_mtl")).args([
        "collective",
        "--floats",
        "1000",
        "--repeats",
        "3",
        "--json",
    ]);
    let out = run(c);
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["checks"], "passed");
    assert_eq!(v["ranks"], 2);
    assert_eq!(v["transport"], "mpi");
}
