//! Launching our CUDA kernels: CUDA C compiled by NVRTC once per process and
//! module (the PTX targets the GPU in use, no toolkit needed at build time),
//! one thread per element (or a grid the caller chooses), contiguous f32
//! operands, fresh f32 outputs.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// A scalar argument after the output pointer.
pub enum Arg {
    I32(i32),
    F32(f32),
}

fn ptx(module: &'static str, source: &'static str) -> Result<String> {
    type Compiled = std::result::Result<String, String>;
    static CACHE: Mutex<Vec<(&'static str, Compiled)>> = Mutex::new(Vec::new());
    let mut cache = CACHE
        .lock()
        .map_err(|_| candle_core::Error::Msg("kernel cache poisoned".into()))?;
    if let Some((_, r)) = cache.iter().find(|(m, _)| *m == module) {
        return r.clone().map_err(candle_core::Error::Msg);
    }
    let compiled = nvrtc::compile_ptx(source)
        .map(|p| p.to_src())
        .map_err(|e| format!("compiling the `{module}` kernels: {e:?}"));
    cache.push((module, compiled.clone()));
    compiled.map_err(candle_core::Error::Msg)
}

/// Runs kernel `name` of `module` with `threads` threads: the operands, a
/// fresh output of `out_len` floats (every element written by the kernel),
/// then `args`.
pub fn launch(
    (module, source): (&'static str, &'static str),
    name: &str,
    operands: &[(&CudaStorage, &Layout)],
    out_len: usize,
    threads: usize,
    args: &[Arg],
) -> Result<CudaStorage> {
    let config = LaunchConfig::for_num_elems(threads as u32);
    let outs = launch_on((module, source), name, operands, &[out_len], config, args)?;
    first(outs, name)
}

/// The first of a kernel's outputs.
pub fn first(outs: Vec<CudaStorage>, name: &str) -> Result<CudaStorage> {
    outs.into_iter().next().ok_or_else(|| missing(name))
}

/// The error of a kernel call that left out an output.
pub fn missing(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name}: an output is missing"))
}

/// Runs kernel `name` of `module` on the grid `config`: the operands, fresh
/// outputs of `out_lens` floats each (a length of 0 passes a one-float
/// placeholder the kernel leaves alone; every other element is written by
/// the kernel), then `args`.
pub fn launch_on(
    (module, source): (&'static str, &'static str),
    name: &str,
    operands: &[(&CudaStorage, &Layout)],
    out_lens: &[usize],
    config: LaunchConfig,
    args: &[Arg],
) -> Result<Vec<CudaStorage>> {
    let dev = &operands[0].0.device;
    let func = dev.get_or_load_custom_func(name, module, &ptx(module, source)?)?;
    let slices = operands
        .iter()
        .map(|(s, l)| match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
            None => candle_core::bail!("{name}: contiguous operands only"),
        })
        .collect::<Result<Vec<_>>>()?;
    // SAFETY: the kernels write every element of their outputs.
    let outs = out_lens
        .iter()
        .map(|&n| unsafe { dev.alloc::<f32>(n.max(1)) })
        .collect::<Result<Vec<_>>>()?;
    if config.shared_mem_bytes > 48 * 1024 {
        // Above 48 KiB a kernel must opt in to its dynamic shared memory.
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as F;
        let attr = F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        func.set_attribute(attr, config.shared_mem_bytes as i32)
            .w()?;
    }
    let mut b = func.builder();
    for s in &slices {
        b.arg(s);
    }
    for o in &outs {
        b.arg(o);
    }
    for a in args {
        match a {
            Arg::I32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    // SAFETY: the arguments match the kernel's signature (its source is beside the caller).
    unsafe { b.launch(config) }.w()?;
    Ok(outs
        .into_iter()
        .map(|o| CudaStorage::wrap_cuda_slice(o, dev.clone()))
        .collect())
}

/// The most shared memory a block of `dev` may opt in to, in bytes.
pub fn shared_optin(dev: &candle_core::CudaDevice) -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute_enum as A;
    let attr = A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
    let bytes = dev.cuda_stream().context().attribute(attr).w()?;
    Ok(bytes.max(0) as usize)
}

/// [`launch_on`] over tensors (a backward's operands; made contiguous
/// here), which must be on a CUDA device.
pub fn launch_tensors(
    module: (&'static str, &'static str),
    name: &str,
    operands: &[&Tensor],
    out_lens: &[usize],
    config: LaunchConfig,
    args: &[Arg],
) -> Result<Vec<CudaStorage>> {
    let operands = operands
        .iter()
        .map(|x| x.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = operands.iter().map(|x| x.storage_and_layout()).collect();
    let storages = guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cuda(c) => Ok((c, *l)),
            _ => candle_core::bail!("{name}: operands on a CUDA device only"),
        })
        .collect::<Result<Vec<_>>>()?;
    launch_on(module, name, &storages, out_lens, config, args)
}

/// A fresh tensor over a kernel's output (contiguous, outside autograd).
pub fn tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
}

/// A grid of `blocks` blocks of `threads` threads, no dynamic shared memory.
pub fn blocks(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid of a warp per row, eight rows (256 threads) per block.
pub fn warp_rows(rows: usize) -> LaunchConfig {
    blocks(rows.div_ceil(8), 256)
}
