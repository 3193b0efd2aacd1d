//! The training loop: batches, weighted multi-task loss, backward, optimizer,
//! per-head metrics, early stopping, atomic checkpoints and exact resume.

use super::checkpoint;
use super::config::{TrainConfig, Weighting};
use super::contrastive::contrastive;
use super::loss::{head_loss, head_loss_counted, Reduction};
use super::metrics::HeadStats;
use super::optim::{lr_at, Optimizer};
use super::scheme::{Scheme, SchemeState, StepLosses};
use super::tensorboard;
use crate::data::Dataset;
use crate::distributed::{all_gather_bytes, Collective, Comm, Part};

/// One batch: a tensor per input, label and mask.
type Batch = std::collections::HashMap<String, Tensor>;
use crate::ir::{AuxKind, LossKind, LOGIT_SCALE};
use crate::lower::planned::{Inference, PlannedTrain};
use crate::lower::{save_atomic, Params, Program};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum TrainError {
    /// A loss became NaN or infinite.
    NonFinite {
        head: String,
        epoch: usize,
        step: usize,
        /// Whether an earlier epoch's checkpoint exists to fall back on.
        kept: bool,
    },
    Data(String),
    Io(String),
    Compute(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::NonFinite {
                head,
                epoch,
                step,
                kept,
            } => {
                let saved = if *kept {
                    "the last good checkpoint was kept"
                } else {
                    "no epoch had finished, so nothing was saved"
                };
                write!(f, "the loss of `{head}` became NaN or infinite at epoch {epoch}, step {step}; training stopped and {saved}. Lower the learning rate (`--lr`), set `clip_norm` in `train {{ }}`, or check the data for extreme values")
            }
            TrainError::Data(m) | TrainError::Io(m) | TrainError::Compute(m) => write!(f, "{m}"),
        }
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Compute(e.to_string())
    }
}

impl From<crate::lower::RunError> for TrainError {
    fn from(e: crate::lower::RunError) -> Self {
        match e {
            crate::lower::RunError::Input(m) => TrainError::Data(m),
            e => TrainError::Compute(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeadEval {
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    pub heads: BTreeMap<String, HeadEval>,
    /// Each auxiliary loss's mean (before its weight).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train: EvalResult,
    pub val: Option<EvalResult>,
    /// Loss weights in force during this epoch, per head.
    pub loss_weights: BTreeMap<String, f64>,
    pub samples_per_sec: f64,
    pub best: bool,
}

/// Progress callbacks: the CLI draws bars and tables; the library prints nothing.
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn batch(&mut self, _step: usize, _loss: f64, _samples_per_sec: f64) {}
    fn epoch_end(&mut self, _rec: &EpochRecord) {}
}

pub struct FitConfig {
    pub train: TrainConfig,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Where TensorBoard event files go (`RUN/tensorboard` from the CLI).
    pub tensorboard: Option<PathBuf>,
    /// Data-parallel training over these ranks ([`crate::distributed`]):
    /// each rank trains on its rows of every batch; rank 0 alone writes.
    pub comm: Option<Comm>,
    /// Train with the planned executor where it applies (one process, a
    /// weighting that sums the losses, every step with a planned backward);
    /// `false`: the candle path always (`mtl train --executor candle`).
    pub planned: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    /// Epochs completed.
    epoch: usize,
    opt_step: usize,
    best: Option<f64>,
    since_best: usize,
    history: Vec<EpochRecord>,
    /// The weighting in use (`--weighting` may differ from the model's).
    #[serde(default)]
    weighting: Option<Weighting>,
    /// The weighting's own state (GradNorm's weights, FAMO's logits, …).
    #[serde(default, flatten)]
    scheme: SchemeState,
    /// The checkpoint files this state was committed with ([`checkpoint`]).
    #[serde(default)]
    files: BTreeMap<String, checkpoint::Stamp>,
}

/// How long a rank waits for rank 0 to set up (recover a checkpoint, build
/// a data cache) before it gives up.
const SETUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The files of a checkpoint, in the run directory.
const LAST: &str = "last.safetensors";
const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

fn write_json_atomic<T: Serialize>(v: &T, path: &Path) -> Result<(), TrainError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(v).map_err(|e| TrainError::Io(e.to_string()))?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| TrainError::Io(format!("cannot write {}: {e}", path.display())))
}

/// A batch read from the data (host memory or the disk cache) on the
/// device the program runs on: inputs, labels and label masks alike.
fn on_device(batch: Batch, dev: &Device) -> candle_core::Result<Batch> {
    batch
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(dev)?)))
        .collect()
}

