//! BitLinear on CPU tensors through an integer forward and a bf16 backward
//! (`csrc/bitlinear.cpp`, a `torch::autograd::Function` reached over a small
//! C ABI because tch has no custom-autograd API).
//!
//! Forward: the activations are int8-quantized per token exactly as
//! [`crate::quant::quantize_activations`] does, multiplied with the trits on
//! oneDNN's int8 GEMM (AMX/VNNI; the integer sums are exact in f32) and scaled
//! by s_w / scale per token: the fake-quant f32 forward up to float rounding.
//! Backward (straight-through estimator, unchanged): dx = g·Ŵ and
//! dŴ = gᵀ·x̂, both as bf16 matmuls with f32 accumulation (the trits and the
//! int8 activations are exact in bf16; only g is rounded).
//!
//! Why not our own `kernels` crate for the forward: on this CPU (AMX) oneDNN's
//! int8 and bf16 GEMMs measured 3x faster than our VNNI ternary GEMM at the
//! training shapes (2048-4096 tokens), and bf16 matmuls need no repacking.
//!
//! [`PackedTernary::pack`] runs once per optimizer step per projection (the
//! trainer's prequantized weights). Only f32 CPU weights whose values are
//! exactly t·s (t in {-1, 0, 1}) are packed; anything else (CUDA, the
//! full-precision baseline, `NCT_QAT_MATMUL=fp32`) keeps the fake-quant path.
use std::ffi::{c_char, CStr};
use std::ptr;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Result, TrainError};

/// Environment variable choosing the CPU BitLinear path: `int8` (default)
/// or `fp32` (the fake-quant f32 matmuls, e.g. for quality comparisons).
pub const MATMUL_ENV: &str = "NCT_QAT_MATMUL";

