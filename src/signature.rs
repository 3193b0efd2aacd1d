//! A compiled model's interface as data and serving see it: the inputs it
//! reads and the heads it writes, with what encoding data for them needs
//! (input kinds and vocabularies, label columns and types, class counts).
//! Built once from a lowered program ([`crate::lower::Program::signature`]);
//! `data` reads this, never the program's steps.

use crate::ir::{InputKind, LossKind, Type};

#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// In the program's input order.
    pub inputs: Vec<InputSig>,
    /// In the model's head order.
    pub heads: Vec<HeadSig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputSig {
    pub name: String,
    /// As declared: an image, token ids of a vocabulary, or numbers.
    pub kind: InputKind,
    /// Per-sample type (the batch dimension is implicit).
    pub ty: Type,
    /// What to do when a sample lacks it (empty cell: zeros or an error).
    pub policy: crate::ir::InputPolicy,
    /// Whether an embedding reads this input. A token input nothing reads
    /// (its users optimized away) gets no built-in vocabulary.
    pub embedded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadSig {
    pub name: String,
    pub loss: LossKind,
    /// Data column / tensor holding the label.
    pub label: String,
    /// Per-sample label type, as shape inference derived it.
    pub label_type: Option<Type>,
    /// Cross-entropy heads: the class count (the first axis of the head's
    /// output; 0 when unknown). 0 for other heads.
    pub classes: usize,
}
