//! Optimizers (Muon for 2-D hidden matrices, Lion for everything else) and the
//! warmup-stable-decay learning-rate schedule. Updates run under `no_grad` and
//! modify the parameters in place; gradients come from `Tensor::backward`.
use tch::{Kind, Tensor};

use std::ffi::c_char;

use torch_sys::C_tensor;

use crate::cpu_bitlinear::{addmm, check};
use crate::error::{Result, TrainError};

extern "C" {
    #[cfg(test)]
    fn nct_simd_force_generic(on: i32);
    fn nct_muon_prepare(g: *const C_tensor, buf: *const C_tensor, beta: f64, out: *const C_tensor) -> *mut c_char;
    fn nct_muon_update(p: *const C_tensor, o: *const C_tensor, lr: f64, scale: f64, wd: f64) -> *mut c_char;
    fn nct_lion_update(p: *const C_tensor, m: *const C_tensor, g: *const C_tensor, lr: f64, beta1: f64, beta2: f64,
        wd: f64) -> *mut c_char;
}

/// Whether Muon's fused CPU passes (`csrc/optim.cpp`) apply: an f32 CPU parameter and gradient.
fn fused(p: &Tensor, g: &Tensor) -> bool {
    let cpu_f32 = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float;
    cpu_f32(p) && cpu_f32(g) && p.is_contiguous()
}

/// buf ← β·buf + g; `out` ← (g + β·buf) / (‖g + β·buf‖_F + 1e-7) (`out`: a contiguous bf16 or
/// f32 CPU matrix of g's shape, written in place).
fn muon_prepare(g: &Tensor, buf: &Tensor, beta: f64, out: &Tensor) -> Result<()> {
    // SAFETY: all tensors are live; the C++ side checks kinds, shapes and layouts before writing.
    check(unsafe { nct_muon_prepare(g.as_ptr(), buf.as_ptr(), beta, out.as_ptr()) }, "Muon")
}

/// p ← p − lr·(scale·o + wd·p) in place.
fn muon_update(p: &Tensor, o: &Tensor, lr: f64, scale: f64, wd: f64) -> Result<()> {
    // SAFETY: as in `muon_prepare`.
    check(unsafe { nct_muon_update(p.as_ptr(), o.as_ptr(), lr, scale, wd) }, "Muon")
}

/// Lion: m_t = β1·m + (1−β1)·g decides the step's sign,
/// θ ← θ − lr·(sign(m_t) + λ·θ), then m ← β2·m + (1−β2)·g.
#[derive(Debug)]
pub struct Lion {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    params: Vec<Tensor>,
    momentum: Vec<Tensor>,
}

impl Lion {
    /// β = (0.9, 0.99) as in the paper.
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> Self {
        let momentum = params.iter().map(|p| p.zeros_like().detach()).collect();
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay,
            params,
            momentum,
        }
    }

    /// One update of every parameter that has a gradient (`Tensor::grad`).
    pub fn step(&mut self) {
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.apply(&grads);
    }

    /// One update with explicit gradients, one per parameter in order.
    pub fn step_with(&mut self, grads: &[Tensor]) -> Result<()> {
        check_grads("Lion", &self.params, grads)?;
        self.apply(grads);
        Ok(())
    }

    fn apply(&mut self, grads: &[Tensor]) {
        self.apply_with(grads, true)
    }

    /// `fused`: f32 CPU parameters take the one-pass update of `csrc/optim.cpp` (the same
    /// operations in the same order); the rest, or all with `false`, the ATen operations.
    fn apply_with(&mut self, grads: &[Tensor], fused: bool) {
        tch::no_grad(|| {
            for ((p, m), g) in self.params.iter().zip(self.momentum.iter_mut()).zip(grads) {
                if !g.defined() {
                    continue;
                }
                let cpu_f32 = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
                if fused && cpu_f32(p) && cpu_f32(m) && g.kind() == Kind::Float && g.device() == tch::Device::Cpu {
                    let g = g.contiguous();
                    // SAFETY: all tensors are live; the C++ side checks kinds and shapes before writing.
                    let error = unsafe {
                        nct_lion_update(p.as_ptr(), m.as_ptr(), g.as_ptr(), self.lr, self.beta1, self.beta2, self.weight_decay)
                    };
                    if check(error, "Lion").is_ok() {
                        continue;
                    }
                }
                let direction = (&*m * self.beta1 + g * (1.0 - self.beta1)).sign();
                // Skipping a zero decay saves two passes over every parameter.
                let update = match self.weight_decay {
                    0.0 => direction,
                    wd => direction + p * wd,
                };
                let _ = p.shallow_clone().g_sub_(&(update * self.lr));
                let _ = m.g_mul_scalar_(self.beta2).g_add_(&(g * (1.0 - self.beta2)));
            }
        });
    }

    /// The momentum buffers, one per parameter (in place: copying into them
    /// restores a saved state).
    pub fn moments(&self) -> &[Tensor] {
        &self.momentum
    }

    pub fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }
}

