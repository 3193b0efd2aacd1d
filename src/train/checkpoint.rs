//! An epoch's checkpoint as one unit. Its files are first written beside
//! their final names (`F.next`); then `state.json`, which records each file's
//! size and CRC-32C, is renamed into place (the commit); then the files are
//! renamed over the old ones. A crash or a full disk before the commit leaves
//! the previous epoch whole; one after it is finished by the next resume,
//! which checks every file against `state.json` before it loads anything —
//! so `last`, `weights` and the optimizer state can never be an epoch ahead
//! of the state that describes them.

pub use crate::files::Stamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where `name` is written before the commit.
pub fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.next"))
}

/// Writes `name` through `write` at its staged path and stamps it.
pub fn stage(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Stamp, String> {
    let path = staged(dir, name);
    write(&path)?;
    Stamp::of(&path).map_err(|e| format!("cannot read back {}: {e}", path.display()))
}

/// After the commit: the staged files `names` replace the committed ones.
pub fn publish<'a>(dir: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    for name in names {
        let (from, to) = (staged(dir, name), dir.join(name));
        std::fs::rename(&from, &to)
            .map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Makes the files of `dir` those `state.json` committed: each already in
/// place, or still staged (the commit happened, the renames did not) and
/// then published. Anything else is damage, named with what to do.
pub fn recover(dir: &Path, files: &BTreeMap<String, Stamp>, epoch: usize) -> Result<(), String> {
    for (name, want) in files {
        let path = dir.join(name);
        if Stamp::of(&path).ok() == Some(*want) {
            continue;
        }
        if Stamp::of(&staged(dir, name)).ok() == Some(*want) {
            publish(dir, [name.as_str()])?;
            continue;
        }
        return Err(format!(
            "{} is not the file state.json recorded for epoch {epoch} ({} bytes, CRC-32C {:08x}): \
             the run directory was changed or damaged after that epoch; start a new run \
             (`--out DIR`)",
            path.display(),
            want.bytes,
            want.crc32c
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mtl-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(text: &'static str) -> impl FnOnce(&Path) -> Result<(), String> {
        move |p: &Path| std::fs::write(p, text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_committed_but_unpublished_checkpoint_is_finished_on_recovery() {
        let d = &tempdir("publish");
        std::fs::write(d.join("last.safetensors"), "epoch 1").unwrap();
        let stamp = stage(d, "last.safetensors", write("epoch 2")).unwrap();
        let files = BTreeMap::from([("last.safetensors".to_string(), stamp)]);
        // The crash: state.json names epoch 2, the rename never happened.
        recover(d, &files, 2).unwrap();
        let text = std::fs::read_to_string(d.join("last.safetensors")).unwrap();
        assert_eq!(text, "epoch 2");
        assert!(!staged(d, "last.safetensors").exists());
        // Idempotent once in place.
        recover(d, &files, 2).unwrap();
    }

    #[test]
    fn a_damaged_file_is_named_not_loaded() {
        let d = &tempdir("damaged");
        let stamp = stage(d, "optimizer.safetensors", write("moments")).unwrap();
        publish(d, ["optimizer.safetensors"]).unwrap();
        // Same size, different bytes: only the checksum can tell.
        std::fs::write(d.join("optimizer.safetensors"), "momentz").unwrap();
        let files = BTreeMap::from([("optimizer.safetensors".to_string(), stamp)]);
        let e = recover(d, &files, 7).unwrap_err();
        assert!(
            e.contains("optimizer.safetensors") && e.contains("epoch 7"),
            "{e}"
        );
    }
}
