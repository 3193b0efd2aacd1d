//! What several stages need of files: a size and CRC-32C stamp, to know a
//! file is the one that was written (checkpoints, the data cache), and
//! whole-file writes that never leave a part behind.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// What a written file must still be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub bytes: u64,
    pub crc32c: u32,
}

impl Stamp {
    /// The stamp of the file at `path`, read in chunks.
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let mut f = std::fs::File::open(path)?;
        let (mut crc, mut bytes) = (0u32, 0u64);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(Stamp { bytes, crc32c: crc });
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            bytes += n as u64;
        }
    }
}

/// Writes `bytes` to `path` through a sibling temporary file and a rename,
/// so a reader sees the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stamp_is_crc32c() {
        let p = std::env::temp_dir().join(format!("mtl-stamp-{}", std::process::id()));
        std::fs::write(&p, "123456789").unwrap();
        // The standard CRC-32C check value.
        let s = super::Stamp::of(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!((s.bytes, s.crc32c), (9, 0xE306_9283));
    }
}