/// Coefficients of the quintic Newton–Schulz iteration (Keller Jordan's Muon).
pub const NEWTON_SCHULZ_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
pub const NEWTON_SCHULZ_STEPS: usize = 5;

/// The precision of the Newton–Schulz products: bf16 (as in the official
/// Muon, whose coefficients are tuned to tolerate it) on CUDA and on CPUs
/// with native bf16 dot products, where it is 3-4x faster than f32 (measured
/// on AVX512-BF16); f32 elsewhere, because emulated bf16 products are slow.
pub fn newton_schulz_kind(device: tch::Device) -> Kind {
    if device.is_cuda() || cpu_has_native_bf16() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUs with AMX-BF16 (Sapphire Rapids and later) have AVX512-BF16 too.
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Approximately orthogonalizes a 2-D matrix (U·S·Vᵀ -> ≈ U·Vᵀ): the input is
/// scaled to Frobenius norm 1, then 5 steps X ← aX + (bA + cA²)X with A = XXᵀ,
/// iterating on the wide orientation so A is the smaller Gram matrix. The
/// iteration runs in [`newton_schulz_kind`]; the result has `g`'s kind.
pub fn newton_schulz(g: &Tensor) -> Result<Tensor> {
    newton_schulz_in(g, newton_schulz_kind(g.device()))
}

/// [`newton_schulz`] with the iteration in `kind` (f32 or bf16).
pub fn newton_schulz_in(g: &Tensor, kind: Kind) -> Result<Tensor> {
    let size = g.size();
    if size.len() != 2 {
        return Err(TrainError::BadInput(format!(
            "Newton–Schulz needs a 2-D matrix, got shape {size:?}"
        )));
    }
    orthogonalize(g, kind)
}

/// The iteration proper on a normalized input: one (rows, cols) matrix or a (n, rows, cols) stack,
/// in its kind. Wide inputs: X ← aX + (bA + cA²)X with A = XXᵀ; `tall` ones the same on Xᵀ
/// written through transposed views (A = XᵀX, X ← aX + X(bA + cA²)), so A is always the smaller
/// Gram matrix. Each step is two scaled GEMMs: no element-wise passes, and in bf16 the sums are
/// formed before rounding (measured on the d20 shapes, 1 thread: 0.62x the time of the
/// product-plus-element-wise form, half its distance to the f64 iteration).
fn iterate(mut x: Tensor, tall: bool) -> Result<Tensor> {
    let (a, b, c) = NEWTON_SCHULZ_COEFFS;
    let t = |m: &Tensor| m.transpose(-2, -1);
    for _ in 0..NEWTON_SCHULZ_STEPS {
        if x.dim() == 2 {
            let gram = if tall { t(&x).matmul(&x) } else { x.matmul(&t(&x)) };
            let poly = addmm(&gram, &gram, &gram, b, c)?;
            x = if tall { addmm(&x, &x, &poly, a, 1.0)? } else { addmm(&x, &poly, &x, a, 1.0)? };
        } else {
            let gram = if tall { t(&x).f_bmm(&x)? } else { x.f_bmm(&t(&x))? };
            let poly = gram.f_baddbmm(&gram, &gram, b, c)?;
            x = if tall { x.f_baddbmm(&x, &poly, a, 1.0)? } else { x.f_baddbmm(&poly, &x, a, 1.0)? };
        }
    }
    Ok(x)
}

/// Matrices whose Gram side (the smaller dimension) is at most this are orthogonalized
/// together when several share a shape: on an AVX512-BF16 CPU (2 threads) the batched
/// iteration took 0.7x the time of the loop for 16 matrices of 256 x 256, 0.8x for 12 of
/// 256 x 768 and 0.6x for 12 of 256 x 512, but 1.1-1.5x for 512-sided ones, which stay
/// one by one.
pub const NEWTON_SCHULZ_BATCH_SIDE: i64 = 256;

/// [`newton_schulz`] of each matrix; matrices of one shape with a Gram side of at most
/// [`NEWTON_SCHULZ_BATCH_SIDE`] run as one batched iteration (the same steps, per-matrix
/// norms), the rest one by one. The results keep the inputs' order.
pub fn newton_schulz_many(gs: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut out: Vec<Option<Tensor>> = gs.iter().map(|_| None).collect();
    for members in batches(gs) {
        if let [only] = members.as_slice() {
            out[*only] = Some(newton_schulz(&gs[*only])?);
            continue;
        }
        let first = &gs[members[0]];
        let stacked = Tensor::stack(&members.iter().map(|&i| &gs[i]).collect::<Vec<_>>(), 0);
        let results = newton_schulz_batched(&stacked, newton_schulz_kind(first.device()))?.to_kind(first.kind());
        for (j, &i) in members.iter().enumerate() {
            out[i] = Some(results.get(j as i64));
        }
    }
    Ok(out.into_iter().map(|t| t.expect("every matrix is orthogonalized")).collect())
}

/// Indices of `gs` in groups orthogonalized together: matrices of one shape, kind and device with
/// a Gram side of at most [`NEWTON_SCHULZ_BATCH_SIDE`]; every other tensor alone.
fn batches(gs: &[Tensor]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<i64>, Kind, tch::Device, Vec<usize>)> = Vec::new();
    for (i, g) in gs.iter().enumerate() {
        let size = g.size();
        let batchable = size.len() == 2 && size[0].min(size[1]) <= NEWTON_SCHULZ_BATCH_SIDE;
        match groups.iter_mut().find(|(s, k, d, _)| batchable && *s == size && *k == g.kind() && *d == g.device()) {
            Some((_, _, _, members)) => members.push(i),
            None => groups.push((if batchable { size } else { Vec::new() }, g.kind(), g.device(), vec![i])),
        }
    }
    groups.into_iter().map(|(_, _, _, members)| members).collect()
}

