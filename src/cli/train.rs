//! `train` and `evaluate`: the main job.

use super::distributed::Ranks;
use super::{build, report_storage, resolve_model, DeviceArgs, Fail, StorageArgs};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mtl::data::{Dataset, Encoders};
use mtl::lower::init_params;
use mtl::pipeline::Mode;
use mtl::signature::Signature;
use mtl::train::{EpochRecord, EvalResult, FitConfig, Observer};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    model: PathBuf,
    /// `auto`: the planned executor where it applies (one process, f32 on
    /// the CPU, a weighting that sums the losses, every step planned);
    /// `candle`: the candle path always.
    #[arg(long, value_enum, default_value_t = super::Executor::Auto)]
    executor: super::Executor,
    /// Training data: a CSV or JSON Lines manifest (one row per sample, a
    /// column per input and label) or a safetensors file (one tensor per
    /// input and label). For a model named after a built-in generator
    /// (`shapes`, `mmoe`, `overlap`, `tones`), generated when omitted.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A Hugging Face `tokenizer.json` for the token inputs of a manifest
    /// (default: the built-in lower-case word tokenizer); copied into the run.
    #[arg(long, conflicts_with = "resume")]
    tokenizer: Option<PathBuf>,
    /// Validation data, in the same form as `--data` (default: the model's
    /// `val_split` of the training data).
    #[arg(long, conflicts_with = "val_split")]
    val: Option<PathBuf>,
    /// Hold out the last fraction of the training data for validation, in [0, 1).
    #[arg(long)]
    val_split: Option<f64>,
    /// Epochs to train (default: the model's `train { epochs }`).
    #[arg(long)]
    epochs: Option<usize>,
    /// Samples per step (default: the model's `train { batch_size }`).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate, > 0 (default: the model's optimizer's).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialization, shuffling and dropout (default: the model's `train { seed }`).
    #[arg(long)]
    seed: Option<u64>,
    /// The loss weighting, instead of the model's `train { weighting }`:
    /// fixed, uncertainty, dwa, gradnorm, pcgrad, cagrad(c=0.4), mgda, imtl,
    /// nash_mtl(max_norm=1), famo(lr=0.025, gamma=0.01), rlw, aligned_mtl.
    #[arg(long, conflicts_with = "resume")]
    weighting: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Run directory (default: runs/MODEL, numbered if it exists).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the run already in `--out` (by default that is refused).
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Continue a run from its last checkpoint (optimizer state included).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Where TensorBoard event files go (default: RUN/tensorboard).
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// No progress output; errors only.
    #[arg(long)]
    quiet: bool,
    /// One JSON object per epoch on stdout.
    #[arg(long)]
    json: bool,
    /// Run no optimizer passes (for debugging the compiler).
    #[arg(long)]
    no_opt: bool,
    /// Keep the weights of every layer whose checkpoint prefix starts with
    /// NAME fixed (repeatable; adds to `train { freeze }`).
    #[arg(long, value_name = "NAME")]
    freeze: Vec<String>,
    /// Train layers that `train { freeze }` or `trainable = false` keep fixed
    /// (repeatable): a second fine-tuning run.
    #[arg(long, value_name = "NAME")]
    unfreeze: Vec<String>,
    /// Start from another run's weights (`RUN_DIR/weights.safetensors`)
    /// instead of fresh and pretrained ones.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Data-parallel training: launch N copies with `mpirun -np N mtl train
    /// … --distributed`. Each rank trains on its share of every batch
    /// (`batch_size` stays the whole batch) and rank 0 writes the run.
    #[arg(long)]
    distributed: bool,
    /// With --distributed: how long one collective may wait for the other
    /// ranks (seconds) before the run stops with an error.
    #[arg(
        long,
        default_value_t = 60,
        requires = "distributed",
        value_name = "SECS"
    )]
    timeout: u64,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// A run directory written by `mtl train`.
    run: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    storage: StorageArgs,
}

struct Cli {
    bar: Option<ProgressBar>,
    quiet: bool,
    json: bool,
}

