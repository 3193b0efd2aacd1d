//! TensorBoard event files for a run: per epoch, each head's loss and
//! metrics, the combined loss, the learning rate and the loss weights in
//! force. As Keras does, training and validation go to two directories
//! (`train/`, `validation/`) under the same tags, so TensorBoard draws them
//! as two curves on one chart.
//!
//! An event file is a sequence of TFRecords, each holding one serialized
//! `tensorflow.Event` protobuf. The first event must carry
//! `file_version = "brain.Event:2"`; TensorBoard uses it to recognise the
//! format. We hand-declare the few protobuf fields we need instead of
//! compiling `event.proto`, so no build script or `protoc` is required.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::fit::{EpochRecord, EvalResult};

/// The two writers of a run's TensorBoard directory.
pub struct Board {
    train: EventWriter,
    validation: EventWriter,
}

impl Board {
    pub fn create(dir: &Path) -> io::Result<Board> {
        Ok(Board {
            train: EventWriter::create(&dir.join("train"))?,
            validation: EventWriter::create(&dir.join("validation"))?,
        })
    }

    /// One epoch's scalars, at step = the epoch number (1-based), flushed.
    pub fn epoch(&mut self, rec: &EpochRecord) -> io::Result<()> {
        let step = rec.epoch as i64;
        write_eval(&mut self.train, step, &rec.train)?;
        let t = &mut self.train;
        t.scalar("learning_rate", step, rec.lr as f32)?;
        t.scalar("samples_per_sec", step, rec.samples_per_sec as f32)?;
        for (head, w) in &rec.loss_weights {
            t.scalar(&format!("loss_weight/{head}"), step, *w as f32)?;
        }
        if let Some(v) = &rec.val {
            write_eval(&mut self.validation, step, v)?;
        }
        self.train.flush()?;
        self.validation.flush()
    }
}

fn write_eval(w: &mut EventWriter, step: i64, e: &EvalResult) -> io::Result<()> {
    w.scalar("epoch_loss", step, e.loss as f32)?;
    for (head, h) in &e.heads {
        w.scalar(&format!("{head}/loss"), step, h.loss as f32)?;
        for (metric, v) in &h.metrics {
            w.scalar(&format!("{head}/{metric}"), step, *v as f32)?;
        }
    }
    for (name, v) in &e.aux {
        w.scalar(&format!("aux/{name}"), step, *v as f32)?;
    }
    Ok(())
}

/// Subset of `tensorflow.Event` (tensorflow/core/util/event.proto).
/// In the .proto, `file_version` and `summary` sit in `oneof what`; two
/// optional fields are wire-identical and simpler, and we never set both.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// Subset of `tensorflow.Summary` (tensorflow/core/framework/summary.proto).
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// Subset of `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    /// `simple_value` lives in a oneof upstream, so presence matters: a plain
    /// proto3 float would drop 0.0 from the wire and TensorBoard would then
    /// not see a scalar at all. `optional` forces it to be written.
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// TFRecord stores CRCs "masked" because CRCs of data that itself contains
/// CRCs are weak; the mask is fixed by the format.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    // rotate_right(15) == (crc >> 15) | (crc << 17), as the format specifies.
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames `data` as one TFRecord:
/// u64 len (LE) | masked crc(len bytes) | data | masked crc(data).
fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut rec = Vec::with_capacity(data.len() + 16);
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    rec.extend_from_slice(data);
    rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    rec
}

