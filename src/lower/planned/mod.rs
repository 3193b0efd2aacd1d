//! The planned executor, for inference in f32 on the CPU: the program as a
//! static schedule of kernel calls ([`Schedule`]) over one arena whose
//! buffers were assigned ahead of time by liveness ([`memory`]), with the
//! weights packed once in the layout the kernels read (Wᵀ for GEMMs, batch
//! norms folded in). A batch then costs no candle tensor, no autograd node
//! and no allocation per step; the numeric code is our kernels' own
//! (`crate::kernels`), called on slices of the arena.
//!
//! A program with a step the schedule has no kernel for (masks, attention,
//! layer norm, …) runs on the candle path; `--emit plan` says which path and
//! why. Training stays on the candle path (see issue 20 in the notes).

mod backward;
mod layers;
pub mod memory;
mod run;
mod schedule;
mod train;

pub use schedule::{render, Loc, PKind, PStep, Schedule, Unplanned};
pub use train::PlannedTrain;

use super::exec::weights;
use super::kernel::Kernel;
use super::{Forward, Params, Program, RunError};
use crate::ir::ops::{embedding, rnn::Names};
use crate::ir::{Op, RnnCell};
use candle_core::Tensor;

/// A step's weights in the layout its kernel reads.
#[derive(Debug, Clone, Default)]
pub(crate) enum Packed {
    #[default]
    None,
    /// Wᵀ [i, o] and the bias [o].
    Gemm { wt: Vec<f32>, b: Vec<f32> },
    /// W [F, C, KH, KW] and the bias [F].
    Conv { w: Shared, b: Shared },
    /// An embedding table [vocab, dim].
    Table(Shared),
    /// Per direction: W_ihᵀ, b_ih, W_hhᵀ, and for a GRU b_hh.
    Rnn(Vec<RnnPacked>),
    /// Query, key, value and (unless Hugging Face's layout) output
    /// projections, each (Wᵀ, bias).
    Attention {
        q: (Vec<f32>, Vec<f32>),
        k: (Vec<f32>, Vec<f32>),
        v: (Vec<f32>, Vec<f32>),
        out: Option<(Vec<f32>, Vec<f32>)>,
    },
    /// A norm's scale and offset.
    Norm { w: Vec<f32>, b: Vec<f32> },
    /// One weight per operand.
    Weights(Vec<f32>),
}

#[derive(Debug, Clone)]
pub(crate) struct RnnPacked {
    /// W_ihᵀ [i, G]; for a recurrence reading a projected table
    /// (`PKind::Rnn::table`), that table [vocab, G], b_ih folded in (and
    /// `b_ih` empty).
    pub w_ih_t: Vec<f32>,
    pub b_ih: Vec<f32>,
    pub w_hh_t: Vec<f32>,
    pub b_hh: Vec<f32>,
}

/// A planned program with its packed weights and its arena.
pub struct Planned {
    pub schedule: Schedule,
    packed: Vec<Packed>,
    arena: Vec<f32>,
    handover: crate::kernels::par::Handover,
}

/// Weights a kernel reads as they are: the parameter's own tensor (its
/// storage shared, not copied; a training step re-packs every step, and a
/// copied embedding table was most of the planned path's extra memory),
/// borrowed while a step runs. Like every packing, it belongs to the weights
/// of its time: a plan is rebuilt (training re-packs) once they change.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    t: Tensor,
    /// Whether packing computed it (a folded batch norm): then it counts as
    /// packed bytes.
    computed: bool,
}

impl Shared {
    fn of(t: &Tensor, computed: bool) -> candle_core::Result<Self> {
        let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(Shared { t, computed })
    }

    /// The values, read-locked while the view lives.
    pub(crate) fn view(&self) -> Result<crate::kernels::host::HostView<'_>, String> {
        crate::kernels::host::host(&self.t).map_err(|e| e.to_string())
    }

    pub(crate) fn len(&self) -> usize {
        self.t.elem_count()
    }

    fn packed_len(&self) -> usize {
        if self.computed {
            self.t.elem_count()
        } else {
            0
        }
    }
}