/// Labels of a head for a batch: class ids (−1 = missing) or f32 values (NaN = missing).
fn label_tensor(batch: &Batch, head: &crate::ir::Head) -> candle_core::Result<Tensor> {
    let t = batch
        .get(&head.label)
        .ok_or_else(|| candle_core::Error::Msg(format!("no label `{}`", head.label)))?;
    if head.loss == LossKind::CrossEntropy {
        let t = if t.rank() == 2 && head.label_type.as_ref().is_some_and(|l| l.rank() == 0) {
            t.squeeze(1)?
        } else {
            t.clone()
        };
        if t.dtype() == DType::F32 || t.dtype() == DType::F64 {
            let f = t.to_dtype(DType::F32)?;
            let valid = f.eq(&f)?;
            return valid
                .where_cond(&f, &f.zeros_like()?.affine(0.0, -1.0)?)?
                .to_dtype(DType::I64);
        }
        t.to_dtype(DType::I64)
    } else {
        t.to_dtype(DType::F32)
    }
}

/// One forward pass's losses: per head (order of `prog.heads`), how many
/// labels the head has in the batch, and the auxiliary losses.
struct Losses {
    heads: Vec<Tensor>,
    counts: Vec<f64>,
    aux: Vec<Tensor>,
}

/// Per-head losses of one forward pass and aux losses.
/// With `planned`, the heads' losses are its fused ones.
fn losses(
    prog: &Program,
    params: &Params,
    (fwd, mut planned): (&crate::lower::Forward, Option<&mut PlannedTrain>),
    batch: &Batch,
    reduction: Reduction,
) -> Result<Losses, TrainError> {
    let mut out = Losses {
        heads: vec![],
        counts: vec![],
        aux: vec![],
    };
    for (h, slot) in &prog.heads {
        let logits = fwd
            .output(*slot)
            .ok_or_else(|| TrainError::Compute(format!("head `{}` not computed", h.name)))?;
        let y = label_tensor(batch, h)?;
        let mask = batch
            .get(&format!("{}.mask", h.name))
            .map(|m| m.flatten_all())
            .transpose()?;
        let (loss, count) = match planned.as_deref_mut() {
            Some(p) => {
                let present_only = reduction == Reduction::Present;
                p.head_loss(fwd, *slot, h.loss, (&y, mask.as_ref()), present_only)?
            }
            None => head_loss_counted(h.loss, logits, &y, mask.as_ref(), reduction)?,
        };
        out.heads.push(loss);
        out.counts.push(count as f64);
    }
    for l in &prog.losses {
        let (a, b) = (fwd.output(l.slots[0]), fwd.output(l.slots[1]));
        let (Some(a), Some(b)) = (a, b) else { continue };
        let loss = match l.kind {
            AuxKind::Compare(kind) => head_loss(kind, a, &b.detach(), None, reduction)?,
            AuxKind::Contrastive {
                temperature,
                learned,
            } => {
                let scale = match (learned, &l.params) {
                    (true, Some(p)) => params.get(&format!("{p}.{LOGIT_SCALE}"))?.clone(),
                    _ => Tensor::new((1.0 / temperature).ln() as f32, a.device())?,
                };
                contrastive(a, b, &scale)?
            }
        };
        out.aux.push(loss);
    }
    Ok(out)
}