/// [`newton_schulz_in`] of each matrix of a (n, rows, cols) stack, as batched products.
pub fn newton_schulz_batched(g: &Tensor, kind: Kind) -> Result<Tensor> {
    let size = g.size();
    if size.len() != 3 {
        return Err(TrainError::BadInput(format!(
            "batched Newton–Schulz needs a (n, rows, cols) stack, got shape {size:?}"
        )));
    }
    orthogonalize(g, kind)
}

/// The iteration on one matrix or each of a stack: scaled to Frobenius norm 1 (per matrix),
/// in the wide orientation, contiguous (so no product or sum mixes layouts), in `kind`;
/// the result has `g`'s kind and orientation.
fn orthogonalize(g: &Tensor, kind: Kind) -> Result<Tensor> {
    let size = g.size();
    let tall = size[size.len() - 2] > size[size.len() - 1];
    let mut x = g.to_kind(Kind::Float);
    if tall {
        x = x.transpose(-2, -1);
    }
    let norms = x.f_norm_scalaropt_dim(2.0, [-2i64, -1].as_slice(), true)?;
    x = iterate((&x / (norms + 1e-7)).to_kind(kind).contiguous(), false)?;
    if tall {
        x = x.transpose(-2, -1);
    }
    Ok(x.to_kind(g.kind()))
}

/// Muon for 2-D hidden weight matrices: Nesterov momentum (β = 0.95), the
/// momentum-corrected gradient orthogonalized by Newton–Schulz (see
/// [`newton_schulz_kind`] for its precision), scaled by
/// max(1, rows/cols)^0.5 so every matrix gets a comparable per-element step.
#[derive(Debug)]
pub struct Muon {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

impl Muon {
    /// Fails unless every parameter is 2-D.
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> Result<Self> {
        if let Some(p) = params.iter().find(|p| p.dim() != 2) {
            return Err(TrainError::BadInput(format!(
                "Muon only takes 2-D matrices, got a parameter of shape {:?}",
                p.size()
            )));
        }
        let buffers = params.iter().map(|p| p.zeros_like().detach()).collect();
        Ok(Self {
            lr,
            momentum: 0.95,
            weight_decay,
            params,
            buffers,
        })
    }

    /// The update direction for gradient `g` with momentum buffer `buf`
    /// (updated in place): NS(g + β·(β·buf + g)) · max(1, rows/cols)^0.5.
    pub fn direction(&self, g: &Tensor, buf: &mut Tensor) -> Result<Tensor> {
        let _ = buf.g_mul_scalar_(self.momentum).g_add_(g);
        let nesterov = g + &*buf * self.momentum;
        let size = g.size();
        let scale = (size[0] as f64 / size[1] as f64).max(1.0).sqrt();
        Ok(newton_schulz(&nesterov)? * scale)
    }

    /// One update of every parameter that has a gradient (`Tensor::grad`).
    pub fn step(&mut self) -> Result<()> {
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.apply(&grads)
    }

    /// One update with explicit gradients, one per parameter in order.
    pub fn step_with(&mut self, grads: &[Tensor]) -> Result<()> {
        check_grads("Muon", &self.params, grads)?;
        self.apply(grads)
    }

    /// The Nesterov momentum buffers, one per parameter (in place).
    pub fn moments(&self) -> &[Tensor] {
        &self.buffers
    }