impl Observer for Cli {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        if self.quiet || self.json {
            return;
        }
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{epochs}", epoch + 1));
        self.bar = Some(bar);
    }
    fn batch(&mut self, step: usize, loss: f64, sps: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step as u64);
            b.set_message(format!("loss {loss:.4} · {sps:.0} samples/s"));
        }
    }
    fn epoch_end(&mut self, rec: &EpochRecord) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.json {
            println!("{}", serde_json::to_string(rec).unwrap_or_default());
            return;
        }
        if self.quiet {
            return;
        }
        let val = rec
            .val
            .as_ref()
            .map(|v| format!(", val loss {:.4}", v.loss))
            .unwrap_or_default();
        eprintln!(
            "epoch {}: loss {:.4}{val}, lr {:.2e}, {:.0} samples/s{}",
            rec.epoch,
            rec.train.loss,
            rec.lr,
            rec.samples_per_sec,
            if rec.best { " *" } else { "" }
        );
        eprint!("{}", table(&rec.train, rec.val.as_ref(), &rec.loss_weights));
    }
}

/// One row per head: weight, loss and metrics (train, and val when present).
fn table(
    train: &EvalResult,
    val: Option<&EvalResult>,
    weights: &std::collections::BTreeMap<String, f64>,
) -> String {
    let mut s = String::new();
    for (h, e) in &train.heads {
        let mut cells = vec![format!(
            "  {h:<14} w={:<6.3} loss {:.4}",
            weights.get(h).copied().unwrap_or(1.0),
            e.loss
        )];
        for (k, v) in &e.metrics {
            cells.push(format!("{k} {v:.4}"));
        }
        if let Some(ve) = val.and_then(|v| v.heads.get(h)) {
            cells.push(format!("| val loss {:.4}", ve.loss));
            for (k, v) in &ve.metrics {
                cells.push(format!("val {k} {v:.4}"));
            }
        }
        s.push_str(&cells.join("  "));
        s.push('\n');
    }
    for (name, v) in &train.aux {
        s.push_str(&format!("  loss {name:<9} {v:.4}"));
        if let Some(vv) = val.and_then(|v| v.aux.get(name)) {
            s.push_str(&format!("  | val {vv:.4}"));
        }
        s.push('\n');
    }
    s
}

fn fresh_run_dir(model: &str) -> PathBuf {
    let base = PathBuf::from("runs").join(model);
    if !base.exists() {
        return base;
    }
    (1..)
        .map(|i| PathBuf::from("runs").join(format!("{model}_{i}")))
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Loads tensors or a manifest; `fit` builds vocabularies and label maps from it.
fn load_data(
    path: &Path,
    sig: &Signature,
    enc: &mut Encoders,
    fit: bool,
    labels: bool,
    dev: &candle_core::Device,
    storage: &StorageArgs,
) -> Result<Dataset, Fail> {
    mtl::data::load(path, sig, enc, fit, labels, dev, &storage.options())
        .map_err(|e| Fail::model(format!("error: {e}")))
}

/// The model as `RUN/model.mtl` and every file it imports at the same
/// relative place, so that the run directory compiles on its own.
fn copy_model(model: &Path, run_dir: &Path) -> Result<(), Fail> {
    let fail = |what: String| {
        Fail::usage(format!(
            "error: cannot copy {what} into {}",
            run_dir.display()
        ))
    };
    let c = mtl::compile_file(model, &mtl::Options::default())
        .map_err(|e| fail(format!("the model ({e})")))?;
    let base = model.parent().unwrap_or(Path::new(""));
    for (i, f) in c.sources.files.iter().enumerate() {
        let dest = if i == 0 {
            run_dir.join("model.mtl")
        } else {
            let rel = Path::new(&f.name)
                .strip_prefix(base)
                .unwrap_or(Path::new(&f.name));
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(fail(format!(
                    "`{}`: an import outside the model's folder (move it next to the model)",
                    f.name
                )));
            }
            run_dir.join(rel)
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("{} ({e})", f.name)))?;
        }
        let text = match &c.raw {
            Some(g) => absolute_checkpoints(&f.text, i as u32, g),
            None => f.text.clone(),
        };
        std::fs::write(&dest, text).map_err(|e| fail(format!("{} ({e})", f.name)))?;
    }
    Ok(())
}

