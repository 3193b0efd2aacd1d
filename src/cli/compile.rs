//! `check`, `summary`, `compile`: the front half of the pipeline.

use super::{load, rendered, Fail};
use clap::{Args, ValueEnum};
use mtl::pipeline::Mode;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Model files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
}

#[derive(Args)]
pub struct SummaryArgs {
    /// A model file or a run directory written by `mtl train`.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Summarize the graph after the optimizer passes (default: as written).
    #[arg(long, conflicts_with = "no_opt")]
    opt: bool,
    /// The graph as written (the default; kept for older scripts).
    #[arg(long)]
    no_opt: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Emit {
    Ast,
    IrRaw,
    Ir,
    Dot,
    Stats,
    Plan,
    /// Which parameter groups each head reaches and which heads share (a
    /// training-mode analysis).
    Sharing,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Train,
    Infer,
}

#[derive(Args)]
pub struct CompileArgs {
    model: PathBuf,
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
    /// Pipeline mode: training keeps dropout and batch statistics.
    #[arg(long, value_enum, default_value = "infer")]
    mode: ModeArg,
    /// Run no optimizer passes.
    #[arg(long)]
    no_opt: bool,
    /// Print the IR after this pass (repeatable).
    #[arg(long)]
    print_after: Vec<String>,
    #[arg(long)]
    print_after_all: bool,
}

pub fn check(a: CheckArgs) -> Result<i32, Fail> {
    let mut worst = 0;
    let mut json = vec![];
    for f in &a.files {
        let c = match mtl::compile_file(f, &mtl::Options::default()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                worst = 2;
                continue;
            }
        };
        if c.has_errors() && worst == 0 {
            worst = 1;
        }
        match a.format {
            Format::Json => json.push(serde_json::json!({"file": f.display().to_string(), "diagnostics": mtl::render::to_json(&c.diagnostics, &c.sources)})),
            Format::Human => {
                if !c.diagnostics.is_empty() {
                    eprintln!("{}", rendered(&c.diagnostics, &c.sources));
                }
                let errors = c.diagnostics.iter().filter(|d| d.is_error()).count();
                let warnings = c.diagnostics.len() - errors;
                if errors > 0 {
                    eprintln!("{}: {errors} error(s), {warnings} warning(s)", f.display());
                } else {
                    eprintln!("{}: ok ({warnings} warning(s))", f.display());
                }
            }
        }
    }
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    }
    Ok(worst)
}

pub fn summary(a: SummaryArgs) -> Result<i32, Fail> {
    // The training pipeline: every layer as written (inference folds and merges some).
    let opts = mtl::Options {
        optimize: a.opt,
        mode: Mode::Train,
        ..Default::default()
    };
    let (model, _) = super::resolve_model(&a.model);
    let (g, _) = load(&model, &opts, true)?;
    let s = mtl::summary::summarize(&g);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print!("{}", mtl::summary::render(&s));
    }
    Ok(0)
}

pub fn compile(a: CompileArgs) -> Result<i32, Fail> {
    let mode = match a.mode {
        // Sharing is a training question: inference merges heads' layers.
        _ if a.emit == Emit::Sharing => Mode::Train,
        ModeArg::Train => Mode::Train,
        ModeArg::Infer => Mode::Infer,
    };
    let known = mtl::passes::pass_names();
    for p in &a.print_after {
        if !known.contains(&p.as_str()) {
            return Err(Fail::usage(format!(
                "error: unknown pass `{p}`; passes: {}",
                known.join(", ")
            )));
        }
    }
    let opts = mtl::Options {
        optimize: !a.no_opt,
        mode,
        print_after: a.print_after.clone(),
        print_after_all: a.print_after_all,
    };
    if a.emit == Emit::Ast {
        let text = std::fs::read_to_string(&a.model)
            .map_err(|e| Fail::usage(format!("error: cannot read {}: {e}", a.model.display())))?;
        let c = mtl::compile_str(&a.model.display().to_string(), &text, &opts);
        return match c.ast {
            Some(ast) => {
                println!("{ast:#?}");
                Ok(0)
            }
            None => Err(Fail::model(rendered(&c.diagnostics, &c.sources))),
        };
    }
    let (g, c) = load(&a.model, &opts, true)?;
    for (pass, it, text) in &c.passes.dumps {
        println!("; IR after pass `{pass}` (iteration {it})\n{text}");
    }
    match a.emit {
        Emit::Ast => {}
        Emit::IrRaw => print!("{}", mtl::ir::print_ir(c.raw.as_ref().unwrap_or(&g))),
        Emit::Ir => print!("{}", mtl::ir::print_ir(&g)),
        Emit::Dot => print!("{}", mtl::ir::print_dot(&g)),
        Emit::Stats => {
            let before = c.raw.as_ref().map_or(0, |r| r.g.node_count());
            let stats = serde_json::json!({
                "nodes_before": before,
                "nodes_after": g.g.node_count(),
                "params": g.param_counts().0,
                "iterations": c.passes.iterations,
                "passes": c.passes.stats,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).unwrap_or_default()
            );
        }
        Emit::Plan => match mtl::lower::lower(&g, mode) {
            Ok(p) => print!("{}", p.render()),
            Err(d) => return Err(Fail::model(super::rendered(&d, &c.sources))),
        },
        Emit::Sharing => match mtl::lower::lower(&g, Mode::Train) {
            Ok(p) => print!("{}", p.sharing().render()),
            Err(d) => return Err(Fail::model(super::rendered(&d, &c.sources))),
        },
    }
    Ok(0)
}