    fn apply(&mut self, grads: &[Tensor]) -> Result<()> {
        tch::no_grad(|| {
            let live: Vec<usize> = (0..grads.len()).filter(|&i| grads[i].defined()).collect();
            let shapes: Vec<Tensor> = live.iter().map(|&i| self.params[i].shallow_clone()).collect();
            for group in batches(&shapes) {
                let members: Vec<usize> = group.into_iter().map(|j| live[j]).collect();
                if members.iter().all(|&i| fused(&self.params[i], &grads[i])) {
                    self.apply_fused(&members, grads)?;
                } else {
                    self.apply_aten(&members, grads)?;
                }
            }
            Ok(())
        })
    }

    /// f32 CPU parameters of one shape: the element-wise work in two passes per matrix
    /// (`csrc/optim.cpp`), the iteration batched when there are several.
    fn apply_fused(&mut self, members: &[usize], grads: &[Tensor]) -> Result<()> {
        let size = self.params[members[0]].size();
        let kind = newton_schulz_kind(tch::Device::Cpu);
        let x = Tensor::f_empty([members.len() as i64, size[0], size[1]], (kind, tch::Device::Cpu))?;
        for (j, &i) in members.iter().enumerate() {
            muon_prepare(&grads[i].contiguous(), &self.buffers[i], self.momentum, &x.get(j as i64))?;
        }
        // Tall matrices iterate on XᵀX through transposed views, so no copy is transposed.
        let tall = size[0] > size[1];
        let o = if members.len() == 1 { iterate(x.get(0), tall)?.unsqueeze(0) } else { iterate(x, tall)? };
        let scale = (size[0] as f64 / size[1] as f64).max(1.0).sqrt();
        for (j, &i) in members.iter().enumerate() {
            muon_update(&self.params[i], &o.get(j as i64), self.lr, scale, self.weight_decay)?;
        }
        Ok(())
    }

