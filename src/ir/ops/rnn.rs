//! Recurrent layers `lstm(units)` and `gru(units)` (Keras `LSTM`, `GRU` with
//! `reset_after`), optionally bidirectional.

use super::cx::glorot;
use super::sig::{no, opt, req, Kind, ParamSpec};
use super::{Build, Callee, Cx, MaskFlow, Rules, Sig, Typed, R};
use crate::ir::{Dim, Init, Op, Type};
use serde::Serialize;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RnnCell {
    Lstm,
    Gru,
}

impl RnnCell {
    /// Gates per cell: LSTM i,f,g,o; GRU r,z,n.
    pub fn gates(self) -> usize {
        match self {
            RnnCell::Lstm => 4,
            RnnCell::Gru => 3,
        }
    }
}

/// One direction's parameter names (PyTorch's `nn.LSTM`/`nn.GRU` keys).
pub struct Names {
    pub weight_ih: &'static str,
    pub weight_hh: &'static str,
    /// LSTM: the one bias.
    pub bias: &'static str,
    /// GRU: input and recurrent biases.
    pub bias_ih: &'static str,
    pub bias_hh: &'static str,
}

pub const FORWARD: Names = Names {
    weight_ih: "weight_ih",
    weight_hh: "weight_hh",
    bias: "bias",
    bias_ih: "bias_ih",
    bias_hh: "bias_hh",
};

pub const REVERSE: Names = Names {
    weight_ih: "weight_ih_reverse",
    weight_hh: "weight_hh_reverse",
    bias: "bias_reverse",
    bias_ih: "bias_ih_reverse",
    bias_hh: "bias_hh_reverse",
};

const LSTM: &[&str] = &[FORWARD.weight_ih, FORWARD.weight_hh, FORWARD.bias];
const LSTM_BI: &[&str] = &[
    FORWARD.weight_ih,
    FORWARD.weight_hh,
    FORWARD.bias,
    REVERSE.weight_ih,
    REVERSE.weight_hh,
    REVERSE.bias,
];
const GRU: &[&str] = &[
    FORWARD.weight_ih,
    FORWARD.weight_hh,
    FORWARD.bias_ih,
    FORWARD.bias_hh,
];
const GRU_BI: &[&str] = &[
    FORWARD.weight_ih,
    FORWARD.weight_hh,
    FORWARD.bias_ih,
    FORWARD.bias_hh,
    REVERSE.weight_ih,
    REVERSE.weight_hh,
    REVERSE.bias_ih,
    REVERSE.bias_hh,
];

const SIG: &[ParamSpec] = &[
    req("units", Kind::Int),
    opt("return_sequences", Kind::Bool, no),
    opt("bidirectional", Kind::Bool, no),
];

fn build(b: &Build, cell: RnnCell) -> R<Op> {
    Ok(Op::Rnn(Rnn {
        cell,
        units: b.args.int("units"),
        return_sequences: b.args.bool("return_sequences"),
        bidirectional: b.args.bool("bidirectional"),
        hoisted: false,
    }))
}

pub const CALLEES: &[Callee] = &[
    Callee {
        name: "lstm",
        sig: Sig::Layer(SIG),
        build: |b| build(b, RnnCell::Lstm),
    },
    Callee {
        name: "gru",
        sig: Sig::Layer(SIG),
        build: |b| build(b, RnnCell::Gru),
    },
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rnn {
    pub cell: RnnCell,
    pub units: usize,
    pub return_sequences: bool,
    pub bidirectional: bool,
    /// Input projection computed for all timesteps in one GEMM (set by a pass).
    pub hoisted: bool,
}

impl Rnn {
    /// The parameter names of each direction, forward first.
    pub fn directions(&self) -> &'static [Names] {
        const BOTH: &[Names] = &[FORWARD, REVERSE];
        if self.bidirectional {
            BOTH
        } else {
            &BOTH[..1]
        }
    }
}

impl Rules for Rnn {
    fn reads_mask(&self) -> bool {
        true
    }
    fn mask_flow(&self) -> MaskFlow {
        if self.return_sequences {
            MaskFlow::First
        } else {
            MaskFlow::Drop
        }
    }
    fn kind_name(&self) -> Cow<'static, str> {
        match self.cell {
            RnnCell::Lstm => "lstm".into(),
            RnnCell::Gru => "gru".into(),
        }
    }
    fn attrs(&self) -> String {
        format!(
            "units={}, return_sequences={}, bidirectional={}, hoisted={}",
            self.units, self.return_sequences, self.bidirectional, self.hoisted
        )
    }
    fn params(&self) -> &'static [&'static str] {
        match (self.cell, self.bidirectional) {
            (RnnCell::Lstm, false) => LSTM,
            (RnnCell::Lstm, true) => LSTM_BI,
            (RnnCell::Gru, false) => GRU,
            (RnnCell::Gru, true) => GRU_BI,
        }
    }
    fn rank_help(&self, rank: usize) -> Option<&'static str> {
        Some(if rank == 1 {
            "a recurrent layer needs a sequence: set `return_sequences = true` on the previous one, or feed token embeddings"
        } else {
            "a recurrent layer reads [T, D] sequences; use `reshape` or `permute` to get one"
        })
    }
    fn infer(&self, cx: &mut Cx) -> R<Typed> {
        cx.need_rank(2, 2, "a sequence [T, D]")?;
        let i = cx.fixed(&cx.s()[1], "the feature size of a recurrent layer's input")?;
        let units = self.units;
        let gh = self.cell.gates() * units;
        let mut t = Typed::new(Type::f32(vec![]));
        for d in self.directions() {
            t = t.param(d.weight_ih, vec![gh, i], glorot(i, gh)).param(
                d.weight_hh,
                vec![gh, units],
                Init::Orthogonal,
            );
            t = match self.cell {
                RnnCell::Lstm => t.param(d.bias, vec![gh], Init::LstmBias { units }),
                RnnCell::Gru => t.param(d.bias_ih, vec![gh], Init::Zeros).param(
                    d.bias_hh,
                    vec![gh],
                    Init::Zeros,
                ),
            };
        }
        let width = Dim::Fixed(units * self.directions().len());
        t.ty = Type::f32(if self.return_sequences {
            vec![cx.s()[0].clone(), width]
        } else {
            vec![width]
        });
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code, f32, infer, shapes};
    use super::*;

    fn rnn(cell: RnnCell, seq: bool, bi: bool) -> Op {
        Op::Rnn(Rnn {
            cell,
            units: 4,
            return_sequences: seq,
            bidirectional: bi,
            hoisted: false,
        })
    }

    #[test]
    fn lstm_keys_and_shapes_follow_pytorch() {
        let t = infer(rnn(RnnCell::Lstm, false, false), &[f32(&[7, 3])]).unwrap();
        assert_eq!(t.ty, f32(&[4]));
        assert_eq!(
            shapes(&t),
            [
                ("weight_ih", vec![16, 3]),
                ("weight_hh", vec![16, 4]),
                ("bias", vec![16])
            ]
        );
    }

    #[test]
    fn bidirectional_gru_sequences_double_the_width() {
        let t = infer(rnn(RnnCell::Gru, true, true), &[f32(&[7, 3])]).unwrap();
        assert_eq!(t.ty, f32(&[7, 8]));
        assert_eq!(t.params.len(), 8);
        assert_eq!(shapes(&t)[7], ("bias_hh_reverse", vec![12]));
    }

    #[test]
    fn needs_a_sequence() {
        assert_eq!(
            code(infer(rnn(RnnCell::Lstm, false, false), &[f32(&[7])])),
            "mtl::rank"
        );
    }
}