/// The source with each `pretrained("DIR")` of file `file` pointing at the
/// checkpoint's absolute path, so the run's copy of the model still finds it
/// (the weights themselves are in the run's checkpoints).
fn absolute_checkpoints(text: &str, file: u32, g: &mtl::ir::Graph) -> String {
    let mut uses: Vec<&mtl::ir::PretrainedUse> = g
        .pretrained
        .iter()
        .filter(|u| u.span.file == file)
        .collect();
    uses.sort_by_key(|u| std::cmp::Reverse(u.span.start));
    let mut out = text.to_string();
    for u in uses {
        let (start, end) = (u.span.start as usize, (u.span.end as usize).min(out.len()));
        let Some(call) = out.get(start..end) else {
            continue;
        };
        let Some(open) = call.find('"') else { continue };
        let Some(len) = call[open + 1..].find('"') else {
            continue;
        };
        let abs = std::fs::canonicalize(&u.dir).unwrap_or_else(|_| u.dir.clone());
        let quoted = serde_json::to_string(&abs.to_string_lossy()).unwrap_or_default();
        out.replace_range(start + open..start + open + len + 2, &quoted);
    }
    out
}

pub fn train(mut a: TrainArgs) -> Result<i32, Fail> {
    let ranks = if a.distributed {
        a.device.per_rank(super::distributed::local_rank());
        let device = a.device.open()?;
        Ranks::join(std::time::Duration::from_secs(a.timeout.max(1)), &device)?
    } else {
        Ranks::alone()
    };
    // After the ranks have sized the pool (`share_cores`).
    mtl::kernels::par::adopt_caller(None);
    train_ranks(a, &ranks).map_err(|f| ranks.fail(f))
}

