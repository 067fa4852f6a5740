//! Hand-written CUDA kernels (compiled at run time by NVRTC through cudarc) for three
//! voxel-wise steps of the pipeline, each with the CPU implementation that defines its
//! result and is what runs on machines without a GPU:
//!
//! - `window`: CT intensity windowing (`ScaleIntensityRanged`);
//! - `accumulate`: adding one window's weighted output and its importance weights into
//!   the sliding-window sums (threads own distinct voxels, so no atomics are needed);
//! - `argmax`: class index per voxel (first maximum wins, as in torch).
//!
//! Nothing here may panic on a CPU machine: cudarc's dynamic loading panics when a
//! library is missing, so every entry point first checks `is_culib_present()` for the
//! driver and for NVRTC. `scripts/gpu-check.sh` runs [`self_check`] on a GPU machine to
//! prove GPU and CPU agree. The libtorch pipeline does the same steps with tensor ops on
//! the model's device; these kernels are the building blocks for fusing them.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Result, RunnerError};

const SOURCE: &str = r#"
extern "C" __global__ void window(const float* x, float* y, unsigned int n,
                                  float a_min, float scale, float b_min, float lo, float hi, int clip) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = __fadd_rn(__fmul_rn(__fsub_rn(x[i], a_min), scale), b_min);
    y[i] = clip ? fminf(fmaxf(v, lo), hi) : v;
}

extern "C" __global__ void accumulate(float* acc, float* count, const float* pred, const float* weight,
                                      int channels, int d, int h, int w,
                                      int z0, int y0, int x0, int rz, int ry, int rx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int roi = rz * ry * rx;
    if (i >= roi) return;
    int dz = i / (ry * rx), dy = (i / rx) % ry, dx = i % rx;
    long long v = ((long long)(z0 + dz) * h + (y0 + dy)) * w + (x0 + dx);
    long long vol = (long long)d * h * w;
    float wt = weight[i];
    count[v] += wt;
    for (int c = 0; c < channels; ++c) {
        acc[c * vol + v] = __fadd_rn(acc[c * vol + v], __fmul_rn(wt, pred[(long long)c * roi + i]));
    }
}

extern "C" __global__ void argmax(const float* p, unsigned char* out, int channels, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float best = p[i];
    int arg = 0;
    for (int c = 1; c < channels; ++c) {
        float v = p[(long long)c * n + i];
        if (v > best) { best = v; arg = c; }
    }
    out[i] = (unsigned char)arg;
}
"#;

/// CT windowing parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub a_min: f32,
    pub a_max: f32,
    pub b_min: f32,
    pub b_max: f32,
    pub clip: bool,
}

impl Window {
    fn scale(&self) -> f32 {
        (self.b_max - self.b_min) / (self.a_max - self.a_min)
    }
}

/// Where one window's output lands in the volume (all in voxels, tensor order D, H, W).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub channels: usize,
    pub volume: [usize; 3],
    pub start: [usize; 3],
    pub roi: [usize; 3],
}

/// CPU reference of the `window` kernel.
pub fn window_cpu(x: &[f32], w: &Window) -> Vec<f32> {
    let (scale, lo, hi) = (w.scale(), w.b_min.min(w.b_max), w.b_min.max(w.b_max));
    x.iter()
        .map(|&v| {
            let y = (v - w.a_min) * scale + w.b_min;
            if w.clip { y.clamp(lo, hi) } else { y }
        })
        .collect()
}

/// CPU reference of the `accumulate` kernel: `acc[c] += weight·pred[c]`, `count += weight`
/// over the window's voxels. `acc` is `[C, D, H, W]`, `pred` `[C, roi]`, `weight` `[roi]`.
pub fn accumulate_cpu(
    acc: &mut [f32],
    count: &mut [f32],
    pred: &[f32],
    weight: &[f32],
    p: &Placement,
) {
    let [_, h, w] = p.volume;
    let vol = p.volume.iter().product::<usize>();
    let [rz, ry, rx] = p.roi;
    let roi = rz * ry * rx;
    for i in 0..roi {
        let (dz, dy, dx) = (i / (ry * rx), (i / rx) % ry, i % rx);
        let v = ((p.start[0] + dz) * h + p.start[1] + dy) * w + p.start[2] + dx;
        count[v] += weight[i];
        for c in 0..p.channels {
            acc[c * vol + v] += weight[i] * pred[c * roi + i];
        }
    }
}