fn now_secs() -> f64 {
    // A clock before 1970 is not worth failing a training run over.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Hostname only makes the file name unique across machines sharing a log
/// dir, so a best-effort read without a libc dependency is enough.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Appends scalar events to a fresh TensorBoard event file.
pub struct EventWriter {
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file
    /// `events.out.tfevents.{unix_secs}.{hostname}.mtl`, writes the leading
    /// `file_version` event and flushes.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let wall_time = now_secs();
        let base = format!(
            "events.out.tfevents.{}.{}.mtl",
            wall_time as u64,
            hostname()
        );
        // Never clobber an existing log (two writers in the same second).
        // Suffixes are appended so that later files sort after earlier ones:
        // TensorBoard's directory watcher reads files in name order.
        let mut k = 0u32;
        let file = loop {
            let name = if k == 0 {
                base.clone()
            } else {
                format!("{base}.{k}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && k < 1000 => k += 1,
                Err(e) => return Err(e),
            }
        };
        let mut w = EventWriter {
            out: BufWriter::new(file),
        };
        w.write_event(&Event {
            wall_time,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        w.flush()?;
        Ok(w)
    }

    /// Records one scalar at `step` (wall_time = now). Buffered: call
    /// `flush` to make it visible to a running TensorBoard.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> io::Result<()> {
        self.write_event(&Event {
            wall_time: now_secs(),
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_owned(),
                    simple_value: Some(value),
                }],
            }),
        })
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.out.write_all(&encode_record(&ev.encode_to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses TFRecords, checking both CRCs, and decodes each as an Event.
    fn read_events(path: &Path) -> Vec<Event> {
        let buf = fs::read(path).expect("read event file");
        let (mut pos, mut events) = (0usize, Vec::new());
        while pos < buf.len() {
            let len_bytes = &buf[pos..pos + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(buf[pos + 8..pos + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(len_bytes), "length crc");
            let data = &buf[pos + 12..pos + 12 + len];
            let data_crc =
                u32::from_le_bytes(buf[pos + 12 + len..pos + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data), "data crc");
            events.push(Event::decode(data).expect("decode Event"));
            pos += 16 + len;
        }
        assert_eq!(pos, buf.len(), "trailing bytes");
        events
    }

    #[test]
    fn masked_crc_matches_reference() {
        // crc32c("123456789") is the standard CRC-32C check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // Masked values computed independently with tensorboard's pure-Python
        // implementation (tensorboard.compat.tensorflow_stub.pywrap_tensorflow
        // .masked_crc32c); see check_tensorboard.py --crc.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&5u64.to_le_bytes()), 0x3E04_B2EA);
        assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
    }

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("tbwriter-rt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir).expect("create");
        w.scalar("loss", 0, 0.0).expect("scalar");
        w.scalar("loss", 1, 1.5).expect("scalar");
        w.scalar("lr/group0", 7, -3.25e-4).expect("scalar");
        w.flush().expect("flush");
        let files = || -> Vec<std::path::PathBuf> {
            let mut f: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            f.sort();
            f
        };
        let path = files()[0].clone();
        assert!(path.to_str().unwrap().contains("tfevents"));

        // A second writer in the same second must not overwrite the first.
        let w2 = EventWriter::create(&dir).expect("create 2");
        assert_eq!(files().len(), 2);

        let evs = read_events(&path);
        assert_eq!(evs[0].file_version.as_deref(), Some("brain.Event:2"));
        let got: Vec<(String, i64, f32)> = evs[1..]
            .iter()
            .map(|e| {
                let v = &e.summary.as_ref().expect("summary").value[0];
                (
                    v.tag.clone(),
                    e.step,
                    v.simple_value.expect("simple_value present"),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("loss".to_string(), 0, 0.0),
                ("loss".to_string(), 1, 1.5),
                ("lr/group0".to_string(), 7, -3.25e-4),
            ]
        );
        assert!(evs.iter().all(|e| e.wall_time > 1.0e9));
        drop(w2);
        let _ = fs::remove_dir_all(&dir);
    }

    /// An epoch lands as Keras lays it out: the same tags in `train/` and
    /// `validation/`, the schedule and weights in `train/` alone.
    #[test]
    fn an_epoch_is_one_scalar_per_head_metric_and_split() {
        let dir = std::env::temp_dir().join(format!("tbwriter-board-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let eval = |loss: f64, acc: f64| EvalResult {
            loss,
            heads: [(
                "digit".to_string(),
                super::super::fit::HeadEval {
                    loss,
                    metrics: [("accuracy".to_string(), acc)].into(),
                },
            )]
            .into(),
            aux: Default::default(),
        };
        let mut board = Board::create(&dir).expect("create");
        for epoch in 1..=2 {
            let rec = EpochRecord {
                epoch,
                lr: 1e-3,
                train: eval(1.0 / epoch as f64, 0.5),
                val: Some(eval(2.0 / epoch as f64, 0.25)),
                loss_weights: [("digit".to_string(), 1.0)].into(),
                samples_per_sec: 100.0,
                best: true,
            };
            board.epoch(&rec).expect("epoch");
        }
        let scalars = |sub: &str| -> Vec<(String, i64, f32)> {
            let file = fs::read_dir(dir.join(sub))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            read_events(&file)
                .into_iter()
                .filter_map(|e| Some((e.step, e.summary?)))
                .flat_map(|(s, sm)| {
                    sm.value
                        .into_iter()
                        .map(move |v| (v.tag, s, v.simple_value.unwrap()))
                })
                .collect()
        };
        let (t, v) = (scalars("train"), scalars("validation"));
        let at = |xs: &[(String, i64, f32)], tag: &str| -> Vec<(i64, f32)> {
            xs.iter()
                .filter(|x| x.0 == tag)
                .map(|x| (x.1, x.2))
                .collect()
        };
        assert_eq!(at(&t, "epoch_loss"), vec![(1, 1.0), (2, 0.5)]);
        assert_eq!(at(&v, "epoch_loss"), vec![(1, 2.0), (2, 1.0)]);
        assert_eq!(at(&v, "digit/accuracy"), vec![(1, 0.25), (2, 0.25)]);
        assert_eq!(at(&t, "loss_weight/digit").len(), 2);
        assert!(at(&v, "learning_rate").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
