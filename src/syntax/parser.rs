//! pest pairs to AST. Never panics: a pair of an unexpected shape becomes a
//! diagnostic, so a grammar change cannot crash the compiler.

use super::ast::*;
use crate::diagnostics::{Diagnostic, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/mtl.pest"]
struct MtlParser;

type R<T> = Result<T, Diagnostic>;

/// Parses one source file (its id in the source map is `file`).
pub fn parse(text: &str, file: u32) -> Result<File, Diagnostic> {
    check_nesting(text, file)?;
    pest::set_error_detail(true);
    let mut pairs = MtlParser::parse(Rule::file, text).map_err(|e| syntax_error(e, text, file))?;
    let root = pairs
        .next()
        .ok_or_else(|| internal(Span::new(file, 0, 0)))?;
    let cx = Cx { file };
    let mut out = File::default();
    for pair in root.into_inner() {
        match pair.as_rule() {
            Rule::import => {
                let span = cx.span(&pair);
                let s = cx.first(pair)?;
                out.imports.push((unquote(s.as_str()), span));
            }
            Rule::block_def => out.blocks.push(cx.block(pair)?),
            Rule::model => out.models.push(cx.model(pair)?),
            Rule::EOI => {}
            _ => return Err(internal(cx.span(&pair))),
        }
    }
    Ok(out)
}

/// Deeper nesting than any model needs; the recursive stages after the parser
/// would run out of stack long before a real limit.
const MAX_NESTING: usize = 128;

/// Rejects brackets nested deeper than `MAX_NESTING` (comments and strings skipped).
fn check_nesting(text: &str, file: u32) -> Result<(), Diagnostic> {
    let (mut depth, mut in_comment, mut in_string) = (0usize, false, false);
    for (i, ch) in text.char_indices() {
        match ch {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error(
                        "mtl::too-deep",
                        format!("brackets nested more than {MAX_NESTING} deep"),
                    )
                    .label(Span::new(file, i, i + 1), "too deep here")
                    .help("name intermediate values with `let` instead of nesting"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn internal(span: Span) -> Diagnostic {
    Diagnostic::error(
        "mtl::internal",
        "the parser met a construct it cannot build",
    )
    .label(span, "here")
    .help("this is a bug in mtl; please report it with this file")
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// Describes a rule in words, for "expected ..." messages.
fn rule_words(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident => "a name",
        Rule::int => "an integer",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::expr | Rule::pipe | Rule::stage | Rule::call => "an expression",
        Rule::pipeline => "a layer",
        Rule::prop | Rule::key => "a property such as `loss: mse`",
        Rule::list => "a list",
        Rule::import => "`import`",
        Rule::block_def => "`block`",
        Rule::model => "`model`",
        Rule::input => "`input`",
        Rule::let_item => "`let`",
        Rule::shared => "`shared`",
        Rule::head => "`head`",
        Rule::loss_item => "`loss`",
        Rule::train => "`train`",
        Rule::image_ty | Rule::tokens_ty | Rule::audio_ty | Rule::f32_ty => {
            "a type (`image[...]`, `tokens[...] vocab N`, `audio[M, F] rate R`, `f32[...]`)"
        }
        Rule::dims => "`[`",
        Rule::props => "`{`",
        Rule::param => "a parameter",
        Rule::arg => "an argument",
        Rule::EOI => "end of file",
        _ => return None,
    })
}

fn syntax_error(e: pest::error::Error<Rule>, text: &str, file: u32) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = vec![];
    if let Some(attempts) = e.parse_attempts() {
        for t in attempts.expected_tokens() {
            let token = t.to_string();
            if token != "BUILTIN_RULE"
                && token != "#"
                && !token.contains("..")
                && !token.trim().is_empty()
            {
                expected.push(format!("`{token}`"));
            }
        }
    }
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            if let Some(w) = rule_words(*r) {
                expected.push(w.to_string());
            }
        }
    }
    expected.sort();
    expected.dedup();
    // Prefer punctuation first: it is what people most often forget.
    expected.sort_by_key(|s| !s.starts_with('`'));
    let found = text[pos.min(text.len())..]
        .split_whitespace()
        .next()
        .map(|w| {
            let w: String = w.chars().take(20).collect();
            format!("found `{w}`")
        })
        .unwrap_or_else(|| "found end of file".to_string());
    let what = match expected.len() {
        0 => "unexpected input".to_string(),
        1 => format!("expected {}", expected[0]),
        n => format!(
            "expected {} or {}",
            expected[..n - 1].join(", "),
            expected[n - 1]
        ),
    };
    let len = text[pos.min(text.len())..]
        .chars()
        .next()
        .map_or(0, |c| c.len_utf8());
    // A letter outside ASCII where a name could start: names are ASCII.
    let non_ascii = text[pos.min(text.len())..]
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() && !c.is_ascii());
    let help = if non_ascii {
        "names are ASCII: letters a–z, A–Z, digits and `_` (not starting with a digit)"
    } else {
        "see docs/language.md for the syntax of each item"
    };
    Diagnostic::error("mtl::syntax", format!("syntax error: {what}"))
        .label(Span::new(file, pos, pos + len), found)
        .help(help)
}