/// CPU reference of the `argmax` kernel for `[C, n]` scores.
pub fn argmax_cpu(p: &[f32], channels: usize) -> Vec<u8> {
    let n = p.len() / channels.max(1);
    (0..n)
        .map(|i| {
            let mut best = (0usize, p[i]);
            for c in 1..channels {
                if p[c * n + i] > best.1 {
                    best = (c, p[c * n + i]);
                }
            }
            best.0 as u8
        })
        .collect()
}

/// A CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_mem_bytes: usize,
}

/// Whether the CUDA driver library can be loaded (false on CPU machines).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as for `driver_present`.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The GPUs the driver sees; empty without a driver.
pub fn discover() -> Vec<GpuInfo> {
    if !driver_present() {
        return Vec::new();
    }
    let count = CudaContext::device_count().unwrap_or(0).max(0) as usize;
    (0..count)
        .filter_map(|ordinal| {
            let ctx = CudaContext::new(ordinal).ok()?;
            Some(GpuInfo {
                ordinal,
                name: ctx.name().unwrap_or_default(),
                total_mem_bytes: ctx.total_mem().unwrap_or(0),
            })
        })
        .collect()
}

fn cuda<E: std::fmt::Debug>(e: E) -> RunnerError {
    RunnerError::Cuda(format!("{e:?}"))
}

/// Compiles the kernel source to PTX with NVRTC (needs no GPU, only libnvrtc).
pub fn compile() -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_present() {
        return Err(RunnerError::Cuda("NVRTC library not found".into()));
    }
    cudarc::nvrtc::compile_ptx(SOURCE).map_err(cuda)
}

/// The compiled kernels on one device.
pub struct Kernels {
    stream: Arc<CudaStream>,
    window: CudaFunction,
    accumulate: CudaFunction,
    argmax: CudaFunction,
}

impl Kernels {
    /// Compiles the kernels with NVRTC and loads them on GPU `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() || !nvrtc_present() {
            return Err(RunnerError::Cuda(
                "CUDA driver or NVRTC library not found".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda)?;
        let module = ctx.load_module(compile()?).map_err(cuda)?;
        Ok(Self {
            stream: ctx.default_stream(),
            window: module.load_function("window").map_err(cuda)?,
            accumulate: module.load_function("accumulate").map_err(cuda)?,
            argmax: module.load_function("argmax").map_err(cuda)?,
        })
    }

    /// GPU `window` on host data.
    pub fn window(&self, x: &[f32], w: &Window) -> Result<Vec<f32>> {
        let s = &self.stream;
        let dx = s.clone_htod(x).map_err(cuda)?;
        let mut dy = s.alloc_zeros::<f32>(x.len()).map_err(cuda)?;
        let n = x.len() as u32;
        let (scale, lo, hi, clip) = (
            w.scale(),
            w.b_min.min(w.b_max),
            w.b_min.max(w.b_max),
            i32::from(w.clip),
        );
        let mut b = s.launch_builder(&self.window);
        b.arg(&dx)
            .arg(&mut dy)
            .arg(&n)
            .arg(&w.a_min)
            .arg(&scale)
            .arg(&w.b_min)
            .arg(&lo)
            .arg(&hi)
            .arg(&clip);
        // SAFETY: argument types and order match the kernel signature; n bounds every access.
        unsafe { b.launch(LaunchConfig::for_num_elems(n)) }.map_err(cuda)?;
        s.clone_dtoh(&dy).map_err(cuda)
    }