fn train_ranks(mut a: TrainArgs, ranks: &Ranks) -> Result<i32, Fail> {
    // Rank 0 writes (data, caches, the run directory) and reports; the
    // others wait for it at two setup barriers.
    let lead = ranks.lead();
    if !lead {
        a.quiet = true;
        a.json = false;
    }
    let device = a.device.open()?;
    let (model_path, _) = match &a.resume {
        Some(run) => resolve_model(run),
        None => (a.model.clone(), None),
    };
    // A resumed run continues its own model; a different file is refused
    // rather than silently ignored.
    if a.resume.is_some() && a.model != model_path {
        let given = std::fs::read_to_string(&a.model).unwrap_or_default();
        let run = std::fs::read_to_string(&model_path).unwrap_or_default();
        if given != run {
            return Err(Fail::usage(format!(
                "error: {} differs from the model of the run being resumed ({}); `--resume` continues the run's own model: pass that file, or start a new run",
                a.model.display(),
                model_path.display()
            )));
        }
    }
    let (g, mut cfg, train_prog) = build(&model_path, Mode::Train, !a.no_opt, true)?;
    let (_, _, infer_prog) = build(&model_path, Mode::Infer, !a.no_opt, false)?;
    let (mut train_prog, infer_prog) = (
        a.device.place(train_prog, &device)?,
        a.device.place(infer_prog, &device)?,
    );
    let freeze: Vec<String> = cfg.freeze.iter().chain(&a.freeze).cloned().collect();
    train_prog.set_frozen(&freeze, &a.unfreeze);
    for f in &train_prog.frozen {
        if !train_prog
            .param_specs
            .iter()
            .any(|(k, _)| mtl::ir::under(k, f))
        {
            return Err(Fail::usage(format!("error: freeze `{f}`: no layer's checkpoint prefix starts with it (see `mtl summary`)")));
        }
    }
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.optimizer.lr = lr;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(w) = &a.weighting {
        cfg.weighting = mtl::train::config::Weighting::parse(w)
            .map_err(|e| Fail::usage(format!("error: --weighting: {e}")))?;
    }
    if let Some(v) = a.val_split {
        cfg.val_split = v;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(Fail::usage(format!("error: {}", problems.join("; "))));
    }
    let data_path = match &a.data {
        Some(d) => d.clone(),
        None => match mtl::data::generated_for(&g.name) {
            Some(gen) => {
                let dir = PathBuf::from("data").join(&g.name);
                let train = dir.join("train.csv");
                if !train.exists() && lead {
                    if !a.quiet { eprintln!("no --data given: generating the `{}` data set in {}", g.name, dir.display()); }
                    gen(&dir, 0).map_err(|e| Fail::usage(format!("error: {e}")))?;
                }
                train
            }
            None => return Err(Fail::usage("error: --data is required: a CSV / JSON Lines manifest, or a safetensors file with one tensor per input and label")),
        },
    };
    if let Some(out) = a.out.as_ref().filter(|_| lead) {
        // A finished or interrupted run is never replaced by accident.
        if out.join("state.json").exists() {
            if !a.overwrite {
                return Err(Fail::usage(format!(
                    "error: {} holds a run already; continue it with `--resume {}`, replace it with `--overwrite`, or pick another `--out`",
                    out.display(),
                    out.display()
                )));
            }
            std::fs::remove_dir_all(out).map_err(|e| {
                Fail::usage(format!("error: cannot replace {}: {e}", out.display()))
            })?;
        }
    }
    let run_dir = a
        .resume
        .clone()
        .or(a.out.clone())
        .unwrap_or_else(|| fresh_run_dir(&g.name));
    // Generated data and a replaced run are in place; every rank takes rank
    // 0's run directory (a fresh name depends on what exists).
    ranks.setup_barrier()?;
    let run_dir = PathBuf::from(ranks.agree(run_dir.to_string_lossy().into_owned())?);
    // Vocabularies and label maps: from the training data, or the run being resumed.
    let enc_path = run_dir.join("data.json");
    let mut enc = match &a.resume {
        Some(_) => Encoders::load(&enc_path).map_err(|e| Fail::usage(format!("error: {e}")))?,
        None => Encoders::default(),
    };
    // A BERT checkpoint's own tokenizer (with its special tokens, as
    // `transformers` encodes), unless one is given.
    let own = g.pretrained_tokenizer();
    if a.tokenizer.is_none() && own.is_some() && a.resume.is_none() {
        enc.special_tokens = true;
    }
    let tokenizer = a.tokenizer.clone().or(own);
    if let Some(t) = tokenizer.as_ref().filter(|_| a.resume.is_none()) {
        let copy = run_dir.join("tokenizer.json");
        if lead {
            std::fs::create_dir_all(&run_dir).map_err(|e| {
                Fail::usage(format!("error: cannot create {}: {e}", run_dir.display()))
            })?;
            std::fs::copy(t, &copy).map_err(|e| {
                Fail::usage(format!("error: cannot copy tokenizer {}: {e}", t.display()))
            })?;
        }
        enc.tokenizer = Some(copy);
    }
    let sig = train_prog.signature();
    if !lead {
        // Rank 0 has built the data's caches and written the run's files.
        ranks.setup_barrier()?;
    }
    let all = load_data(
        &data_path,
        &sig,
        &mut enc,
        a.resume.is_none(),
        true,
        &device,
        &a.storage,
    )?;
    if !a.quiet && !a.json {
        report_storage(&all, "training data");
    }
    let (train_ds, val_ds) = match (&a.val, cfg.val_split) {
        (Some(v), _) => (
            all,
            Some(load_data(
                v, &sig, &mut enc, false, true, &device, &a.storage,
            )?),
        ),
        (None, f) if f > 0.0 => {
            let n_val = ((all.n as f64) * f).round() as usize;
            let cut = all.n - n_val;
            let tr: Vec<usize> = (0..cut).collect();
            let va: Vec<usize> = (cut..all.n).collect();
            (all.subset(&tr), Some(all.subset(&va)))
        }
        _ => (all, None),
    };
    if lead {
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Fail::usage(format!("error: cannot create {}: {e}", run_dir.display())))?;
        if a.resume.is_none() {
            copy_model(&model_path, &run_dir)?;
        }
        if !enc.is_empty() {
            // The tokenizer's copy sits next to data.json: store its name only.
            let mut saved = enc.clone();
            saved.tokenizer = saved.tokenizer.map(|_| PathBuf::from("tokenizer.json"));
            saved
                .save(&enc_path)
                .map_err(|e| Fail::usage(format!("error: {e}")))?;
        }
        ranks.setup_barrier()?;
    }
    let mut params =
        init_params(&train_prog, cfg.seed, &device).map_err(|e| Fail::model(e.to_string()))?;
    if a.resume.is_none() {
        // Pretrained encoders from their checkpoints; or a whole earlier run.
        super::load_pretrained(&g, &params)?;
        if let Some(from) = &a.init_from {
            let w = from.join("weights.safetensors");
            params
                .load(&w, &device)
                .map_err(|e| Fail::model(format!("error: --init-from: {e}")))?;
        }
    }
    if !a.quiet && !a.json {
        eprintln!(
            "training `{}` on {} samples{} for {} epochs (batch {}, lr {}), run directory {}; * marks an epoch that improved the monitored value",
            g.name,
            train_ds.n,
            val_ds
                .as_ref()
                .map(|v| format!(" (+{} validation)", v.n))
                .unwrap_or_default(),
            cfg.epochs,
            cfg.batch_size,
            cfg.optimizer.lr,
            run_dir.display()
        );
    }
    let fit = FitConfig {
        train: cfg.clone(),
        run_dir: run_dir.clone(),
        resume: a.resume.is_some(),
        device: device.clone(),
        tensorboard: Some(
            a.tensorboard
                .clone()
                .unwrap_or_else(|| run_dir.join("tensorboard")),
        ),
        comm: ranks.comm.clone(),
        planned: a.executor == super::Executor::Auto,
    };
    let mut obs = Cli {
        bar: None,
        quiet: a.quiet,
        json: a.json,
    };
    let hist = mtl::train::fit(
        &fit,
        &train_prog,
        &infer_prog,
        &mut params,
        &train_ds,
        val_ds.as_ref(),
        &mut obs,
    )
    .map_err(|e| Fail::model(format!("error: {e}")))?;
    if !a.json && !a.quiet {
        if let Some(last) = hist.last() {
            eprintln!(
                "done: {} epochs, final loss {:.4}; best weights (the epochs marked *) in {}",
                last.epoch,
                last.train.loss,
                run_dir.join("weights.safetensors").display()
            );
            eprintln!("next: mtl evaluate {} --data TEST_DATA", run_dir.display());
        }
    }
    Ok(0)
}

