//! clap commands. Exit codes: 0 ok, 1 the model or data has errors, 2 usage or I/O.

mod bench;
mod compile;
mod distributed;
mod export;
pub mod heap;
mod plot;
mod run;
mod serve;
mod train;

use clap::{Args, Parser, Subcommand};
use mtl::data::{Dataset, Storage};
use mtl::diagnostics::{Diagnostic, SourceMap};
use mtl::lower::{lower, Program};
use mtl::pipeline::Mode;
use mtl::train::config::TrainConfig;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "mtl",
    version,
    about = "A declarative model-graph compiler for multi-task, multi-modal deep learning"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse, resolve and shape-check model files.
    Check(compile::CheckArgs),
    /// A Keras-like table of layers, shapes and parameter counts.
    Summary(compile::SummaryArgs),
    /// Show a compilation stage: ast, ir-raw, ir, dot, stats.
    Compile(compile::CompileArgs),
    /// Run a model on tensors: one per input in, one per head out.
    Predict(run::PredictArgs),
    /// Train a model (the main job).
    Train(Box<train::TrainArgs>),
    /// Loss and metrics of a trained run on a data set.
    Evaluate(train::EvaluateArgs),
    /// Learning curves and loss weights of a run (PNG or SVG); with `--data`,
    /// a confusion matrix or predicted-vs-true scatter per head.
    Plot(plot::PlotArgs),
    /// Throughput of training steps or inference on random data.
    Bench(bench::BenchArgs),
    /// Generate a built-in data set.
    Data(run::DataArgs),
    /// Write fresh weights with Keras's default initializers.
    Init(run::InitArgs),
    /// A trained model as an ONNX file (opset 17): one input per model
    /// input, one output per head, the values `predict` gives.
    Export(export::ExportArgs),
    /// Predictions over HTTP: GET /healthz, GET /v1/model, POST /v1/predict
    /// (requests arriving together are batched).
    Serve(serve::ServeArgs),
    /// Checks and times the data-parallel transport (`mpirun -np N mtl
    /// collective`; on GPUs NCCL): all-reduces, broadcast, barrier.
    Collective(distributed::CollectiveArgs),
}

/// A failure the CLI reports: exit code and message (already rendered).
pub struct Fail {
    pub code: i32,
    pub message: String,
}

