//! The pipeline in one place: read → parse → imports → elaborate → infer → passes.
//! The library's entry points; nothing here prints.

use crate::diagnostics::{Diagnostic, SourceMap, Span};
use crate::elaborate::elaborate;
use crate::ir::{self, Graph};
use crate::passes::{self, PassReport};
use crate::pipeline::Options;
use crate::syntax::{self, ast};
use crate::train::config::TrainConfig;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Everything a compilation produced, including its diagnostics.
pub struct Compiled {
    pub sources: SourceMap,
    pub ast: Option<ast::File>,
    /// The elaborated, typed IR before any pass.
    pub raw: Option<Graph>,
    /// The IR after the pass pipeline (equal to `raw` with `optimize: false`).
    pub graph: Option<Graph>,
    /// The model's `train { }` block, with defaults where it sets nothing
    /// (all defaults when no model was elaborated).
    pub train: TrainConfig,
    pub diagnostics: Vec<Diagnostic>,
    pub passes: PassReport,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
    /// The optimized graph, or the errors that prevented it.
    pub fn into_graph(self) -> Result<(Graph, SourceMap), (Vec<Diagnostic>, SourceMap)> {
        match self.graph {
            Some(g) if !self.diagnostics.iter().any(Diagnostic::is_error) => Ok((g, self.sources)),
            _ => Err((self.diagnostics, self.sources)),
        }
    }
}

pub fn compile_file(path: &Path, opts: &Options) -> std::io::Result<Compiled> {
    let text = std::fs::read_to_string(path)?;
    Ok(compile_source(
        &path.display().to_string(),
        &text,
        path.parent(),
        opts,
    ))
}

pub fn compile_str(name: &str, text: &str, opts: &Options) -> Compiled {
    compile_source(name, text, None, opts)
}

fn compile_source(name: &str, text: &str, dir: Option<&Path>, opts: &Options) -> Compiled {
    let mut c = Compiled {
        sources: SourceMap::default(),
        ast: None,
        raw: None,
        graph: None,
        train: TrainConfig::default(),
        diagnostics: vec![],
        passes: PassReport::default(),
    };
    let id = c.sources.add(name, text);
    let file = match syntax::parse(text, id) {
        Ok(f) => f,
        Err(d) => {
            c.diagnostics.push(d);
            return c;
        }
    };
    // Imports, depth first; each file once.
    let mut imported: Vec<ast::File> = vec![];
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let base = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_imports(&file, &base, &mut c, &mut imported, &mut seen, 0);
    let blocks: Vec<&ast::BlockDef> = imported
        .iter()
        .flat_map(|f| f.blocks.iter())
        .chain(file.blocks.iter())
        .collect();
    for f in &imported {
        if let Some(m) = f.models.first() {
            c.diagnostics.push(
                Diagnostic::warning(
                    "mtl::imported-model",
                    format!("the model `{}` in an imported file is ignored", m.name.name),
                )
                .label(m.name.span, "only blocks are imported"),
            );
        }
    }
    let model = match file.models.as_slice() {
        [m] => m,
        [] => {
            c.diagnostics.push(
                Diagnostic::error("mtl::no-model", "this file declares no `model`")
                    .label(Span::new(id, 0, 0), "expected `model NAME { ... }`")
                    .help("a model file holds one `model` plus any `block`s and `import`s"),
            );
            c.ast = Some(file);
            return c;
        }
        [first, rest @ ..] => {
            for m in rest {
                c.diagnostics.push(
                    Diagnostic::error("mtl::many-models", "a file holds one model")
                        .label(m.name.span, "second model here")
                        .label(first.name.span, "first model here")
                        .help("put each model in its own file; share layers through `block`s and `import`"),
                );
            }
            first
        }
    };
    let (mut g, train, errs) = elaborate(model, &blocks, &base);
    c.train = train;
    c.diagnostics.extend(errs);
    if !c.has_errors() {
        c.diagnostics.extend(ir::shape::infer(&mut g));
    }
    if !c.has_errors() {
        c.diagnostics.extend(crate::elaborate::check_pretrained(&g));
        // What no kernel runs, reported at check time rather than at the first batch.
        c.diagnostics.extend(crate::lower::unsupported(&g));
    }
    if !c.has_errors() {
        let train_props = model.items.iter().filter_map(|i| match i {
            ast::Item::Train { props, .. } => Some(props),
            _ => None,
        });
        for props in train_props {
            c.diagnostics
                .extend(crate::elaborate::check_monitor(props, &g));
        }
    }
    if !c.has_errors() {
        if let Err(e) = ir::verify(&g, true) {
            c.diagnostics.push(Diagnostic::error(
                "mtl::internal",
                format!("IR invariant broken after elaboration: {e}"),
            ));
        }
    }
    if !c.has_errors() {
        let mut opt = g.clone();
        if opts.optimize {
            match passes::run_pipeline(&mut opt, opts) {
                Ok((report, warnings)) => {
                    c.passes = report;
                    c.diagnostics.extend(warnings);
                }
                Err(e) => c.diagnostics.push(Diagnostic::error("mtl::internal", e)),
            }
        }
        c.raw = Some(g);
        c.graph = Some(opt);
    } else {
        c.raw = Some(g);
    }
    c.ast = Some(file);
    c
}

fn load_imports(
    file: &ast::File,
    dir: &Path,
    c: &mut Compiled,
    out: &mut Vec<ast::File>,
    seen: &mut HashSet<PathBuf>,
    depth: usize,
) {
    for (rel, span) in &file.imports {
        let path = dir.join(rel);
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if !seen.insert(key) || depth > 32 {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                c.diagnostics.push(
                    Diagnostic::error(
                        "mtl::missing-import",
                        format!("cannot read imported file `{rel}`: {e}"),
                    )
                    .label(*span, "imported here")
                    .help(format!(
                        "paths are relative to the importing file; looked for {}",
                        path.display()
                    )),
                );
                continue;
            }
        };
        let id = c.sources.add(path.display().to_string(), text.clone());
        match syntax::parse(&text, id) {
            Ok(f) => {
                let sub = path.parent().map(Path::to_path_buf).unwrap_or_default();
                load_imports(&f, &sub, c, out, seen, depth + 1);
                out.push(f);
            }
            Err(d) => c.diagnostics.push(d),
        }
    }
}