pub fn evaluate(a: EvaluateArgs) -> Result<i32, Fail> {
    if a.batch_size == 0 {
        return Err(Fail::usage("error: the batch size must be at least 1"));
    }
    let device = a.device.open()?;
    let (model, weights) = resolve_model(&a.run);
    let weights = weights.ok_or_else(|| {
        Fail::usage("error: evaluate takes a run directory written by `mtl train`")
    })?;
    let (_, _, prog) = build(&model, Mode::Infer, true, true)?;
    let prog = a.device.place(prog, &device)?;
    let mut params = init_params(&prog, 0, &device).map_err(|e| Fail::model(e.to_string()))?;
    params
        .load(&weights, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    let mut enc =
        Encoders::load(&a.run.join("data.json")).map_err(|e| Fail::usage(format!("error: {e}")))?;
    let ds = load_data(
        &a.data,
        &prog.signature(),
        &mut enc,
        false,
        true,
        &device,
        &a.storage,
    )?;
    if !a.json {
        report_storage(&ds, "data");
    }
    let r = mtl::train::evaluate(&prog, &params, &ds, a.batch_size, &device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!("loss {:.4} on {} samples", r.loss, ds.n);
        let w = prog
            .heads
            .iter()
            .map(|(h, _)| (h.name.clone(), h.weight))
            .collect();
        print!("{}", table(&r, None, &w));
    }
    Ok(0)
}