extern "C" {
    fn nct_free_error(error: *mut c_char);
    #[cfg(test)]
    fn nct_bitlinear_force_generic(on: i32);
    fn nct_ternary_pack(
        wq: *const C_tensor,
        packed: *mut *mut C_tensor,
        trits: *mut *mut C_tensor,
        scales: *mut *mut C_tensor,
        zeros: *mut *mut C_tensor,
        ternary: *mut i32,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn nct_bit_linear(
        x: *const C_tensor,
        gain: *const C_tensor,
        wq: *const C_tensor,
        packed: *const C_tensor,
        trits: *const C_tensor,
        scales: *const C_tensor,
        zeros: *const C_tensor,
        mode: i64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn nct_cross_entropy(logits: *const C_tensor, targets: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn nct_addmm(
        input: *const C_tensor,
        m1: *const C_tensor,
        m2: *const C_tensor,
        beta: f64,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// beta·input + alpha·(m1 · m2) in one libtorch `addmm` (any device; tch's
/// `addmm` has no scalars): the scaled sum is formed inside the GEMM, before
/// rounding to the tensors' kind, so in bf16 it is both faster and closer to
/// exact than a product followed by element-wise passes.
pub fn addmm(input: &Tensor, m1: &Tensor, m2: &Tensor, beta: f64, alpha: f64) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: all tensors are live; on success `out` is a fresh tensor we own.
    let error = unsafe { nct_addmm(input.as_ptr(), m1.as_ptr(), m2.as_ptr(), beta, alpha, &mut out) };
    check(error, "addmm")?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A fresh tensor from a C++ call of the training shims, or its error as a `TrainError`.
pub(crate) fn take(error: *mut c_char, out: *mut C_tensor, what: &str) -> Result<Tensor> {
    check(error, what)?;
    // SAFETY: on success `out` is a fresh heap tensor whose ownership passes to us.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Turns a C++ error string (owned by us) into a `TrainError`.
pub(crate) fn check(error: *mut c_char, what: &str) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error is a NUL-terminated strdup'd string that we own.
    let msg = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { nct_free_error(error) };
    Err(TrainError::BadInput(format!("{what}: {msg}")))
}

/// Whether the integer CPU path is enabled ([`MATMUL_ENV`] unset or `int8`).
pub fn enabled() -> Result<bool> {
    match std::env::var(MATMUL_ENV) {
        Err(_) => Ok(true),
        Ok(v) if v == "int8" => Ok(true),
        Ok(v) if v == "fp32" => Ok(false),
        Ok(v) => Err(TrainError::BadInput(format!("{MATMUL_ENV}={v:?}: expected \"int8\" or \"fp32\""))),
    }
}

/// What [`PackedTernary::apply`] does to each row of its input before quantizing it, fused into the
/// quantization pass (and its backward into the pass after dx): no f32 tensor of the result exists.
#[derive(Debug, Clone, Copy)]
pub enum Prologue<'a> {
    /// The input as it is.
    Plain,
    /// RMSNorm with a gain: x · rsqrt(mean(x²) + eps) · gain ([`crate::layers::RmsNorm`]).
    Norm { gain: &'a Tensor, eps: f64 },
    /// silu(gate) · up of an input (..., 2·in) laid out (gate | up): SwiGLU's hidden activation.
    Swiglu,
}

/// A ternarized weight in the forms the CPU BitLinear reads: oneDNN-packed
/// int8 trits, bf16 trits (backward), the per-row scales s_w. The weight may
/// be several projections of one input stacked by rows (each with its own
/// scale): their input is then quantized once and multiplied once.
#[derive(Debug)]
pub struct PackedTernary {
    packed: Tensor,
    trits: Tensor,
    scales: Tensor,
    zeros: Tensor,
}

impl PackedTernary {
    /// `None` when `wq` is not a non-empty 2-D f32 CPU tensor whose rows are
    /// t·s_row (t in {-1, 0, 1}).
    pub fn pack(wq: &Tensor) -> Result<Option<Self>> {
        let mut out: [*mut C_tensor; 4] = [ptr::null_mut(); 4];
        let mut ternary = 0i32;
        // SAFETY: `wq` is a live tensor; on success with ternary = 1 the four
        // outputs are fresh heap tensors whose ownership passes to us.
        let error = unsafe {
            nct_ternary_pack(wq.as_ptr(), &mut out[0], &mut out[1], &mut out[2], &mut out[3], &mut ternary)
        };
        check(error, "packing a ternary weight")?;
        if ternary == 0 {
            return Ok(None);
        }
        let [packed, trits, scales, zeros] = out.map(|p| unsafe { Tensor::from_ptr(p) });
        Ok(Some(Self { packed, trits, scales, zeros }))
    }

    /// The per-row scales s_w, (out,) f32 (row i's values are t·s_w[i]).
    pub fn scales(&self) -> &Tensor {
        &self.scales
    }

    /// y = q_int8(x)·Ŵᵀ for f32 CPU `x` (..., in); gradients flow to `x` and
    /// to `wq` (the tensor this was packed from, typically a leaf).
    pub fn linear(&self, x: &Tensor, wq: &Tensor) -> Result<Tensor> {
        self.apply(x, Prologue::Plain, wq)
    }

    /// y = q_int8(prologue(x))·Ŵᵀ for f32 CPU `x`; gradients flow to `x`, to
    /// `wq` (a tensor with the values this was packed from: a leaf, or a
    /// concatenation of leaves) and to the norm's gain.
    pub fn apply(&self, x: &Tensor, prologue: Prologue, wq: &Tensor) -> Result<Tensor> {
        let empty = Tensor::new();
        let (mode, gain, eps) = match prologue {
            Prologue::Plain => (0, &empty, 0.0),
            Prologue::Norm { gain, eps } => (1, gain, eps),
            Prologue::Swiglu => (2, &empty, 0.0),
        };
        let mut out: *mut C_tensor = ptr::null_mut();
        // SAFETY: all tensors are live; on success `out` is a fresh tensor we own.
        let error = unsafe {
            nct_bit_linear(
                x.as_ptr(),
                gain.as_ptr(),
                wq.as_ptr(),
                self.packed.as_ptr(),
                self.trits.as_ptr(),
                self.scales.as_ptr(),
                self.zeros.as_ptr(),
                mode,
                eps,
                &mut out,
            )
        };
        check(error, "CPU BitLinear")?;
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

/// Mean cross-entropy of bf16 CPU logits (rows, vocab) against int64
/// targets (rows), with autograd: the log-softmax in f32 without an f32 copy
/// of the logits, the backward writing (softmax − onehot)·g/rows in bf16 in
/// one pass. What `log_softmax(-1, f32)` + `nll_loss` compute, fused.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: both tensors are live; on success `out` is a fresh tensor we own.
    let error = unsafe { nct_cross_entropy(logits.as_ptr(), targets.as_ptr(), &mut out) };
    check(error, "fused cross-entropy")?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{bit_linear_prequantized, quantize_activations, ternarize};
    use tch::{Device, Kind};

    fn randn(seed: i64, shape: &[i64]) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let diff = (a - b).abs().max().double_value(&[]);
        diff / b.abs().max().double_value(&[]).max(1e-12)
    }

    #[test]
    fn forward_equals_the_fake_quant_forward() {
        // Odd widths exercise the masked tails of the quantizer.
        for (tokens, cols, rows) in [(37, 256, 96), (5, 83, 17), (64, 1280, 512)] {
            let x = randn(1, &[1, tokens, cols]) * 3.0;
            let wq = ternarize(&randn(2, &[rows, cols]));
            let packed = PackedTernary::pack(&wq).unwrap().expect("ternary values pack");
            let ours = packed.linear(&x, &wq).unwrap();
            let fake = bit_linear_prequantized(&x, &wq);
            assert_eq!(ours.size(), fake.size());
            // Same int8 activations and trits: only the f32 summation order and
            // the scale's rounding differ.
            let rel = max_rel(&ours, &fake);
            assert!(rel < 1e-5, "{tokens}x{cols}x{rows}: relative difference {rel}");
        }
    }

    #[test]
    fn gradients_are_the_ste_gradients_in_bf16() {
        let x = (randn(3, &[2, 24, 64]) * 2.0).set_requires_grad(true);
        let wq = ternarize(&randn(4, &[48, 64])).set_requires_grad(true);
        let g = randn(5, &[2, 24, 48]);
        let packed = PackedTernary::pack(&wq).unwrap().unwrap();
        (packed.linear(&x, &wq).unwrap() * &g).sum(Kind::Float).backward();
        // STE: dx = g·Ŵ, dŴ = gᵀ·x̂ with x̂ the quantized activations.
        let xq = quantize_activations(&x.detach());
        let gx = g.matmul(&wq.detach());
        let gw = g.reshape([-1, 48]).tr().matmul(&xq.reshape([-1, 64]));
        // bf16 rounds g (8 significant bits): relative error well under 1 %.
        assert!(max_rel(&x.grad(), &gx) < 1e-2, "dx {}", max_rel(&x.grad(), &gx));
        assert!(max_rel(&wq.grad(), &gw) < 1e-2, "dW {}", max_rel(&wq.grad(), &gw));
        // Exactly the bf16 matmul of bf16(g·s_w) with the trits (the fused
        // f32 -> bf16 rounding matches libtorch's, round to nearest even).
        let trits = (wq.detach() / packed.scales().unsqueeze(1)).to_kind(Kind::BFloat16);
        let g_bf16 = (&g * packed.scales()).to_kind(Kind::BFloat16).reshape([-1, 48]);
        let exact = g_bf16.matmul(&trits).to_kind(Kind::Float).reshape([2, 24, 64]);
        assert!(x.grad().equal(&exact), "dx differs from the bf16 matmul by {}", max_rel(&x.grad(), &exact));
        // Not trivially close: the unquantized x gives a different dW.
        let plain = g.reshape([-1, 48]).tr().matmul(&x.detach().reshape([-1, 64]));
        assert!(max_rel(&plain, &gw) > 1e-3);
    }

    /// RMSNorm with a gain, as `layers::RmsNorm::forward`.
    fn rms_norm(x: &Tensor, gain: &Tensor, eps: f64) -> Tensor {
        x * (x.square().mean_dim([-1i64].as_slice(), true, Kind::Float) + eps).rsqrt() * gain
    }

    /// Leaves for a prologue test: x (2, tokens, x_cols), two ternarized projections of
    /// `rows.0` and `rows.1` rows (different scales) stacked by rows, a gain.
    fn stacked(tokens: i64, x_cols: i64, cols: i64, rows: (i64, i64)) -> (Tensor, Tensor, Tensor, Tensor) {
        let x = (randn(20, &[2, tokens, x_cols]) * 2.0).set_requires_grad(true);
        let w1 = ternarize(&randn(21, &[rows.0, cols])).set_requires_grad(true);
        let w2 = ternarize(&(randn(22, &[rows.1, cols]) * 3.0)).set_requires_grad(true);
        let gain = (randn(23, &[cols]) * 0.3 + 1.0).set_requires_grad(true);
        (x, w1, w2, gain)
    }

    /// Runs `f` with the generic row kernels, then restores the dispatch (also on panic).
    fn with_generic_kernels(f: impl FnOnce()) {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: sets an atomic flag.
                unsafe { nct_bitlinear_force_generic(0) };
            }
        }
        let _restore = Restore;
        // SAFETY: sets an atomic flag; both kernel sets compute the same values.
        unsafe { nct_bitlinear_force_generic(1) };
        f();
    }

    #[test]
    fn generic_kernels_equal_the_unfused_graph_too() {
        // The same checks on the kernels a CPU without AVX-512 runs.
        with_generic_kernels(|| {
            forward_equals_the_fake_quant_forward();
            fused_norm_and_stacked_projections_equal_the_unfused_graph();
            fused_swiglu_equals_silu_times_up_then_bitlinear();
            fused_cross_entropy_equals_log_softmax_and_nll();
            non_ternary_or_non_cpu_f32_weights_are_not_packed();
        });
    }

    #[test]
    fn fused_norm_and_stacked_projections_equal_the_unfused_graph() {
        // Widths with AVX-512 tails (83, 100) and without (256); two projections of one input.
        for (tokens, cols, rows) in [(9i64, 83i64, (17i64, 5i64)), (33, 256, (96, 32)), (4, 100, (8, 24))] {
            let (x, w1, w2, gain) = stacked(tokens, cols, cols, rows);
            let g = randn(24, &[2, tokens, rows.0 + rows.1]);
            let wcat = Tensor::cat(&[&w1, &w2], 0);
            let packed = PackedTernary::pack(&wcat).unwrap().expect("stacked ternary rows pack");
            let ours = packed.apply(&x, Prologue::Norm { gain: &gain, eps: 1e-5 }, &wcat).unwrap();
            (&ours * &g).sum(Kind::Float).backward();
            let grads: Vec<Tensor> = [&x, &gain, &w1, &w2].iter().map(|t| t.grad().copy()).collect();
            for t in [&x, &gain, &w1, &w2] {
                let _ = t.grad().zero_();
            }
            // The unfused f32 graph: norm, then each projection on its own (straight-through).
            let h = rms_norm(&x, &gain, 1e-5);
            let reference = Tensor::cat(&[bit_linear_prequantized(&h, &w1), bit_linear_prequantized(&h, &w2)], -1);
            let rel = max_rel(&ours, &reference);
            assert!(rel < 1e-5, "{tokens}x{cols}: forward differs by {rel}");
            (&reference * &g).sum(Kind::Float).backward();
            for (name, ours, want) in [("x", &grads[0], x.grad()), ("gain", &grads[1], gain.grad()),
                                       ("w1", &grads[2], w1.grad()), ("w2", &grads[3], w2.grad())] {
                // The backward's matmuls round g to bf16 (8 significant bits).
                let rel = max_rel(ours, &want);
                assert!(rel < 2e-2, "{tokens}x{cols}: d{name} differs by {rel}");
                assert!(want.abs().max().double_value(&[]) > 0.0, "d{name} is zero");
            }
        }
    }

    #[test]
    fn fused_swiglu_equals_silu_times_up_then_bitlinear() {
        for (tokens, hidden, out) in [(7i64, 83i64, 19i64), (40, 768, 256)] {
            let (x, w1, _, _) = stacked(tokens, 2 * hidden, hidden, (out, 1));
            let g = randn(25, &[2, tokens, out]);
            let packed = PackedTernary::pack(&w1).unwrap().unwrap();
            let ours = packed.apply(&x, Prologue::Swiglu, &w1).unwrap();
            (&ours * &g).sum(Kind::Float).backward();
            let (dx, dw) = (x.grad().copy(), w1.grad().copy());
            let _ = x.grad().zero_();
            let _ = w1.grad().zero_();
            let (gate, up) = (x.narrow(-1, 0, hidden), x.narrow(-1, hidden, hidden));
            let reference = bit_linear_prequantized(&(gate.silu() * up), &w1);
            // silu through a polynomial exp: a few ulp per value, so a looser bound than the plain forward.
            let rel = max_rel(&ours, &reference);
            assert!(rel < 1e-4, "{tokens}x{hidden}: forward differs by {rel}");
            (&reference * &g).sum(Kind::Float).backward();
            assert!(max_rel(&dx, &x.grad()) < 2e-2, "dx differs by {}", max_rel(&dx, &x.grad()));
            assert!(max_rel(&dw, &w1.grad()) < 2e-2, "dW differs by {}", max_rel(&dw, &w1.grad()));
        }
    }

    #[test]
    fn prologue_inputs_are_checked() {
        let wq = ternarize(&randn(30, &[8, 16]));
        let packed = PackedTernary::pack(&wq).unwrap().unwrap();
        let gain = Tensor::ones([16], (Kind::Float, Device::Cpu));
        let x = randn(31, &[3, 16]);
        let err = |x: &Tensor, p: Prologue| packed.apply(x, p, &wq).unwrap_err().to_string();
        assert!(err(&x, Prologue::Swiglu).contains("32 features"));
        let short = Tensor::ones([15], (Kind::Float, Device::Cpu));
        assert!(err(&x, Prologue::Norm { gain: &short, eps: 1e-5 }).contains("gain of 16"));
        assert!(err(&x, Prologue::Norm { gain: &gain, eps: 0.0 }).contains("eps > 0"));
        // The fused ops equal their unfused forms on the plain path too.
        let y = packed.apply(&x, Prologue::Norm { gain: &gain, eps: 1e-5 }, &wq).unwrap();
        let want = packed.linear(&rms_norm(&x, &gain, 1e-5), &wq).unwrap();
        assert!(max_rel(&y, &want) < 1e-5);
    }

    #[test]
    fn non_ternary_or_non_cpu_f32_weights_are_not_packed() {
        let w = randn(6, &[8, 16]);
        assert!(PackedTernary::pack(&w).unwrap().is_none());
        assert!(PackedTernary::pack(&ternarize(&w).to_kind(Kind::Double)).unwrap().is_none());
        assert!(PackedTernary::pack(&ternarize(&w).view([-1])).unwrap().is_none());
        // One value off the t·s grid, a NaN or an infinity anywhere: not packed.
        for bad in [0.5f64, f64::NAN, f64::INFINITY] {
            let q = ternarize(&w);
            let _ = q.get(5).get(7).fill_(bad * f64::try_from(q.abs().max()).unwrap());
            assert!(PackedTernary::pack(&q).unwrap().is_none(), "{bad}");
        }
        // Rows of different scales (stacked projections) are packed, each with its own scale.
        let stacked = Tensor::cat(&[ternarize(&w), ternarize(&(randn(8, &[4, 16]) * 3.0))], 0);
        let packed = PackedTernary::pack(&stacked).unwrap().expect("stacked ternary rows");
        assert_eq!(packed.scales().size(), [12]);
        let zero = Tensor::zeros([8, 16], (Kind::Float, Device::Cpu));
        let packed = PackedTernary::pack(&zero).unwrap().expect("all-zero weights are ternary");
        let y = packed.linear(&randn(7, &[3, 16]), &zero).unwrap();
        assert_eq!(y.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn fused_cross_entropy_equals_log_softmax_and_nll() {
        // 4096 columns take the AVX-512 path, 100 the scalar one.
        for vocab in [4096i64, 100] {
            let logits = (randn(10, &[37, vocab]) * 4.0).to_kind(Kind::BFloat16).set_requires_grad(true);
            tch::manual_seed(11);
            let targets = Tensor::randint(vocab, [37], (Kind::Int64, Device::Cpu));
            let ours = cross_entropy(&logits, &targets).unwrap();
            let reference = logits.detach().log_softmax(-1, Kind::Float).nll_loss(&targets);
            let (a, b) = (ours.double_value(&[]), reference.double_value(&[]));
            assert!((a - b).abs() < 1e-5 * b.abs(), "vocab {vocab}: {a} vs {b}");
            (ours * 3.0).backward();
            let probs = logits.detach().to_kind(Kind::Float).softmax(-1, Kind::Float);
            let onehot = targets.one_hot(vocab).to_kind(Kind::Float);
            let want = (probs - onehot) * (3.0 / 37.0);
            let got = logits.grad().to_kind(Kind::Float);
            assert_eq!(logits.grad().kind(), Kind::BFloat16);
            // bf16 output: 8 significant bits.
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-2 * want.abs().max().double_value(&[]), "vocab {vocab}: gradient error {err}");
        }
        let logits = randn(12, &[3, 16]).to_kind(Kind::BFloat16);
        let bad = |t: &Tensor| cross_entropy(&logits, t).unwrap_err().to_string();
        assert!(bad(&Tensor::from_slice(&[0i64, 1, 16])).contains("[0, 16)"));
        assert!(bad(&Tensor::from_slice(&[0i64, 1])).contains("int64 targets"));
        let f32_logits = cross_entropy(&logits.to_kind(Kind::Float), &Tensor::from_slice(&[0i64, 1, 2]));
        assert!(f32_logits.unwrap_err().to_string().contains("bf16"));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let wq = ternarize(&randn(8, &[8, 16]));
        let packed = PackedTernary::pack(&wq).unwrap().unwrap();
        let msg = packed.linear(&randn(9, &[3, 15]), &wq).unwrap_err().to_string();
        assert!(msg.contains("16 features"), "{msg}");
        let msg = packed.linear(&randn(9, &[3, 16]).to_kind(Kind::Double), &wq).unwrap_err().to_string();
        assert!(msg.contains("f32"), "{msg}");
    }
}
