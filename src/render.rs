//! Diagnostics → text via miette (graphical, rustc-like) or JSON for editors.
//! Returns strings; only the CLI prints them.

use crate::diagnostics::{Diagnostic, Severity, SourceMap};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};
use serde::Serialize;
use std::fmt;

struct Report<'a> {
    d: &'a Diagnostic,
    src: NamedSource<String>,
    labels: Vec<LabeledSpan>,
    message: String,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}
impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}
impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.d.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.d
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// Renders one diagnostic: header with `file:line:col`, underlined spans, help.
pub fn render(d: &Diagnostic, sources: &SourceMap, color: bool, width: usize) -> String {
    let primary = d.primary_span();
    let mut message = d.message.clone();
    let (src, labels) = match primary {
        Some(p) if (p.file as usize) < sources.files.len() => {
            let f = sources.file(p.file);
            let mut labels = vec![];
            for (i, l) in d.labels.iter().enumerate() {
                if l.span.file == p.file {
                    let s = (l.span.start as usize).min(f.text.len());
                    let e = (l.span.end as usize).clamp(s, f.text.len());
                    labels.push(if i == 0 {
                        LabeledSpan::new_primary_with_span(Some(l.message.clone()), (s, e - s))
                    } else {
                        LabeledSpan::new_with_span(Some(l.message.clone()), (s, e - s))
                    });
                } else {
                    let (line, col) = sources.line_col(l.span);
                    let other = &sources.file(l.span.file).name;
                    message.push_str(&format!("\n  note: {} ({other}:{line}:{col})", l.message));
                }
            }
            (NamedSource::new(f.name.clone(), f.text.clone()), labels)
        }
        _ => (NamedSource::new("<none>", String::new()), vec![]),
    };
    let report = Report {
        d,
        src,
        labels,
        message,
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false);
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        out = format!("{}: {}", d.code, d.message);
    }
    out
}

/// Every diagnostic, rendered, separated by blank lines.
pub fn render_all(ds: &[Diagnostic], sources: &SourceMap, color: bool, width: usize) -> String {
    ds.iter()
        .map(|d| render(d, sources, color, width))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Serialize)]
struct JsonLabel {
    message: String,
    file: String,
    line: usize,
    column: usize,
    start: u32,
    end: u32,
}

#[derive(Serialize)]
struct JsonDiag<'a> {
    severity: Severity,
    code: &'a str,
    message: &'a str,
    help: Option<&'a str>,
    labels: Vec<JsonLabel>,
}

/// JSON for editors: one array of diagnostics with file, line and column.
pub fn to_json(ds: &[Diagnostic], sources: &SourceMap) -> serde_json::Value {
    let v: Vec<JsonDiag> = ds
        .iter()
        .map(|d| JsonDiag {
            severity: d.severity,
            code: d.code,
            message: &d.message,
            help: d.help.as_deref(),
            labels: d
                .labels
                .iter()
                .filter(|l| (l.span.file as usize) < sources.files.len())
                .map(|l| {
                    let (line, column) = sources.line_col(l.span);
                    JsonLabel {
                        message: l.message.clone(),
                        file: sources.file(l.span.file).name.clone(),
                        line,
                        column,
                        start: l.span.start,
                        end: l.span.end,
                    }
                })
                .collect(),
        })
        .collect();
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}