struct Cx {
    file: u32,
}

impl Cx {
    /// The pair's span without trailing whitespace (pest keeps what it
    /// skipped before an optional part that did not match).
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let len = p.as_str().trim_end().len();
        Span::new(self.file, s.start(), s.start() + len)
    }

    fn first<'a>(&self, p: Pair<'a, Rule>) -> R<Pair<'a, Rule>> {
        let span = self.span(&p);
        p.into_inner().next().ok_or_else(|| internal(span))
    }

    fn ident(&self, p: Pair<Rule>) -> R<Ident> {
        match p.as_rule() {
            Rule::ident | Rule::key => Ok(Ident {
                name: p.as_str().to_string(),
                span: self.span(&p),
            }),
            _ => Err(internal(self.span(&p))),
        }
    }

    fn model(&self, p: Pair<Rule>) -> R<Model> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().ok_or_else(|| internal(span))?)?;
        let items = inner
            .map(|i| match i.as_rule() {
                Rule::block_def => self.block(i).map(Item::Block),
                _ => self.item(i),
            })
            .collect::<R<Vec<_>>>()?;
        Ok(Model { name, items, span })
    }

    fn item(&self, p: Pair<Rule>) -> R<Item> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut inner = p.into_inner();
        let mut next = || inner.next().ok_or_else(|| internal(span));
        Ok(match rule {
            Rule::input => Item::Input {
                name: self.ident(next()?)?,
                ty: self.input_type(next()?)?,
                props: match inner.next() {
                    Some(p) => self.props(p)?,
                    None => vec![],
                },
            },
            Rule::let_item => Item::Let {
                name: self.ident(next()?)?,
                value: self.expr(next()?)?,
            },
            Rule::shared => Item::Shared {
                name: self.ident(next()?)?,
                body: self.pipeline(next()?)?,
            },
            Rule::head => {
                let name = self.ident(next()?)?;
                let value = self.expr(next()?)?;
                let props_pair = next()?;
                let props_span = self.span(&props_pair);
                Item::Head {
                    name,
                    value,
                    props: self.props(props_pair)?,
                    props_span,
                }
            }
            Rule::loss_item => {
                let name = self.ident(next()?)?;
                let call = self.call(next()?, None)?;
                let props = match inner.next() {
                    Some(p) => self.props(p)?,
                    None => vec![],
                };
                Item::Loss { name, call, props }
            }
            Rule::train => Item::Train {
                props: self.props(next()?)?,
                span,
            },
            Rule::import => Item::Import {
                path: unquote(next()?.as_str()),
                span,
            },
            _ => return Err(internal(span)),
        })
    }

    fn block(&self, p: Pair<Rule>) -> R<BlockDef> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().ok_or_else(|| internal(span))?)?;
        let mut params = vec![];
        let mut body = None;
        for q in inner {
            match q.as_rule() {
                Rule::param => {
                    let qs = self.span(&q);
                    let mut qi = q.into_inner();
                    let name = self.ident(qi.next().ok_or_else(|| internal(qs))?)?;
                    let default = qi.next().map(|e| self.expr(e)).transpose()?;
                    params.push(Param { name, default });
                }
                Rule::pipeline => body = Some(self.pipeline(q)?),
                _ => return Err(internal(self.span(&q))),
            }
        }
        Ok(BlockDef {
            name,
            params,
            body: body.ok_or_else(|| internal(span))?,
            span,
        })
    }

    fn input_type(&self, p: Pair<Rule>) -> R<InputType> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut inner = p.into_inner();
        let dims_pair = inner.next().ok_or_else(|| internal(span))?;
        let mut dims = vec![];
        for d in dims_pair.into_inner() {
            let ds = self.span(&d);
            let dim = match d.as_rule() {
                Rule::int => DimAst::Fixed(self.int(&d)?),
                Rule::ident => DimAst::Sym(d.as_str().to_string()),
                _ => return Err(internal(ds)),
            };
            dims.push((dim, ds));
        }
        let kind = match rule {
            Rule::image_ty => InputKind::Image,
            Rule::f32_ty => InputKind::F32,
            Rule::tokens_ty => {
                let v = inner.next().ok_or_else(|| internal(span))?;
                InputKind::Tokens {
                    vocab: self.int(&v)?,
                }
            }
            Rule::audio_ty => {
                let r = inner.next().ok_or_else(|| internal(span))?;
                InputKind::Audio {
                    rate: self.int(&r)?,
                }
            }
            _ => return Err(internal(span)),
        };
        Ok(InputType { kind, dims, span })
    }

    fn int(&self, p: &Pair<Rule>) -> R<usize> {
        p.as_str().parse::<usize>().map_err(|_| {
            Diagnostic::error("mtl::number", "this integer is too large")
                .label(self.span(p), "out of range")
        })
    }

    fn props(&self, p: Pair<Rule>) -> R<Vec<Prop>> {
        p.into_inner()
            .map(|q| {
                let qs = self.span(&q);
                let mut qi = q.into_inner();
                let key = self.ident(qi.next().ok_or_else(|| internal(qs))?)?;
                let value = self.expr(qi.next().ok_or_else(|| internal(qs))?)?;
                Ok(Prop { key, value })
            })
            .collect()
    }

    fn pipeline(&self, p: Pair<Rule>) -> R<Vec<Call>> {
        p.into_inner().map(|s| self.stage(s)).collect()
    }

    fn stage(&self, p: Pair<Rule>) -> R<Call> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let call = inner.next().ok_or_else(|| internal(span))?;
        let alias = inner.next().map(|a| self.ident(a)).transpose()?;
        let mut c = self.call(call, alias)?;
        c.span = span;
        Ok(c)
    }

    fn call(&self, p: Pair<Rule>, alias: Option<Ident>) -> R<Call> {
        let span = self.span(&p);
        let has_parens = p.as_str().trim_end().ends_with(')');
        let mut inner = p.into_inner();
        let callee = self.ident(inner.next().ok_or_else(|| internal(span))?)?;
        let args: Vec<Arg> = inner.map(|a| self.arg(a)).collect::<R<_>>()?;
        Ok(Call {
            callee,
            args: if has_parens { Some(args) } else { None },
            alias,
            span,
        })
    }

    fn arg(&self, p: Pair<Rule>) -> R<Arg> {
        let span = self.span(&p);
        let parts: Vec<Pair<Rule>> = p.into_inner().collect();
        match parts.len() {
            1 => Ok(Arg {
                name: None,
                value: self.expr(parts[0].clone())?,
                span,
            }),
            2 => Ok(Arg {
                name: Some(self.ident(parts[0].clone())?),
                value: self.expr(parts[1].clone())?,
                span,
            }),
            _ => Err(internal(span)),
        }
    }

    fn expr(&self, p: Pair<Rule>) -> R<Expr> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => {
                let mut terms: Vec<Expr> =
                    p.into_inner().map(|q| self.expr(q)).collect::<R<_>>()?;
                match terms.len() {
                    0 => Err(internal(span)),
                    1 => Ok(terms.remove(0)),
                    _ => Ok(Expr {
                        kind: ExprKind::Add(terms),
                        span,
                    }),
                }
            }
            Rule::pipe => {
                let mut inner = p.into_inner();
                let source = self.expr(inner.next().ok_or_else(|| internal(span))?)?;
                let stages: Vec<Call> = inner.map(|s| self.stage(s)).collect::<R<_>>()?;
                if stages.is_empty() {
                    Ok(source)
                } else {
                    Ok(Expr {
                        kind: ExprKind::Pipe {
                            source: Box::new(source),
                            stages,
                        },
                        span,
                    })
                }
            }
            Rule::stage => Ok(Expr {
                kind: ExprKind::Call(self.stage(p)?),
                span,
            }),
            Rule::number => {
                let s = p.as_str();
                let value = s.parse::<f64>().map_err(|_| {
                    Diagnostic::error("mtl::number", "malformed number").label(span, "here")
                })?;
                let is_int = !s.contains(['.', 'e', 'E']);
                Ok(Expr {
                    kind: ExprKind::Number { value, is_int },
                    span,
                })
            }
            Rule::string => Ok(Expr {
                kind: ExprKind::Str(unquote(p.as_str())),
                span,
            }),
            Rule::list => Ok(Expr {
                kind: ExprKind::List(p.into_inner().map(|q| self.expr(q)).collect::<R<_>>()?),
                span,
            }),
            _ => Err(internal(span)),
        }
    }
}