fn data(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// `w` [o, i] as Wᵀ [i, o], by our tiled transpose: candle's strided copy
/// (`t().contiguous()`) moved one element at a time and was 5% of
/// `shapes_mm`'s one-thread training step, which packs every step.
fn transposed(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    let (rows, cols) = t.dims2()?;
    if t.dtype() != candle_core::DType::F32 {
        return data(&t.t()?.contiguous()?);
    }
    let w = crate::kernels::host::host(t)?;
    Ok(crate::kernels::gemm::transposed(&w, rows, cols))
}

impl Planned {
    /// Plans `prog` and packs its weights from `params`, or says why it runs
    /// on the candle path. Packing copies the weights: a planned program
    /// does not see later changes to `params`.
    pub fn new(prog: &Program, params: &Params) -> Result<Planned, Unplanned> {
        let on_cpu = params
            .vars
            .values()
            .next()
            .is_none_or(|v| crate::kernels::native_device(v.device()));
        if !on_cpu {
            return Err(Unplanned(
                "planned kernels run on the CPU with our kernels".into(),
            ));
        }
        let schedule = Schedule::of(prog)?;
        let packed = schedule
            .steps
            .iter()
            .map(|ps| {
                let st = &prog.steps[ps.step];
                let packed = match (&ps.kind, pack(st, &ps.kind, params)) {
                    (PKind::Rnn { table: Some(e), .. }, Ok(Packed::Rnn(dirs))) => {
                        project(&prog.steps[*e], dirs, params)
                    }
                    (_, packed) => packed,
                };
                packed.map_err(|e| Unplanned(format!("step `{}`: its weights: {e}", st.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Planned {
            schedule,
            packed,
            arena: vec![],
            handover: Default::default(),
        })
    }

    /// Bytes of the arena at `batch` samples.
    pub fn arena_bytes(&self, batch: usize) -> usize {
        self.schedule.arena_per_sample() * batch * 4
    }

    /// Bytes of the packed weights.
    pub fn packed_bytes(&self) -> usize {
        let v = |p: &Packed| match p {
            Packed::None => 0,
            Packed::Gemm { wt, b } => wt.len() + b.len(),
            Packed::Conv { w, b } => w.packed_len() + b.packed_len(),
            Packed::Table(t) => t.packed_len(),
            Packed::Rnn(d) => d
                .iter()
                .map(|r| r.w_ih_t.len() + r.b_ih.len() + r.w_hh_t.len() + r.b_hh.len())
                .sum(),
            Packed::Attention { q, k, v, out } => [Some(q), Some(k), Some(v), out.as_ref()]
                .iter()
                .flatten()
                .map(|(w, b)| w.len() + b.len())
                .sum(),
            Packed::Norm { w, b } => w.len() + b.len(),
            Packed::Weights(w) => w.len(),
        };
        self.packed.iter().map(v).sum::<usize>() * 4
    }

    /// One forward pass over prepared inputs (`Program::prepare_inputs`):
    /// the values of the heads and auxiliary-loss operands.
    pub fn forward(
        &mut self,
        prog: &Program,
        inputs: &[(usize, Tensor)],
    ) -> Result<Forward, RunError> {
        run::forward(self, prog, inputs, None)
    }

    /// `forward`, adding each step's wall time (seconds, by program step) to `times`.
    pub fn forward_timed(
        &mut self,
        prog: &Program,
        inputs: &[(usize, Tensor)],
        times: &mut Vec<f64>,
    ) -> Result<Forward, RunError> {
        run::forward(self, prog, inputs, Some(times))
    }
}

/// A recurrence's packed directions with W_ihᵀ and b_ih replaced by the
/// projected table E·W_ihᵀ + b of the embedding step `emb` it reads.
fn project(
    emb: &super::Step,
    dirs: Vec<RnnPacked>,
    params: &Params,
) -> candle_core::Result<Packed> {
    let e = params.get(&format!(
        "{}.{}",
        emb.params.as_deref().unwrap_or(""),
        embedding::WEIGHT
    ))?;
    let (vocab, dim) = e.dims2()?;
    let e = data(e)?;
    let dirs = dirs.into_iter().map(|mut d| {
        let g = d.b_ih.len();
        if d.w_ih_t.len() != dim * g {
            candle_core::bail!("a projected table of {dim} wide rows into {g}");
        }
        let mut table = vec![0f32; vocab * g];
        crate::kernels::linear::forward_into(
            &mut table,
            &e,
            &d.w_ih_t,
            &d.b_ih,
            (vocab, dim, g),
            false,
        );
        (d.w_ih_t, d.b_ih) = (table, vec![]);
        Ok(d)
    });
    Ok(Packed::Rnn(dirs.collect::<candle_core::Result<_>>()?))
}

/// Packs a step's weights for its planned kernel.
pub(super) fn pack(st: &super::Step, kind: &PKind, params: &Params) -> candle_core::Result<Packed> {
    let p = |name: &str| params.get(&format!("{}.{name}", st.params.as_deref().unwrap_or("")));
    Ok(match (kind, &st.kernel) {
        (PKind::Linear { .. }, Kernel::Linear { bn, .. }) => {
            let (w, b) = weights(st, params, bn)?;
            Packed::Gemm {
                wt: transposed(&w)?,
                b: data(&b)?,
            }
        }
        (PKind::Merged { .. }, Kernel::MergedLinear { parts }) => {
            let get = |name: &str| -> candle_core::Result<Tensor> {
                let ts = parts
                    .iter()
                    .map(|(pre, _)| params.get(&format!("{pre}.{name}")).cloned())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&ts, 0)
            };
            use crate::ir::ops::dense;
            Packed::Gemm {
                wt: transposed(&get(dense::WEIGHT)?)?,
                b: data(&get(dense::BIAS)?)?,
            }
        }
        (PKind::Conv { .. }, Kernel::Conv(k)) => {
            let (w, b) = weights(st, params, &k.bn)?;
            let folded = k.bn.is_some();
            Packed::Conv {
                w: Shared::of(&w, folded)?,
                b: Shared::of(&b, folded)?,
            }
        }
        (PKind::Embedding { .. }, _) => Packed::Table(Shared::of(p(embedding::WEIGHT)?, false)?),
        (PKind::Rnn { cell, .. }, _) => {
            let Op::Rnn(r) = &st.op else {
                candle_core::bail!("a recurrence kernel on `{}`", st.op)
            };
            let dir = |n: &Names| -> candle_core::Result<RnnPacked> {
                let (b_ih, b_hh) = match cell {
                    RnnCell::Lstm => (data(p(n.bias)?)?, vec![]),
                    RnnCell::Gru => (data(p(n.bias_ih)?)?, data(p(n.bias_hh)?)?),
                };
                Ok(RnnPacked {
                    w_ih_t: transposed(p(n.weight_ih)?)?,
                    b_ih,
                    w_hh_t: transposed(p(n.weight_hh)?)?,
                    b_hh,
                })
            };
            Packed::Rnn(r.directions().iter().map(dir).collect::<Result<_, _>>()?)
        }
        (PKind::Attention { hf, .. }, _) => {
            use crate::ir::ops::attention as n;
            let gemm = |w: &str, b: &str| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                Ok((transposed(p(w)?)?, data(p(b)?)?))
            };
            Packed::Attention {
                q: gemm(n::QUERY_WEIGHT, n::QUERY_BIAS)?,
                k: gemm(n::KEY_WEIGHT, n::KEY_BIAS)?,
                v: gemm(n::VALUE_WEIGHT, n::VALUE_BIAS)?,
                out: if *hf {
                    None
                } else {
                    Some(gemm(n::OUT_WEIGHT, n::OUT_BIAS)?)
                },
            }
        }
        (PKind::LayerNorm { .. } | PKind::BatchNorm { .. }, _) => {
            use crate::ir::ops::norm;
            Packed::Norm {
                w: data(p(norm::WEIGHT)?)?,
                b: data(p(norm::BIAS)?)?,
            }
        }
        (PKind::PositionAdd, _) => Packed::Table(Shared::of(
            p(crate::ir::ops::position_embedding::WEIGHT)?,
            false,
        )?),
        (PKind::Gated { .. }, _) => {
            use crate::ir::ops::fusion;
            Packed::Gemm {
                wt: transposed(p(fusion::WEIGHT)?)?,
                b: data(p(fusion::BIAS)?)?,
            }
        }
        (PKind::Mixture { .. }, _) => {
            use crate::ir::ops::mixture;
            Packed::Gemm {
                wt: transposed(p(mixture::WEIGHT)?)?,
                b: data(p(mixture::BIAS)?)?,
            }
        }
        (PKind::Weighted, _) => match &st.op {
            Op::Weighted(crate::ir::Weighted { fixed: Some(ws) }) => {
                Packed::Weights(ws.iter().map(|w| *w as f32).collect())
            }
            _ => {
                let logits = p(crate::ir::ops::fusion::LOGITS)?;
                Packed::Weights(data(&candle_nn::ops::softmax(logits, 0)?)?)
            }
        },
        _ => Packed::None,
    })
}

/// Inference through the planned executor where the plan allows it, else
/// the candle path: what `predict`, `serve` and `bench --infer` run.
pub struct Inference {
    planned: Result<Planned, Unplanned>,
}

impl Inference {
    pub fn new(prog: &Program, params: &Params) -> Inference {
        Inference {
            planned: Planned::new(prog, params),
        }
    }

    /// The candle path always (`--executor candle`).
    pub fn candle(why: &str) -> Inference {
        Inference {
            planned: Err(Unplanned(why.into())),
        }
    }

    /// `planned`, or `candle (why)`.
    pub fn executor(&self) -> String {
        match &self.planned {
            Ok(_) => "planned".into(),
            Err(why) => format!("candle ({why})"),
        }
    }

    pub fn planned_mut(&mut self) -> Option<&mut Planned> {
        self.planned.as_mut().ok()
    }

    /// One inference forward over prepared inputs; `params` must be those
    /// the executor was built from.
    pub fn forward(
        &mut self,
        prog: &Program,
        params: &Params,
        inputs: Vec<(usize, Tensor)>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Forward, RunError> {
        match &mut self.planned {
            Ok(p) => p.forward(prog, &inputs),
            Err(_) => prog.forward(params, inputs, rng),
        }
    }
}