    /// The same update in ATen operations (CUDA, other kinds).
    fn apply_aten(&mut self, members: &[usize], grads: &[Tensor]) -> Result<()> {
        let mut inputs = Vec::with_capacity(members.len());
        for &i in members {
            let buf = &mut self.buffers[i];
            let _ = buf.g_mul_scalar_(self.momentum).g_add_(&grads[i]);
            inputs.push(&grads[i] + &*buf * self.momentum);
        }
        for (&i, orthogonal) in members.iter().zip(newton_schulz_many(&inputs)?) {
            let p = &self.params[i];
            let size = p.size();
            let update = orthogonal * (size[0] as f64 / size[1] as f64).max(1.0).sqrt();
            let decayed = match self.weight_decay {
                0.0 => update,
                wd => update + p * wd,
            };
            let _ = p.shallow_clone().g_sub_(&(decayed * self.lr));
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }
}

fn check_grads(optimizer: &str, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
    if grads.len() != params.len() {
        return Err(TrainError::BadInput(format!(
            "{optimizer}: {} gradients for {} parameters",
            grads.len(),
            params.len()
        )));
    }
    for (p, g) in params.iter().zip(grads) {
        if g.defined() && g.size() != p.size() {
            return Err(TrainError::BadInput(format!(
                "{optimizer}: gradient of shape {:?} for a parameter of shape {:?}",
                g.size(),
                p.size()
            )));
        }
    }
    Ok(())
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Shape of the decay phase of [`Wsd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayShape {
    Linear,
    Cosine,
}

/// Warmup-stable-decay: linear warmup to `peak` over `warmup` steps, constant,
/// then a decay to `floor` over the last `decay` steps of `total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wsd {
    pub peak: f64,
    pub floor: f64,
    pub total: u64,
    pub warmup: u64,
    pub decay: u64,
    pub shape: DecayShape,
}

impl Wsd {
    /// `decay_fraction` of `total` (rounded) is the decay phase (~0.2 usual).
    pub fn new(peak: f64, floor: f64, total: u64, warmup: u64, decay_fraction: f64, shape: DecayShape) -> Result<Self> {
        let bad = |msg: String| Err(TrainError::BadInput(format!("WSD schedule: {msg}")));
        if !(peak.is_finite() && peak > 0.0 && floor.is_finite() && (0.0..=peak).contains(&floor)) {
            return bad(format!(
                "need 0 <= floor <= peak, finite, peak > 0 (peak {peak}, floor {floor})"
            ));
        }
        if !(0.0..=1.0).contains(&decay_fraction) {
            return bad(format!("decay fraction {decay_fraction} must lie in [0, 1]"));
        }
        let decay = (decay_fraction * total as f64).round() as u64;
        if total == 0 || warmup + decay > total {
            return bad(format!(
                "warmup {warmup} + decay {decay} steps exceed total {total} (total must be > 0)"
            ));
        }
        Ok(Self {
            peak,
            floor,
            total,
            warmup,
            decay,
            shape,
        })
    }

    /// Learning rate of step `step` (0-based); steps past `total` stay at `floor`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_start = self.total - self.decay;
        if step < decay_start {
            return self.peak;
        }
        // progress runs 1/decay .. 1 so the last step lands exactly on floor.
        let progress = ((step - decay_start + 1) as f64 / self.decay as f64).min(1.0);
        let factor = match self.shape {
            DecayShape::Linear => 1.0 - progress,
            DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.floor + (self.peak - self.floor) * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Singular values, descending, as square roots of the eigenvalues of the
    /// smaller Gram matrix (CPU linalg_svdvals rejects tch's driver argument).
    fn singular_values(m: &Tensor) -> Vec<f64> {
        let m = m.to_kind(Kind::Double);
        let (rows, cols) = (m.size()[0], m.size()[1]);
        let gram = if rows >= cols {
            m.tr().matmul(&m)
        } else {
            m.matmul(&m.tr())
        };
        let eig = Vec::<f64>::try_from(Tensor::linalg_eigvalsh(&gram, "L")).unwrap();
        eig.iter().rev().map(|e| e.max(0.0).sqrt()).collect()
    }

    /// The quintic iteration written out in f64 with element-wise passes (the
    /// textbook form the fused one replaces).
    fn newton_schulz_f64(g: &Tensor) -> Tensor {
        let (a, b, c) = NEWTON_SCHULZ_COEFFS;
        let tall = g.size()[0] > g.size()[1];
        let mut x = g.to_kind(Kind::Double);
        if tall {
            x = x.tr();
        }
        x = &x / (x.norm() + 1e-7);
        for _ in 0..NEWTON_SCHULZ_STEPS {
            let gram = x.matmul(&x.tr());
            let poly = &gram * b + gram.matmul(&gram) * c;
            x = &x * a + poly.matmul(&x);
        }
        if tall {
            x.tr()
        } else {
            x
        }
    }

    #[test]
    fn addmm_matches_its_definition_and_rejects_bad_shapes() {
        let opts = (Kind::Double, Device::Cpu);
        let (input, m1, m2) = (Tensor::randn([5, 7], opts), Tensor::randn([5, 3], opts), Tensor::randn([3, 7], opts));
        let ours = addmm(&input, &m1, &m2, 0.5, -2.0).unwrap();
        let expected = &input * 0.5 + m1.matmul(&m2) * -2.0;
        assert!(f64::try_from((ours - expected).abs().max()).unwrap() < 1e-12);
        let err = addmm(&input, &m1, &m1, 1.0, 1.0).unwrap_err().to_string();
        assert!(err.contains("addmm"), "{err}");
    }

    #[test]
    fn newton_schulz_matches_the_f64_iteration() {
        // f32: the same iteration to float rounding. bf16: within 3 %, and
        // closer than the same iteration with element-wise passes in bf16
        // (measured ~1.4-2.1 % against ~3.3 %). Inputs from a fixed LCG, not
        // the global RNG that tests running in parallel reseed.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (a, b, c) = NEWTON_SCHULZ_COEFFS;
        for (rows, cols) in [(160, 64), (64, 64), (16, 64), (64, 160)] {
            let values: Vec<f32> = (0..rows * cols).map(|_| uniform()).collect();
            let g = Tensor::from_slice(&values).reshape([rows, cols]);
            let exact = newton_schulz_f64(&g);
            let distance = |t: &Tensor| f64::try_from((t.to_kind(Kind::Double) - &exact).norm() / exact.norm()).unwrap();
            let f32_dist = distance(&newton_schulz_in(&g, Kind::Float).unwrap());
            assert!(f32_dist < 1e-4, "{rows}x{cols} f32: relative distance {f32_dist}");
            let ours = newton_schulz_in(&g, Kind::BFloat16).unwrap();
            assert_eq!(ours.size(), vec![rows, cols]);
            // The element-wise form in bf16, for comparison.
            let tall = rows > cols;
            let mut x = if tall { g.tr() } else { g.shallow_clone() };
            x = (&x / (x.norm() + 1e-7)).to_kind(Kind::BFloat16);
            for _ in 0..NEWTON_SCHULZ_STEPS {
                let gram = x.matmul(&x.tr());
                let poly = &gram * b + gram.matmul(&gram) * c;
                x = &x * a + poly.matmul(&x);
            }
            let elementwise = distance(&if tall { x.tr() } else { x });
            let bf16_dist = distance(&ours);
            assert!(bf16_dist < 0.03 && bf16_dist < elementwise, "{rows}x{cols} bf16: {bf16_dist} (element-wise form {elementwise})");
        }
    }

    #[test]
    fn muon_update_has_singular_values_near_one() {
        tch::manual_seed(3);
        for (rows, cols) in [(64, 32), (32, 96), (48, 48)] {
            let p = Tensor::zeros([rows, cols], (Kind::Float, Device::Cpu));
            let muon = Muon::new(vec![p], 0.02, 0.0).unwrap();
            // An ill-conditioned gradient: singular values spread over 100x.
            let k = rows.min(cols);
            let opts = (Kind::Float, Device::Cpu);
            let (u, _) = Tensor::linalg_qr(&Tensor::randn([rows, k], opts), "reduced");
            let (v, _) = Tensor::linalg_qr(&Tensor::randn([cols, k], opts), "reduced");
            let g = (u * Tensor::logspace(0.0, 2.0, k, 10.0, opts)).matmul(&v.tr());
            let mut buf = Tensor::zeros([rows, cols], (Kind::Float, Device::Cpu));
            let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
            let update = muon.direction(&g, &mut buf).unwrap() / scale;
            let sv = singular_values(&update);
            let spread = sv.iter().fold(0f64, |m, v| m.max((v - 1.0).abs()));
            // The quintic trades exactness for speed: singular values land in
            // roughly [0.7, 1.2] instead of exactly 1, whatever the input spread.
            assert!(spread < 0.35, "{rows}x{cols}: singular values {sv:?}");
            let input_sv = singular_values(&g);
            assert!(input_sv[0] / input_sv[k as usize - 1] > 50.0, "{input_sv:?}");
            // Both precisions the optimizer may pick orthogonalize as well.
            for kind in [Kind::Float, Kind::BFloat16] {
                let sv = singular_values(&newton_schulz_in(&g, kind).unwrap());
                let spread = sv.iter().fold(0f64, |m, v| m.max((v - 1.0).abs()));
                assert!(spread < 0.35, "{rows}x{cols} {kind:?}: singular values {sv:?}");
            }
        }
    }

    #[test]
    fn batched_newton_schulz_equals_the_one_by_one_iteration() {
        tch::manual_seed(11);
        let f = (Kind::Float, Device::Cpu);
        // Two batched shapes (one tall), a shape seen once, and one above the batching side.
        let shapes = [(24, 40), (40, 24), (24, 40), (8, 8), (40, 24), (24, 40), (300, 260)];
        let gs: Vec<Tensor> = shapes.iter().map(|&(r, c)| Tensor::randn([r, c], f)).collect();
        let many = newton_schulz_many(&gs).unwrap();
        assert_eq!(many.len(), gs.len());
        for (g, m) in gs.iter().zip(&many) {
            assert_eq!(m.size(), g.size());
            assert_eq!(m.kind(), Kind::Float);
            let single = newton_schulz(g).unwrap();
            let dist = f64::try_from((m - &single).norm() / single.norm()).unwrap();
            assert!(dist < 2e-3, "{:?}: {dist}", g.size());
        }
        // In f32 the batched products are the same iteration to float rounding.
        let stack = Tensor::stack(&[&gs[0], &gs[2], &gs[5]], 0);
        let batched = newton_schulz_batched(&stack, Kind::Float).unwrap();
        for (j, g) in [&gs[0], &gs[2], &gs[5]].into_iter().enumerate() {
            let single = newton_schulz_in(g, Kind::Float).unwrap();
            let dist = f64::try_from((batched.get(j as i64) - &single).norm() / single.norm()).unwrap();
            assert!(dist < 1e-5, "f32 {j}: {dist}");
        }
        assert!(newton_schulz_batched(&gs[0], Kind::Float).is_err());
        assert!(newton_schulz_many(&[Tensor::zeros([4], f)]).is_err());
    }

    #[test]
    fn muon_step_equals_the_per_matrix_directions() {
        tch::manual_seed(12);
        let f = (Kind::Float, Device::Cpu);
        let params: Vec<Tensor> = [(16, 32), (16, 32), (32, 16), (16, 32)].iter().map(|&(r, c)| Tensor::randn([r, c], f)).collect();
        let grads: Vec<Tensor> = params.iter().map(|p| Tensor::randn_like(p)).collect();
        let expected: Vec<Tensor> = params
            .iter()
            .zip(&grads)
            .map(|(p, g)| {
                let muon = Muon::new(vec![p.zeros_like()], 0.05, 0.1).unwrap();
                let mut buf = p.zeros_like();
                p - (muon.direction(g, &mut buf).unwrap() + p * 0.1) * 0.05
            })
            .collect();
        let mut muon = Muon::new(params.iter().map(|p| p.copy()).collect(), 0.05, 0.1).unwrap();
        muon.step_with(&grads).unwrap();
        for (p, e) in muon.params.iter().zip(&expected) {
            let dist = f64::try_from((p - e).norm() / e.norm()).unwrap();
            assert!(dist < 1e-4, "{dist}");
        }
    }

    #[test]
    fn fused_muon_passes_equal_the_aten_update() {
        tch::manual_seed(13);
        let f = (Kind::Float, Device::Cpu);
        // A batched shape, its tall twin, a shape seen once and one above the batching side.
        let shapes = [(16, 40), (16, 40), (40, 16), (40, 16), (7, 5), (300, 260)];
        let params: Vec<Tensor> = shapes.iter().map(|&(r, c)| Tensor::randn([r, c], f)).collect();
        let copy = |ps: &[Tensor]| Muon::new(ps.iter().map(|p| p.copy()).collect(), 0.03, 0.1).unwrap();
        let (mut fused, mut aten) = (copy(&params), copy(&params));
        let all: Vec<usize> = (0..params.len()).collect();
        // The AVX-512 kernels where the CPU has them, then the generic ones (common.h's dispatch).
        for step in 0..4 {
            // SAFETY: sets an atomic flag; both kernel sets compute the same values.
            unsafe { nct_simd_force_generic((step >= 2) as i32) };
            let grads: Vec<Tensor> = params.iter().map(Tensor::randn_like).collect();
            tch::no_grad(|| {
                for group in batches(&params) {
                    fused.apply_fused(&group, &grads).unwrap();
                }
                aten.apply_aten(&all, &grads).unwrap();
            });
        }
        unsafe { nct_simd_force_generic(0) };
        for (i, (a, b)) in fused.params.iter().zip(&aten.params).enumerate() {
            let dist = f64::try_from((a - b).norm() / b.norm()).unwrap();
            assert!(dist < 1e-4, "parameter {i}: {dist}");
            let (m, n) = (&fused.buffers[i], &aten.buffers[i]);
            assert!(f64::try_from((m - n).norm() / n.norm()).unwrap() < 1e-6, "buffer {i}");
        }
    }

    #[test]
    fn fused_muon_passes_check_their_inputs() {
        let f = (Kind::Float, Device::Cpu);
        let (g, buf) = (Tensor::zeros([4, 6], f), Tensor::zeros([4, 6], f));
        let good = Tensor::zeros([4, 6], (Kind::BFloat16, Device::Cpu));
        assert!(muon_prepare(&g, &buf, 0.9, &good).is_ok());
        assert!(muon_prepare(&g, &buf, 0.9, &Tensor::zeros([4, 6], f)).is_ok());
        for (g, buf, out) in [
            (&g, &buf, &Tensor::zeros([6, 4], f)),
            (&g, &Tensor::zeros([4, 5], f), &good),
            (&g.to_kind(Kind::Double), &buf, &good),
            (&g, &buf, &Tensor::zeros([4, 6], (Kind::Int, Device::Cpu))),
            (&g, &buf, &Tensor::zeros([6, 4], f).tr()),
        ] {
            let err = muon_prepare(g, buf, 0.9, out).unwrap_err().to_string();
            assert!(err.contains("muon prepare"), "{err}");
        }
        // The f32 outputs (CPUs without native bf16 products iterate in f32): the formulas exactly.
        for generic in [false, true] {
            // SAFETY: sets an atomic flag; both kernel sets compute the same values.
            unsafe { nct_simd_force_generic(generic as i32) };
            let (g, buf0) = (Tensor::randn([9, 37], f), Tensor::randn([9, 37], f));
            let (buf, out) = (buf0.copy(), Tensor::zeros([9, 37], f));
            muon_prepare(&g, &buf, 0.9, &out).unwrap();
            let want_buf = &buf0 * 0.9 + &g;
            let x = &g + &want_buf * 0.9;
            let want = &x / (x.norm() + 1e-7);
            assert!(f64::try_from((&buf - &want_buf).abs().max()).unwrap() < 1e-6);
            assert!(f64::try_from((&out - &want).abs().max()).unwrap() < 1e-6);
            let p0 = Tensor::randn([9, 37], f);
            let p = p0.copy();
            muon_update(&p, &out, 0.1, 1.5, 0.2).unwrap();
            let want_p = &p0 - (&out * 1.5 + &p0 * 0.2) * 0.1;
            assert!(f64::try_from((&p - &want_p).abs().max()).unwrap() < 1e-6);
        }
        unsafe { nct_simd_force_generic(0) };
        let p = Tensor::zeros([4, 6], f);
        assert!(muon_update(&p, &good, 0.1, 1.0, 0.0).is_ok());
        let err = muon_update(&p, &good.view([6, 4]), 0.1, 1.0, 0.0).unwrap_err().to_string();
        assert!(err.contains("muon update"), "{err}");
        assert!(muon_update(&p.tr(), &good.view([6, 4]), 0.1, 1.0, 0.0).is_err());
    }

    #[test]
    fn muon_rejects_non_matrices() {
        let v = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        assert!(Muon::new(vec![v.shallow_clone()], 0.1, 0.0)
            .unwrap_err()
            .to_string()
            .contains("2-D"));
        assert!(newton_schulz(&v).is_err());
    }

    #[test]
    fn muon_step_uses_nesterov_momentum() {
        let p = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut muon = Muon::new(vec![p.shallow_clone()], 0.1, 0.0).unwrap();
        // grad = diag(2, 1): buf = g, nesterov = g + 0.95 g; NS of a diagonal
        // matrix keeps it diagonal with both entries pushed toward 1.
        (&p * Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]))
            .sum(Kind::Float)
            .backward();
        muon.step().unwrap();
        let v = Vec::<f32>::try_from(p.detach().flatten(0, -1)).unwrap();
        assert_eq!((v[1], v[2]), (0.0, 0.0));
        assert!(v[0] < -0.06 && v[0] > -0.13 && v[3] < -0.06 && v[3] > -0.13, "{v:?}");
    }

    #[test]
    fn fused_lion_pass_equals_the_aten_update() {
        tch::manual_seed(14);
        let f = (Kind::Float, Device::Cpu);
        for wd in [0.0, 0.1] {
            let params = [Tensor::randn([37, 29], f), Tensor::randn([5], f)];
            let new = |ps: &[Tensor]| Lion::new(ps.iter().map(|p| p.copy()).collect(), 0.01, wd);
            let (mut fused, mut aten) = (new(&params), new(&params));
            for step in 0..4 {
                // SAFETY: as in fused_muon_passes_equal_the_aten_update.
                unsafe { nct_simd_force_generic((step >= 2) as i32) };
                let grads: Vec<Tensor> = params.iter().map(Tensor::randn_like).collect();
                fused.apply_with(&grads, true);
                aten.apply_with(&grads, false);
            }
            unsafe { nct_simd_force_generic(0) };
            for (a, b) in fused.params.iter().chain(&fused.momentum).zip(aten.params.iter().chain(&aten.momentum)) {
                let diff = f64::try_from((a - b).abs().max()).unwrap();
                assert!(diff <= 1e-6, "wd {wd}: {diff}");
            }
        }
    }

    #[test]
    fn lion_rule_by_hand() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let mut lion = Lion::new(vec![p.shallow_clone()], 0.1, 0.5);
        (&p * Tensor::from_slice(&[3.0f32, -1.0, 0.0]))
            .sum(Kind::Float)
            .backward();
        lion.step();
        // m = 0: direction = sign(0.1·g) = (1, -1, 0);
        // θ -= 0.1·(dir + 0.5·θ) = (1 - 0.15, -2 + 0.1 + 0.1, 0.5 - 0.025).
        let v = Vec::<f32>::try_from(p.detach()).unwrap();
        let want = [0.85f32, -1.8, 0.475];
        assert!(v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{v:?}");
        // m = 0.01·g = (0.03, -0.01, 0). Second step with g = (-1, 1, 1):
        // c = 0.9·m + 0.1·g = (-0.073, 0.091, 0.1) -> sign (-1, 1, 1).
        lion.zero_grad();
        (&p * Tensor::from_slice(&[-1.0f32, 1.0, 1.0]))
            .sum(Kind::Float)
            .backward();
        lion.step();
        let v2 = Vec::<f32>::try_from(p.detach()).unwrap();
        let want2: Vec<f32> = want
            .iter()
            .zip([-1.0f32, 1.0, 1.0])
            .map(|(t, s)| t - 0.1 * (s + 0.5 * t))
            .collect();
        assert!(
            v2.iter().zip(&want2).all(|(a, b)| (a - b).abs() < 1e-6),
            "{v2:?} vs {want2:?}"
        );
    }

    #[test]
    fn wsd_values() {
        let s = Wsd::new(1.0, 0.1, 100, 10, 0.2, DecayShape::Linear).unwrap();
        assert_eq!(s.decay, 20);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(4) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(9), 1.0);
        assert_eq!(s.lr(10), 1.0);
        assert_eq!(s.lr(79), 1.0);
        assert!((s.lr(80) - (0.1 + 0.9 * 0.95)).abs() < 1e-12);
        assert!((s.lr(89) - 0.55).abs() < 1e-12);
        assert!((s.lr(99) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
        let c = Wsd::new(1.0, 0.0, 100, 0, 0.2, DecayShape::Cosine).unwrap();
        assert_eq!(c.lr(0), 1.0);
        assert!((c.lr(89) - 0.5).abs() < 1e-12);
        assert!(c.lr(99).abs() < 1e-12);
        assert!(Wsd::new(1.0, 0.0, 10, 9, 0.2, DecayShape::Linear).is_err());
        assert!(Wsd::new(1.0, 2.0, 10, 0, 0.2, DecayShape::Linear).is_err());
        assert!(Wsd::new(1.0, 0.0, 10, 0, 1.5, DecayShape::Linear).is_err());
        assert!(Wsd::new(1.0, 0.0, 0, 0, 0.2, DecayShape::Linear).is_err());
    }
}
