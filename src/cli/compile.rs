//! `check`, `summary`, `compile`: the front half of the pipeline.

use super::{build, load, rendered, Fail, StorageArgs};
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
    /// Check this data against the (one) model without training: every
    /// column, file and value as training would read it, then per head the
    /// labels present and missing, the classes against the head's width and
    /// the target range. Exit 1 on any error.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A Hugging Face `tokenizer.json` for token inputs, as in `train`.
    #[arg(long, requires = "data")]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
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
    if a.data.is_some() && a.files.len() != 1 {
        return Err(Fail::usage(
            "error: `--data` checks one model: give one model file",
        ));
    }
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
    if let (Some(data), 0) = (&a.data, worst) {
        let audit = check_data(&a.files[0], data, &a)?;
        if audit.has_errors() {
            worst = 1;
        }
        match a.format {
            Format::Json => {
                json.push(serde_json::json!({"data": data.display().to_string(), "audit": audit}))
            }
            Format::Human => print!("{}", audit_table(data, &audit)),
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

/// The data loaded as training loads it (every cell, file and decode
/// checked, errors with row and column), then audited per head.
fn check_data(
    model: &std::path::Path,
    data: &std::path::Path,
    a: &CheckArgs,
) -> Result<mtl::data::audit::Audit, Fail> {
    let (g, _, prog) = build(model, Mode::Train, true, false)?;
    let sig = prog.signature();
    // As `train` encodes: a pretrained BERT's own tokenizer unless one is given.
    let own = g.pretrained_tokenizer();
    let mut enc = mtl::data::Encoders {
        special_tokens: a.tokenizer.is_none() && own.is_some(),
        tokenizer: a.tokenizer.clone().or(own),
        ..Default::default()
    };
    let dev = candle_core::Device::Cpu;
    let ds = mtl::data::load(data, &sig, &mut enc, true, true, &dev, &a.storage.options())
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    mtl::data::audit::audit(&ds, &sig).map_err(|e| Fail::model(format!("error: {e}")))
}

fn audit_table(data: &std::path::Path, a: &mtl::data::audit::Audit) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: {} samples", data.display(), a.samples);
    let _ = writeln!(s, "{:<16} {:<6} shape", "input", "dtype");
    for i in &a.inputs {
        let _ = writeln!(s, "{:<16} {:<6} {:?}", i.name, i.dtype, i.shape);
    }
    let _ = writeln!(
        s,
        "{:<16} {:<22} {:>8} {:>8}  classes / range",
        "head", "loss", "labels", "missing"
    );
    for h in &a.heads {
        let total = (h.present + h.missing).max(1) as f64;
        let what = if h.class_counts.is_empty() {
            h.range
                .map(|(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
                .unwrap_or_default()
        } else {
            let seen = h.class_counts.iter().filter(|c| **c > 0).count();
            let counts: Vec<String> = h.class_counts.iter().map(u64::to_string).collect();
            format!(
                "{seen} of {} seen: {}",
                h.class_counts.len(),
                counts.join(" / ")
            )
        };
        let _ = writeln!(
            s,
            "{:<16} {:<22} {:>8} {:>7.1}%  {what}",
            h.name,
            h.loss,
            h.present,
            100.0 * h.missing as f64 / total
        );
        for p in &h.problems {
            let _ = writeln!(s, "  error: head `{}`: {p}", h.name);
        }
    }
    let errors: usize = a.heads.iter().map(|h| h.problems.len()).sum();
    let _ = writeln!(
        s,
        "{}",
        if errors == 0 {
            "data ok".to_string()
        } else {
            format!("{errors} error(s)")
        }
    );
    s
}

pub fn summary(a: SummaryArgs) -> Result<i32, Fail> {
    // The training pipeline: every layer as written (inference folds and merges some).
    let opts = mtl::Options {
        optimize: a.opt,
        mode: Mode::Train,
        ..Default::default()
    };
    let (model, _) = super::resolve_model(&a.model);
    let (mut g, c) = load(&model, &opts, true)?;
    // Layers `train { freeze }` keeps fixed count as non-trainable, as in Keras.
    g.frozen.extend(c.train.freeze.iter().cloned());
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
            Ok(p) if mode == Mode::Infer => {
                print!("{}{}", p.render(), mtl::lower::planned::render(&p))
            }
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