impl Fail {
    pub fn usage(message: impl Into<String>) -> Self {
        Fail {
            code: 2,
            message: message.into(),
        }
    }
    pub fn model(message: impl Into<String>) -> Self {
        Fail {
            code: 1,
            message: message.into(),
        }
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    // The main thread computes as one of the pool's workers, except where
    // it waits in tokio (`serve`) or the pool is sized after joining the
    // ranks (`train` and `collective` adopt it then).
    if !matches!(cli.cmd, Cmd::Serve(_) | Cmd::Train(_) | Cmd::Collective(_)) {
        mtl::kernels::par::adopt_caller(None);
    }
    let r = match cli.cmd {
        Cmd::Check(a) => compile::check(a),
        Cmd::Summary(a) => compile::summary(a),
        Cmd::Compile(a) => compile::compile(a),
        Cmd::Predict(a) => run::predict(a),
        Cmd::Init(a) => run::init(a),
        Cmd::Data(a) => run::data(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Train(a) => train::train(*a),
        Cmd::Evaluate(a) => train::evaluate(a),
        Cmd::Plot(a) => plot::plot(a),
        Cmd::Export(a) => export::export(a),
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Collective(a) => distributed::collective(a),
    };
    match r {
        Ok(code) => code,
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            f.code
        }
    }
}

pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Renders diagnostics for a terminal.
pub fn rendered(ds: &[Diagnostic], sources: &SourceMap) -> String {
    mtl::render::render_all(ds, sources, color(), 100)
}

/// Compiles a model file; errors (rendered) become a `Fail`, warnings are
/// printed when `warn` (a command compiling one file twice warns once).
pub fn load(
    path: &Path,
    opts: &mtl::Options,
    warn: bool,
) -> Result<(mtl::ir::Graph, mtl::Compiled), Fail> {
    let c = mtl::compile_file(path, opts)
        .map_err(|e| Fail::usage(format!("error: cannot read {}: {e}", path.display())))?;
    if c.has_errors() {
        return Err(Fail::model(rendered(&c.diagnostics, &c.sources)));
    }
    if warn && !c.diagnostics.is_empty() {
        eprintln!("{}", rendered(&c.diagnostics, &c.sources));
    }
    let g = c
        .graph
        .clone()
        .ok_or_else(|| Fail::model("error: compilation produced no graph"))?;
    Ok((g, c))
}

/// A model file, or `RUN_DIR/model.mtl` with `RUN_DIR/weights.safetensors`.
pub fn resolve_model(path: &Path) -> (PathBuf, Option<PathBuf>) {
    if path.is_dir() {
        (
            path.join("model.mtl"),
            Some(path.join("weights.safetensors")),
        )
    } else {
        (path.to_path_buf(), None)
    }
}

/// Compiles and lowers `model` for `mode`: the graph, its `train { }` block
/// and the program; `warn` prints the warnings.
pub fn build(
    model: &Path,
    mode: Mode,
    optimize: bool,
    warn: bool,
) -> Result<(mtl::ir::Graph, TrainConfig, Program), Fail> {
    let opts = mtl::Options {
        optimize,
        mode,
        ..Default::default()
    };
    let (g, c) = load(model, &opts, warn)?;
    let prog = lower(&g, mode).map_err(|d| Fail::model(rendered(&d, &c.sources)))?;
    Ok((g, c.train, prog))
}

/// A trained model ready for inference: its graph, the inference program
/// (placed on the device when `place` is given), its weights (`--weights`,
/// else the run directory's), and the run's vocabularies and label maps.
pub struct Trained {
    pub graph: mtl::ir::Graph,
    pub prog: Program,
    pub params: mtl::lower::Params,
    pub enc: mtl::data::Encoders,
}

pub fn load_trained(
    model: &Path,
    weights: Option<PathBuf>,
    device: &candle_core::Device,
    place: Option<&DeviceArgs>,
    optimize: bool,
) -> Result<Trained, Fail> {
    let (file, run_weights) = resolve_model(model);
    let weights = weights
        .or(run_weights)
        .ok_or_else(|| Fail::usage("error: --weights is required when MODEL is a file"))?;
    let (graph, _, prog) = build(&file, Mode::Infer, optimize, true)?;
    let prog = match place {
        Some(d) => d.place(prog, device)?,
        None => prog,
    };
    let mut params = mtl::lower::init_params(&prog, 0, device)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    // A weights file without a pretrained encoder's tensors (the heads of a
    // model whose encoder was never trained): those alone are read from the
    // checkpoint, which is not opened when the file has them all.
    let encoder = |k: &str| {
        graph
            .pretrained
            .iter()
            .any(|u| mtl::ir::under(k, &u.prefix))
    };
    let absent = params
        .load_except(&weights, device, encoder)
        .map_err(|e| Fail::model(format!("error: {e}")))?;
    for u in &graph.pretrained {
        if absent.iter().any(|k| mtl::ir::under(k, &u.prefix)) {
            let ck =
                mtl::pretrained::open(&u.dir).map_err(|e| Fail::model(format!("error: {e}")))?;
            ck.load_matching(&params, &u.prefix, |k| absent.iter().any(|a| a == k))
                .map_err(|e| Fail::model(format!("error: {e}")))?;
        }
    }
    let enc = mtl::data::Encoders::load(&model.join("data.json"))
        .map_err(|e| Fail::usage(format!("error: {e}")))?;
    Ok(Trained {
        graph,
        prog,
        params,
        enc,
    })
}

/// Copies every `pretrained(...)` layer's checkpoint into `params`.
pub fn load_pretrained(g: &mtl::ir::Graph, params: &mtl::lower::Params) -> Result<(), Fail> {
    for u in &g.pretrained {
        let ck = mtl::pretrained::open(&u.dir).map_err(|e| Fail::model(format!("error: {e}")))?;
        ck.load_into(params, &u.prefix)
            .map_err(|e| Fail::model(format!("error: {e}")))?;
    }
    Ok(())
}

/// Where the program runs, and with which kernels.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` (`cuda:N` for the N-th GPU) or `metal`; GPUs need a
    /// build with `--features cuda` / `metal`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `own`: our fused CPU kernels where they exist; `candle`: the path a
    /// GPU run takes (to check it on a CPU): candle's ops, and the CPU code of
    /// our ops that have CUDA code (recurrences, cells, columns, norms, max
    /// pool, attention's softmax, Adam).
    #[arg(long, value_enum, default_value = "own")]
    kernels: Kernels,
    /// `bf16`: mixed precision, the forward and backward in bfloat16 with f32
    /// weights, optimizer, losses and norm statistics (for GPUs; on a CPU it
    /// runs candle's bf16 ops, slower than f32); `tf32`: f32 tensors whose
    /// matrix products (and so convolutions) run on the GPU's TF32 tensor
    /// cores, 10 bits of mantissa in the products (PyTorch's default for
    /// cuDNN convolutions; CUDA only).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    Tf32,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Own,
    Candle,
}