    /// GPU `accumulate` on host buffers (updated in place).
    pub fn accumulate(
        &self,
        acc: &mut [f32],
        count: &mut [f32],
        pred: &[f32],
        weight: &[f32],
        p: &Placement,
    ) -> Result<()> {
        let s = &self.stream;
        let mut dacc = s.clone_htod(acc).map_err(cuda)?;
        let mut dcount = s.clone_htod(count).map_err(cuda)?;
        let dpred = s.clone_htod(pred).map_err(cuda)?;
        let dweight = s.clone_htod(weight).map_err(cuda)?;
        let ints: Vec<i32> = [p.channels]
            .iter()
            .chain(&p.volume)
            .chain(&p.start)
            .chain(&p.roi)
            .map(|&v| v as i32)
            .collect();
        let roi = (p.roi.iter().product::<usize>()) as u32;
        let mut b = s.launch_builder(&self.accumulate);
        b.arg(&mut dacc).arg(&mut dcount).arg(&dpred).arg(&dweight);
        for v in &ints {
            b.arg(v);
        }
        // SAFETY: 4 buffers + 10 ints as in the kernel; the caller's placement lies inside the volume.
        unsafe { b.launch(LaunchConfig::for_num_elems(roi)) }.map_err(cuda)?;
        acc.copy_from_slice(&s.clone_dtoh(&dacc).map_err(cuda)?);
        count.copy_from_slice(&s.clone_dtoh(&dcount).map_err(cuda)?);
        Ok(())
    }

    /// GPU `argmax` over `[C, n]` scores.
    pub fn argmax(&self, p: &[f32], channels: usize) -> Result<Vec<u8>> {
        let s = &self.stream;
        let n = (p.len() / channels.max(1)) as u32;
        let dp = s.clone_htod(p).map_err(cuda)?;
        let mut dout = s.alloc_zeros::<u8>(n as usize).map_err(cuda)?;
        let c = channels as i32;
        let mut b = s.launch_builder(&self.argmax);
        b.arg(&dp).arg(&mut dout).arg(&c).arg(&n);
        // SAFETY: argument types match the kernel; n·C elements were uploaded.
        unsafe { b.launch(LaunchConfig::for_num_elems(n)) }.map_err(cuda)?;
        s.clone_dtoh(&dout).map_err(cuda)
    }
}

/// One GPU-versus-CPU comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelCheck {
    pub kernel: &'static str,
    pub elements: usize,
    pub max_abs_diff: f64,
    pub passed: bool,
}

