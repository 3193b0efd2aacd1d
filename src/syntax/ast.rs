//! The abstract syntax tree: plain data, every node with its byte span.

use crate::diagnostics::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A number literal; `is_int` when written without `.` or exponent.
    Number {
        value: f64,
        is_int: bool,
    },
    Str(String),
    List(Vec<Expr>),
    /// A name, or a call `f(args)`, optionally named `as NAME`.
    Call(Call),
    /// `source -> stage -> stage ...`
    Pipe {
        source: Box<Expr>,
        stages: Vec<Call>,
    },
    /// `a + b + ...`
    Add(Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub callee: Ident,
    /// `None` for a bare name (`relu`), `Some` for `f(...)`, even `f()`.
    pub args: Option<Vec<Arg>>,
    pub alias: Option<Ident>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    pub key: Ident,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    Image,
    Tokens {
        vocab: usize,
    },
    /// Log-mel spectrograms of WAV files resampled to `rate` Hz.
    Audio {
        rate: usize,
    },
    F32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimAst {
    Fixed(usize),
    Sym(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputType {
    pub kind: InputKind,
    pub dims: Vec<(DimAst, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Call>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Input {
        name: Ident,
        ty: InputType,
        /// `{ dropout: P }`, `{ missing: zeros }`.
        props: Vec<Prop>,
    },
    Let {
        name: Ident,
        value: Expr,
    },
    Shared {
        name: Ident,
        body: Vec<Call>,
    },
    Block(BlockDef),
    Head {
        name: Ident,
        value: Expr,
        props: Vec<Prop>,
        props_span: Span,
    },
    Loss {
        name: Ident,
        call: Call,
        props: Vec<Prop>,
    },
    Train {
        props: Vec<Prop>,
        span: Span,
    },
    Import {
        path: String,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub name: Ident,
    pub items: Vec<Item>,
    pub span: Span,
}

/// One parsed source file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub imports: Vec<(String, Span)>,
    pub blocks: Vec<BlockDef>,
    pub models: Vec<Model>,
}

impl Expr {
    /// The identifier when this expression is a bare name (`same`, `relu`, `x`).
    pub fn as_name(&self) -> Option<&Ident> {
        match &self.kind {
            ExprKind::Call(c) if c.args.is_none() && c.alias.is_none() => Some(&c.callee),
            _ => None,
        }
    }
}