impl DeviceArgs {
    /// `--device cuda` in a data-parallel run: this rank's own GPU,
    /// `cuda:LOCAL_RANK` (an explicit `cuda:N` is kept).
    pub fn per_rank(&mut self, local_rank: Option<usize>) {
        if let (true, Some(r)) = (self.device == "cuda", local_rank) {
            self.device = format!("cuda:{r}");
        }
    }

    /// Opens the device and sets the kernel choice for this thread.
    pub fn open(&self) -> Result<candle_core::Device, Fail> {
        mtl::kernels::set_portable(self.kernels == Kernels::Candle);
        mtl::predict::device(&self.device).map_err(Fail::usage)
    }

    /// The precision's name, for reports.
    pub fn precision_name(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Tf32 => "tf32",
        }
    }

    /// `prog` for the opened `device`: its kernels and its compute dtype.
    pub fn place(&self, prog: Program, device: &candle_core::Device) -> Result<Program, Fail> {
        let dtype = match self.precision {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 if device.is_cpu() => {
                return Err(Fail::usage(
                    "error: `--precision bf16` needs a GPU (`--device cuda`): candle's CPU matmul has no bf16",
                ))
            }
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::Tf32 if !device.is_cuda() => {
                return Err(Fail::usage(
                    "error: `--precision tf32` needs an NVIDIA GPU (`--device cuda`)",
                ))
            }
            Precision::Tf32 => {
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
                candle_core::DType::F32
            }
        };
        Ok(prog.for_device(device).with_precision(dtype))
    }
}

/// Where decoded data lives: memory up to a bound, else a disk cache.
#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Decoded data (or a tensor file) above this many MiB stays on disk and
    /// is read a batch at a time.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory_limit: u64,
    /// Where decoded manifests above the memory limit are cached and reused
    /// (default: $MTL_CACHE_DIR, else $XDG_CACHE_HOME/mtl or ~/.cache/mtl).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl StorageArgs {
    pub fn options(&self) -> mtl::data::LoadOptions {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = self
            .cache_dir
            .clone()
            .or_else(|| env("MTL_CACHE_DIR"))
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("mtl")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("mtl")))
            .unwrap_or_else(|| PathBuf::from(".mtl-cache"));
        mtl::data::LoadOptions {
            memory_limit: self.memory_limit.saturating_mul(1 << 20),
            cache_dir: Some(dir),
        }
    }
}

/// Says where decoded data went when it is not in memory.
pub fn report_storage(ds: &Dataset, what: &str) {
    match &ds.storage {
        Storage::Memory => {}
        Storage::File(p) => eprintln!(
            "{what}: {} is above --memory-limit; reading it a batch at a time",
            p.display()
        ),
        Storage::Cache { dir, reused } => eprintln!(
            "{what}: decoded data above --memory-limit {} {}",
            if *reused { "reused from" } else { "cached in" },
            dir.display()
        ),
    }
}

/// Which executor runs a model's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// The planned executor where it covers every step (CPU, f32), else candle.
    Auto,
    /// Candle's ops and autograd always.
    Candle,
}