/// Runs every kernel on seeded random data on GPU `ordinal` and compares with the CPU
/// references (1e-5 for float results, exact for argmax).
pub fn self_check(ordinal: usize, seed: u64) -> Result<Vec<KernelCheck>> {
    let k = Kernels::new(ordinal)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut checks = Vec::new();
    let mut record = |kernel, elements, diff: f64, tol: f64| {
        checks.push(KernelCheck {
            kernel,
            elements,
            max_abs_diff: diff,
            passed: diff <= tol,
        })
    };

    let x: Vec<f32> = (0..1 << 20)
        .map(|_| rng.random_range(-1200.0..1500.0))
        .collect();
    let w = Window {
        a_min: -57.0,
        a_max: 164.0,
        b_min: 0.0,
        b_max: 1.0,
        clip: true,
    };
    record(
        "window",
        x.len(),
        max_diff(&k.window(&x, &w)?, &window_cpu(&x, &w)),
        1e-5,
    );

    let p = Placement {
        channels: 3,
        volume: [40, 36, 50],
        start: [7, 0, 13],
        roi: [32, 32, 32],
    };
    let vol = p.volume.iter().product::<usize>();
    let roi = p.roi.iter().product::<usize>();
    let acc0: Vec<f32> = (0..vol * p.channels).map(|_| rng.random()).collect();
    let count0: Vec<f32> = (0..vol).map(|_| rng.random()).collect();
    let pred: Vec<f32> = (0..roi * p.channels)
        .map(|_| rng.random_range(-5.0..5.0))
        .collect();
    let weight: Vec<f32> = (0..roi).map(|_| rng.random_range(1e-3..1.0)).collect();
    let (mut ga, mut gc) = (acc0.clone(), count0.clone());
    k.accumulate(&mut ga, &mut gc, &pred, &weight, &p)?;
    let (mut ca, mut cc) = (acc0, count0);
    accumulate_cpu(&mut ca, &mut cc, &pred, &weight, &p);
    record(
        "accumulate",
        vol * p.channels,
        max_diff(&ga, &ca).max(max_diff(&gc, &cc)),
        1e-5,
    );

    let scores: Vec<f32> = (0..3 * 100_000).map(|_| rng.random()).collect();
    let (g, c) = (k.argmax(&scores, 3)?, argmax_cpu(&scores, 3));
    let mismatches = g.iter().zip(&c).filter(|(a, b)| a != b).count() + g.len().abs_diff(c.len());
    record("argmax", c.len(), mismatches as f64, 0.0);
    Ok(checks)
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn window_reference_matches_the_tensor_pipeline() {
        let x: Vec<f32> = (-30..30).map(|v| v as f32 * 13.7).collect();
        let w = Window {
            a_min: -57.0,
            a_max: 164.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
        };
        let t = crate::transforms::apply_intensity(
            &Tensor::from_slice(&x),
            &crate::config::Intensity::spleen_ct(),
        );
        let expected = Vec::<f32>::try_from(t).unwrap();
        assert!(max_diff(&window_cpu(&x, &w), &expected) < 1e-6);
    }

    #[test]
    fn accumulate_reference_matches_sliding_window_sums() {
        // Two overlapping windows accumulated by the reference equal a direct sum.
        let p1 = Placement {
            channels: 2,
            volume: [4, 3, 5],
            start: [0, 0, 0],
            roi: [2, 3, 4],
        };
        let p2 = Placement {
            start: [2, 0, 1],
            ..p1
        };
        let vol = 60;
        let (mut acc, mut count) = (vec![0.0; 2 * vol], vec![0.0; vol]);
        let pred: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let weight = vec![0.5; 24];
        accumulate_cpu(&mut acc, &mut count, &pred, &weight, &p1);
        accumulate_cpu(&mut acc, &mut count, &pred, &weight, &p2);
        let t_pred = Tensor::from_slice(&pred).reshape([2, 2, 3, 4]) * 0.5;
        let expected = Tensor::zeros([2, 4, 3, 5], (Kind::Float, Device::Cpu));
        let _ = expected.narrow(1, 0, 2).narrow(3, 0, 4).g_add_(&t_pred);
        let _ = expected.narrow(1, 2, 2).narrow(3, 1, 4).g_add_(&t_pred);
        let expected = Vec::<f32>::try_from(expected.flatten(0, -1)).unwrap();
        assert_eq!(acc, expected);
        assert_eq!(count.iter().sum::<f32>(), 24.0);
        assert_eq!(count[4], 0.0); // voxel (0, 0, 4) is covered by neither window
    }

    #[test]
    fn argmax_reference_matches_torch_with_ties() {
        let p = [1.0f32, 5.0, 2.0, 2.0, 5.0, 0.0, 1.0, 2.0, 3.0];
        let expected = Tensor::from_slice(&p).reshape([3, 3]).argmax(0, false);
        let expected: Vec<u8> = Vec::<i64>::try_from(expected)
            .unwrap()
            .into_iter()
            .map(|v| v as u8)
            .collect();
        assert_eq!(argmax_cpu(&p, 3), expected);
        // Voxel 1 ties channels 0 and 1 at 5.0: the first wins.
        assert_eq!(argmax_cpu(&p, 3), vec![1, 0, 2]);
    }

    #[test]
    fn kernels_compile_wherever_nvrtc_is_installed() {
        // CPU machines with the CUDA wheels (nvidia/cu13/lib on LD_LIBRARY_PATH) still
        // compile-check the source; without NVRTC the call must be a clean error.
        match compile() {
            Ok(ptx) => {
                let text = ptx.to_src();
                for name in ["window", "accumulate", "argmax"] {
                    assert!(
                        text.contains(&format!(".entry {name}")),
                        "{name} missing from PTX"
                    );
                }
            }
            Err(e) => assert!(!nvrtc_present() && matches!(e, RunnerError::Cuda(_))),
        }
    }

    #[test]
    fn cuda_entry_points_fail_cleanly_without_a_gpu() {
        if driver_present() {
            return; // a GPU machine: gpu-check covers this path
        }
        assert!(discover().is_empty());
        assert!(matches!(Kernels::new(0), Err(RunnerError::Cuda(_))));
        assert!(self_check(0, 1).is_err());
    }
}
