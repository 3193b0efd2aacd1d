//! A CSV or JSON Lines manifest as read: its column names and one row of
//! text cells per sample. `encoders` fits vocabularies and label maps from it,
//! `manifest` encodes it into tensors.

use std::path::{Path, PathBuf};

pub struct Manifest {
    pub path: PathBuf,
    /// Paths in cells are relative to this directory.
    pub dir: PathBuf,
    pub columns: Vec<String>,
    /// Cells as text; an empty string is an empty cell.
    pub rows: Vec<Vec<String>>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, String> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text =
            String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
        let (columns, rows) = if path.extension().is_some_and(|e| e == "csv") {
            parse_csv(&text, path)?
        } else {
            parse_jsonl(&text, path)?
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            columns,
            rows,
        })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Names one cell (file, row and column) for a message about it.
    pub(super) fn at(&self, row: usize, col: &str) -> String {
        format!("{}: row {}, column `{col}`", self.path.display(), row + 1)
    }
}

/// Where the first byte that is not UTF-8 sits: its line (a CSV row after
/// the header) and, for CSV, the column it falls in.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|b| **b == b'\n').count();
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let field = before[start..].iter().filter(|b| **b == b',').count();
    let header: Vec<String> =
        String::from_utf8_lossy(&bytes[..bytes.iter().position(|b| *b == b'\n').unwrap_or(0)])
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
    let csv = path.extension().is_some_and(|x| x == "csv");
    let place = match (csv, line) {
        (true, 0) => "the header".to_string(),
        (true, l) => format!(
            "row {l}, column `{}`",
            header.get(field).map_or("?", String::as_str)
        ),
        (false, l) => format!("line {}", l + 1),
    };
    format!(
        "{}: {place}: the text is not UTF-8 (byte {at}); save the file as UTF-8",
        path.display()
    )
}

fn parse_csv(text: &str, path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut rd = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = rd
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    let mut rows = vec![];
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| format!("{}: row {}: {e}", path.display(), i + 1))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((columns, rows))
}

fn parse_jsonl(text: &str, path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut objs = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| format!("{}: line {}: {e}", path.display(), i + 1))?;
        objs.push(v);
    }
    let mut columns: Vec<String> = vec![];
    for o in &objs {
        for k in o.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let cell = |v: Option<&serde_json::Value>| -> String {
        match v {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Some(x) => x.to_string(),
        }
    };
    let rows = objs
        .iter()
        .map(|o| columns.iter().map(|c| cell(o.get(c))).collect())
        .collect();
    Ok((columns, rows))
}