/// Adds one batch of a head's predictions to its metric counts. On the
/// host from the logits' own storage: collecting the metrics took a fifth of
/// the main thread of `mtl train models/shapes.mtl` in `perf`, half of it
/// candle's softmax or sigmoid, transpose and copies.
fn collect(
    acc: &mut HeadStats,
    loss: LossKind,
    logits: &Tensor,
    label: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<()> {
    let x = crate::kernels::host::host(logits)?;
    let (pred, k) = super::metrics::probabilities(loss, &x, logits.dims());
    let lab = if label.dtype() == DType::F32 {
        crate::kernels::host::host(label)?
    } else {
        let v = label.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        crate::kernels::host::HostView::Owned(v)
    };
    let per_sample = (lab.len() / label.dim(0)?.max(1)).max(1);
    let m: Option<Vec<f32>> = mask
        .map(|m| {
            m.to_dtype(DType::F32)
                .and_then(|m| m.flatten_all())
                .and_then(|m| m.to_vec1())
        })
        .transpose()?;
    let ce = loss == LossKind::CrossEntropy;
    acc.add(&pred, k, &lab, |i| {
        let present = if ce {
            lab[i] >= 0.0
        } else {
            lab[i].is_finite()
        };
        let kept = m
            .as_ref()
            .is_none_or(|m| m.get(i / per_sample).is_some_and(|v| *v > 0.5));
        present && kept
    });
    Ok(())
}

fn stats(prog: &Program) -> Vec<HeadStats> {
    prog.heads
        .iter()
        .map(|(h, _)| HeadStats::new(h.loss, &h.metrics))
        .collect()
}

fn comm_err(e: crate::distributed::CommError) -> TrainError {
    TrainError::Compute(e.0)
}

/// Every rank's metric counts merged, on every rank.
fn merge_stats(
    comm: &dyn Collective,
    prog: &Program,
    accs: &mut [HeadStats],
) -> Result<(), TrainError> {
    let own = serde_json::to_vec(&*accs).map_err(|e| TrainError::Compute(e.to_string()))?;
    let all = all_gather_bytes(comm, own).map_err(comm_err)?;
    let mut merged = stats(prog);
    for bytes in all {
        let part: Vec<HeadStats> =
            serde_json::from_slice(&bytes).map_err(|e| TrainError::Compute(e.to_string()))?;
        for (m, p) in merged.iter_mut().zip(&part) {
            m.merge(p);
        }
    }
    accs.clone_from_slice(&merged);
    Ok(())
}

fn finish(prog: &Program, accs: &[HeadStats], mean_losses: &[f64], weights: &[f64]) -> EvalResult {
    let mut heads = BTreeMap::new();
    let mut total = 0.0;
    for (i, (h, _)) in prog.heads.iter().enumerate() {
        let loss = mean_losses[i];
        total += weights[i] * loss;
        let mut m = BTreeMap::new();
        for metric in &h.metrics {
            m.insert(metric.name(), accs[i].value(*metric));
        }
        heads.insert(h.name.clone(), HeadEval { loss, metrics: m });
    }
    EvalResult {
        loss: total,
        heads,
        aux: BTreeMap::new(),
    }
}

/// Loss and metrics of every head over a data set (inference program).
pub fn evaluate(
    prog: &Program,
    params: &Params,
    ds: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<EvalResult, TrainError> {
    ds.check(&prog.signature(), true, "data")
        .map_err(TrainError::Data)?;
    evaluate_checked(prog, params, ds, batch_size, device, None)
}

/// [`evaluate`] on data already checked against `prog` (validation, every
/// epoch). With `comm`, each rank evaluates every size-th batch and the
/// sums and counts are merged, so every rank gets the whole data's result.
fn evaluate_checked(
    prog: &Program,
    params: &Params,
    ds: &Dataset,
    batch_size: usize,
    device: &Device,
    comm: Option<&dyn Collective>,
) -> Result<EvalResult, TrainError> {
    let batch_size = batch_size.max(1);
    let mut accs = stats(prog);
    let mut sums = vec![0.0; prog.heads.len()];
    let mut aux: BTreeMap<String, f64> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(0);
    let mut exec = Inference::new(prog, params);
    let (rank, size) = comm.map_or((0, 1), |c| (c.rank(), c.size()));
    for (b, start) in (0..ds.n).step_by(batch_size).enumerate() {
        if b % size != rank {
            continue;
        }
        let len = batch_size.min(ds.n - start);
        let idx: Vec<usize> = (start..start + len).collect();
        let batch = on_device(ds.batch(&idx)?, device)?;
        let inputs = prog.prepare_inputs(&batch, device)?;
        let fwd = exec.forward(prog, params, inputs, &mut rng)?;
        let ls = losses(prog, params, (&fwd, None), &batch, Reduction::Present)?;
        for (a, l) in ls.aux.iter().zip(&prog.losses) {
            *aux.entry(l.name.clone()).or_insert(0.0) += a.to_scalar::<f32>()? as f64 * len as f64;
        }
        let hs = ls.heads;
        for (i, (h, slot)) in prog.heads.iter().enumerate() {
            // Weight batch losses by their sample count so the mean is over samples.
            sums[i] += hs[i].to_scalar::<f32>()? as f64 * len as f64;
            let y = label_tensor(&batch, h)?;
            let mask = batch.get(&format!("{}.mask", h.name));
            if let Some(l) = fwd.get(*slot) {
                collect(&mut accs[i], h.loss, l, &y, mask)?;
            }
        }
    }
    if let Some(c) = comm {
        let names: Vec<String> = prog.losses.iter().map(|l| l.name.clone()).collect();
        let mut v: Vec<f64> = sums.clone();
        v.extend(names.iter().map(|n| aux.get(n).copied().unwrap_or(0.0)));
        c.all_reduce_f64(&mut v).map_err(comm_err)?;
        let k = sums.len();
        sums.copy_from_slice(&v[..k]);
        aux = names.into_iter().zip(v[k..].iter().copied()).collect();
        merge_stats(c, prog, &mut accs)?;
    }
    let means: Vec<f64> = sums.iter().map(|s| s / ds.n.max(1) as f64).collect();
    let weights: Vec<f64> = prog.heads.iter().map(|(h, _)| h.weight).collect();
    let mut r = finish(prog, &accs, &means, &weights);
    r.aux = aux
        .into_iter()
        .map(|(k, v)| (k, v / ds.n.max(1) as f64))
        .collect();
    Ok(r)
}

/// One step's loss values and label counts, over the whole batch.
struct Reduced {
    heads: Vec<f64>,
    counts: Vec<f64>,
    aux: Vec<f64>,
}

/// On a batch split over ranks, scales this rank's batch-mean losses to its
/// share of the whole batch's (so the ranks' gradients add up to one
/// process's) and sums their values and label counts over ranks.
fn shares(ls: &mut Losses, part: &Part) -> Result<Reduced, TrainError> {
    if part.split() {
        let share = part.share();
        for l in ls.heads.iter_mut().chain(ls.aux.iter_mut()) {
            *l = (&*l * share)?;
        }
    }
    let value = |t: &Tensor| t.to_scalar::<f32>().map(f64::from);
    let mut v: Vec<f64> = ls.heads.iter().map(value).collect::<Result<_, _>>()?;
    let (k, a) = (v.len(), ls.aux.len());
    v.extend(ls.counts.iter().copied());
    for t in &ls.aux {
        v.push(value(t)?);
    }
    if let Some(c) = part.comm {
        c.all_reduce_f64(&mut v).map_err(comm_err)?;
    }
    Ok(Reduced {
        heads: v[..k].to_vec(),
        counts: v[k..2 * k].to_vec(),
        aux: v[2 * k..2 * k + a].to_vec(),
    })
}

/// Trains `train_prog` (its parameters shared with `infer_prog`) and writes the run directory.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    cfg: &FitConfig,
    train_prog: &Program,
    infer_prog: &Program,
    params: &mut Params,
    train: &Dataset,
    val: Option<&Dataset>,
    obs: &mut dyn Observer,
) -> Result<Vec<EpochRecord>, TrainError> {
    let t = &cfg.train;
    let dev = &cfg.device;
    let comm = cfg.comm.as_ref().filter(|c| c.size() > 1);
    // Rank 0 alone writes checkpoints, statistics and events.
    let lead = comm.is_none_or(|c| c.rank() == 0);
    if comm.is_some() {
        if let Some(l) = train_prog
            .losses
            .iter()
            .find(|l| matches!(l.kind, AuxKind::Contrastive { .. }))
        {
            return Err(TrainError::Data(format!("`{}`: a contrastive loss compares every pair of samples in a batch, which a batch split over ranks does not hold; train this model in one process (without --distributed)", l.name)));
        }
    }
    if train.n == 0 {
        return Err(TrainError::Data(
            "the training data has no samples (after the validation split): nothing to train on"
                .into(),
        ));
    }
    let sig = train_prog.signature();
    train
        .check(&sig, true, "training data")
        .map_err(TrainError::Data)?;
    if let Some(v) = val {
        v.check(&sig, true, "validation data")
            .map_err(TrainError::Data)?;
    }
    let heads: Vec<String> = train_prog
        .heads
        .iter()
        .map(|(h, _)| h.name.clone())
        .collect();
    let last = cfg.run_dir.join(LAST);
    let opt_path = cfg.run_dir.join(OPTIMIZER);
    let state_path = cfg.run_dir.join("state.json");
    let mut st = State::default();
    if cfg.resume {
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| TrainError::Io(format!("cannot resume: {}: {e}", state_path.display())))?;
        st = serde_json::from_str(&text)
            .map_err(|e| TrainError::Io(format!("cannot resume: {}: {e}", state_path.display())))?;
    }
    if cfg.resume && st.epoch >= t.epochs {
        return Err(TrainError::Data(format!(
            "the run in {} has already trained {} epochs; ask for more with `--epochs N` (N > {})",
            cfg.run_dir.display(),
            st.epoch,
            st.epoch
        )));
    }
    // A resumed run keeps the weighting it was started with.
    let method = st.weighting.unwrap_or(t.weighting);
    st.weighting = Some(method);
    let mut scheme =
        Scheme::new(method, train_prog, &params.trainable, dev).map_err(TrainError::Data)?;
    let mut vars: Vec<(String, Var)> = params
        .trainable
        .iter()
        .filter_map(|k| params.vars.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    vars.extend(scheme.log_vars.iter().cloned());
    let mut opt = Optimizer::new(t.optimizer.clone());
    // The planned executor, where the step needs nothing it does not do: a
    // split batch, a cut forward (gradient methods) and GradNorm's own
    // backward stay on candle.
    let plannable = cfg.planned
        && comm.is_none()
        && scheme.cut().is_none()
        && !method.is_gradient_method()
        && method != Weighting::Gradnorm;
    let mut planned = plannable
        .then(|| PlannedTrain::new(train_prog, params).ok())
        .flatten();
    if lead {
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| TrainError::Io(format!("cannot create {}: {e}", cfg.run_dir.display())))?;
    }
    let mut board = match cfg.tensorboard.as_ref().filter(|_| lead) {
        Some(dir) => Some(tensorboard::Board::create(dir).map_err(|e| {
            TrainError::Io(format!(
                "cannot write TensorBoard events in {}: {e}",
                dir.display()
            ))
        })?),
        None => None,
    };
    if cfg.resume {
        if lead {
            checkpoint::recover(&cfg.run_dir, &st.files, st.epoch)
                .map_err(|e| TrainError::Io(format!("cannot resume: {e}")))?;
        }
        if let Some(c) = comm {
            // The others read the checkpoint once rank 0 has recovered it.
            c.barrier(SETUP_PATIENCE).map_err(comm_err)?;
        }
        params.load(&last, dev).map_err(TrainError::Io)?;
        let ostate = candle_core::safetensors::load(&opt_path, dev)
            .map_err(|e| TrainError::Io(format!("cannot resume: {}: {e}", opt_path.display())))?;
        for (k, v) in &scheme.log_vars {
            if let Some(s) = ostate.get(k) {
                v.set(s)?;
            }
        }
        scheme.restore(std::mem::take(&mut st.scheme));
        opt.restore(
            ostate
                .into_iter()
                .filter(|(k, _)| !k.starts_with("loss_weighting."))
                .collect(),
            st.opt_step,
        );
    }
    let higher_better = t.monitor != "val_loss"
        && !t.monitor.ends_with("loss")
        && !t.monitor.ends_with(".mae")
        && !t.monitor.ends_with(".rmse");
    for epoch in st.epoch..t.epochs {
        let lr = lr_at(&t.schedule, t.optimizer.lr, epoch, t.epochs);
        let last_losses: Vec<Vec<f64>> = st
            .history
            .iter()
            .map(|r| heads.iter().map(|h| r.train.heads[h].loss).collect())
            .collect();
        scheme.start_epoch(&last_losses);
        let mut rng =
            StdRng::seed_from_u64(t.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order: Vec<usize> = (0..train.n).collect();
        order.shuffle(&mut rng);
        let steps = train.n.div_ceil(t.batch_size.max(1));
        obs.epoch_start(epoch, t.epochs, steps);
        let mut accs = stats(train_prog);
        let mut sums = vec![0.0; heads.len()];
        let mut aux_sums: BTreeMap<String, f64> = BTreeMap::new();
        let started = std::time::Instant::now();
        for (s, chunk) in order.chunks(t.batch_size.max(1)).enumerate() {
            // This rank's rows of the batch (all of it in one process).
            let part = Part::of(chunk.len(), comm);
            let batch = on_device(train.batch(&chunk[part.range()])?, dev)?;
            let mut inputs = train_prog.prepare_inputs(&batch, dev)?;
            super::modality::drop_inputs(train_prog, &mut inputs, &mut rng, &part)?;
            let fwd = match planned.as_mut() {
                Some(p) => p.forward(train_prog, params, inputs, &mut rng)?,
                None => train_prog.forward_part(params, inputs, &mut rng, scheme.cut(), &part)?,
            };
            let with = (&fwd, planned.as_mut());
            let mut ls = losses(train_prog, params, with, &batch, Reduction::Batch)?;
            let reduced = shares(&mut ls, &part)?;
            let present: Vec<bool> = reduced.counts.iter().map(|c| *c > 0.0).collect();
            let mut values = Vec::with_capacity(ls.heads.len());
            for (i, v) in reduced.heads.iter().enumerate() {
                let v = *v as f32;
                if !v.is_finite() {
                    return Err(TrainError::NonFinite {
                        head: heads[i].clone(),
                        epoch: epoch + 1,
                        step: s + 1,
                        kept: last.exists(),
                    });
                }
                sums[i] += v as f64;
                values.push(v as f64);
            }
            let mut aux_total: Option<Tensor> = None;
            let mut aux_value = 0.0;
            for ((a, l), v) in ls.aux.iter().zip(&train_prog.losses).zip(&reduced.aux) {
                let v = *v as f32;
                if !v.is_finite() {
                    return Err(TrainError::NonFinite {
                        head: l.name.clone(),
                        epoch: epoch + 1,
                        step: s + 1,
                        kept: last.exists(),
                    });
                }
                *aux_sums.entry(l.name.clone()).or_insert(0.0) += v as f64;
                aux_value += v as f64 * l.weight;
                let a = (a * l.weight)?;
                aux_total = Some(match aux_total {
                    Some(x) => (x + a)?,
                    None => a,
                });
            }
            let step = StepLosses {
                heads: &ls.heads,
                values: &values,
                present: &present,
                aux: aux_total.as_ref(),
                aux_value,
            };
            let backprop = planned.as_mut().map(|p| (p, train_prog, &*params));
            let (grads, total) =
                scheme.gradients(&fwd, &step, &vars, (lr, &mut rng), &part, backprop)?;
            opt.apply(&vars, grads, lr, t.clip_norm)?;
            // A batch every rank ran whole counts once, on rank 0.
            let counted = part.split() || lead;
            for (i, (h, slot)) in train_prog.heads.iter().enumerate() {
                if let Some(l) = fwd.get(*slot).filter(|_| counted) {
                    let y = label_tensor(&batch, h)?;
                    collect(
                        &mut accs[i],
                        h.loss,
                        &l.detach(),
                        &y,
                        batch.get(&format!("{}.mask", h.name)),
                    )?;
                }
            }
            let done = ((s + 1) * t.batch_size).min(train.n);
            obs.batch(
                s + 1,
                total,
                done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            );
        }
        if let Some(c) = comm {
            merge_stats(&**c, train_prog, &mut accs)?;
        }
        let secs = started.elapsed().as_secs_f64();
        let in_force = scheme.in_force();
        let means: Vec<f64> = sums.iter().map(|s| s / steps.max(1) as f64).collect();
        let mut train_res = finish(train_prog, &accs, &means, &in_force);
        train_res.aux = aux_sums
            .into_iter()
            .map(|(k, v)| (k, v / steps.max(1) as f64))
            .collect();
        let val_res = match val {
            Some(v) => Some(evaluate_checked(
                infer_prog,
                params,
                v,
                t.batch_size.max(64),
                dev,
                comm.map(|c| &**c),
            )?),
            None => None,
        };
        // Early stopping and best checkpoint on the monitored value.
        let monitored = match (&val_res, t.monitor.as_str()) {
            (Some(v), "val_loss") => Some(v.loss),
            (Some(v), m) => m.split_once('.').and_then(|(h, k)| {
                v.heads.get(h).and_then(|e| {
                    if k == "loss" {
                        Some(e.loss)
                    } else {
                        e.metrics.get(k).copied()
                    }
                })
            }),
            (None, _) => Some(train_res.loss),
        };
        let improved = match (monitored, st.best) {
            (Some(m), Some(b)) => {
                if higher_better {
                    m > b
                } else {
                    m < b
                }
            }
            (Some(_), None) => true,
            _ => false,
        };
        if improved {
            st.best = monitored;
            st.since_best = 0;
        } else {
            st.since_best += 1;
        }
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train: train_res,
            val: val_res,
            loss_weights: heads
                .iter()
                .cloned()
                .zip(in_force.iter().copied())
                .collect(),
            samples_per_sec: train.n as f64 / secs.max(1e-9),
            best: improved,
        };
        st.history.push(rec.clone());
        st.epoch = epoch + 1;
        st.opt_step = opt.step;
        st.scheme = scheme.state.clone();
        if !lead {
            obs.epoch_end(&rec);
            if t.patience.is_some_and(|p| st.since_best >= p) {
                break;
            }
            continue;
        }
        // Checkpoint: the files staged, state.json (the commit), then the
        // files in place (see `checkpoint`).
        let dir = &cfg.run_dir;
        let mut staged = vec![LAST, OPTIMIZER];
        let save = |p: &Path| params.save(p);
        let io = TrainError::Io;
        st.files
            .insert(LAST.into(), checkpoint::stage(dir, LAST, save).map_err(io)?);
        if improved {
            let stamp = checkpoint::stage(dir, WEIGHTS, save).map_err(io)?;
            st.files.insert(WEIGHTS.into(), stamp);
            staged.push(WEIGHTS);
        }
        let mut ostate = opt.state();
        for (k, v) in &scheme.log_vars {
            ostate.insert(k.clone(), v.as_tensor().clone());
        }
        if ostate.is_empty() {
            ostate.insert("step".into(), Tensor::new(&[opt.step as f32], dev)?);
        }
        let save = |p: &Path| save_atomic(&ostate, p);
        let stamp = checkpoint::stage(dir, OPTIMIZER, save).map_err(io)?;
        st.files.insert(OPTIMIZER.into(), stamp);
        write_json_atomic(&st, &state_path)?;
        checkpoint::publish(dir, staged).map_err(io)?;
        write_json_atomic(
            &serde_json::json!({"epochs": st.history, "heads": heads}),
            &cfg.run_dir.join("training_statistics.json"),
        )?;
        if let Some(b) = board.as_mut() {
            b.epoch(&rec)
                .map_err(|e| TrainError::Io(format!("cannot write TensorBoard events: {e}")))?;
        }
        obs.epoch_end(&rec);
        if t.patience.is_some_and(|p| st.since_best >= p) {
            break;
        }
    }
    Ok(st.history)
}
