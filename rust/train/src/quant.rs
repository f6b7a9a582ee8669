//! BitNet b1.58 fake quantization for quantization-aware training.
//!
//! Forward: weights are absmean-ternarized per tensor (the codec's rule, see
//! `ternary::quant`: s = mean|W|, W_q = clip(round(W / (s + eps)), -1, 1), value
//! W_q·s) and activations int8-quantized per token (absmax: 127 / max|x|).
//! Backward: straight-through estimator, written as `x + (q(x) - x).detach()`
//! so the value is q(x) but the gradient is that of the identity.
use tch::{Kind, Tensor};

/// Same ε as the codec (`ternary::ABSMEAN_EPS`), so trained weights export
/// to exactly the trits the forward pass used.
pub const WEIGHT_EPS: f64 = ternary::ABSMEAN_EPS as f64;
/// Floor of max|x| per token: an all-zero token quantizes to zeros, not NaN.
pub const ACTIVATION_EPS: f64 = 1e-5;
/// Largest int8 magnitude used by the activation quantizer.
pub const ACTIVATION_LEVELS: f64 = 127.0;

/// Dequantized absmean ternary weights (no gradient path).
pub fn ternarize(weight: &Tensor) -> Tensor {
    // Accumulate in f64 and round once, as the codec does, so the trits match
    // `ternary::quantize_absmean` bit for bit.
    let scale = weight.abs().mean(Kind::Double).to_kind(weight.kind());
    let trits = (weight / (&scale + WEIGHT_EPS)).round().clamp(-1.0, 1.0);
    trits * scale
}

/// Per-token (last dimension) int8 absmax fake quantization (no gradient path).
/// Runs without autograd and in place on one fresh tensor: it sits in every
/// BitLinear, so each saved pass over the activations counts.
pub fn quantize_activations(x: &Tensor) -> Tensor {
    tch::no_grad(|| {
        // (aminmax would avoid the |x| temporary but measured 6x slower on CPU.)
        let max_abs = x.abs().amax([-1i64].as_slice(), true).clamp_min(ACTIVATION_EPS);
        let scale = max_abs.reciprocal() * ACTIVATION_LEVELS;
        let mut q = x * &scale;
        let _ = q.round_();
        let _ = q.clamp_(-ACTIVATION_LEVELS - 1.0, ACTIVATION_LEVELS);
        let _ = q.g_div_(&scale);
        q
    })
}

/// Value of `quantized`, gradient of `x` (straight-through estimator).
pub fn straight_through(x: &Tensor, quantized: &Tensor) -> Tensor {
    x + (quantized - x).detach()
}

/// `straight_through(x, &quantize_activations(x))`, bit for bit, with the
/// difference q(x) − x formed in place.
pub fn quantize_activations_ste(x: &Tensor) -> Tensor {
    let mut delta = quantize_activations(x);
    tch::no_grad(|| {
        let _ = delta.g_sub_(x);
    });
    x + delta
}

/// y = q_int8(x) · ternary(W)ᵀ with straight-through gradients to x and W.
/// `x` is (..., in), `weight` is (out, in).
pub fn bit_linear(x: &Tensor, weight: &Tensor) -> Tensor {
    let w = straight_through(weight, &ternarize(weight));
    bit_linear_prequantized(x, &w)
}

/// y = q_int8(x) · Wqᵀ for weights already ternarized (e.g. once per optimizer
/// step for all micro-batches). When `quantized` is a leaf with
/// `requires_grad`, its gradient is exactly the straight-through gradient of
/// the latent weight, because the STE is the identity.
pub fn bit_linear_prequantized(x: &Tensor, quantized: &Tensor) -> Tensor {
    quantize_activations_ste(x).matmul(&quantized.tr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn seeded_randn(seed: i64, shape: &[i64]) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn ternarize_matches_the_codec() {
        let w = seeded_randn(1, &[16, 40]);
        let data = to_vec(&w);
        let codec = ternary::quantize_absmean(&data, 16, 40, ternary::Granularity::PerTensor).unwrap();
        let ours = to_vec(&ternarize(&w));
        assert_eq!(ours, codec.dequantize());
    }

    #[test]
    fn quantized_forward_equals_a_hand_computation() {
        let (x, w) = (seeded_randn(2, &[3, 5, 8]), seeded_randn(3, &[6, 8]));
        let y = to_vec(&bit_linear(&x, &w));
        let (xs, ws) = (to_vec(&x), to_vec(&w));
        // Weights by hand: s = mean|W|, trits = clip(round(w / (s + eps))).
        let s = (ws.iter().map(|v| v.abs() as f64).sum::<f64>() / ws.len() as f64) as f32;
        let wq: Vec<f32> = ws
            .iter()
            .map(|v| (v / (s + WEIGHT_EPS as f32)).round_ties_even().clamp(-1.0, 1.0) * s)
            .collect();
        let mut expected = Vec::new();
        for token in xs.chunks(8) {
            let max = token
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(ACTIVATION_EPS as f32);
            let scale = 127.0 / max;
            let xq: Vec<f32> = token
                .iter()
                .map(|v| (v * scale).round_ties_even().clamp(-128.0, 127.0) / scale)
                .collect();
            for row in wq.chunks(8) {
                expected.push(xq.iter().zip(row).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        assert_eq!(y.len(), expected.len());
        for (a, b) in y.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn ste_gradient_equals_the_identity_path_gradient() {
        let x = seeded_randn(4, &[2, 3, 8]).set_requires_grad(true);
        let w = seeded_randn(5, &[4, 8]).set_requires_grad(true);
        let g = seeded_randn(6, &[2, 3, 4]);
        (bit_linear(&x, &w) * &g).sum(Kind::Float).backward();
        // The STE treats q as the identity, so dL/dx = g·ŵ and dL/dW = gᵀ·x̂
        // where ŵ, x̂ are the quantized values used in the forward pass.
        let (wq, xq) = (ternarize(&w.detach()), quantize_activations(&x.detach()));
        let gx = g.matmul(&wq);
        let gw = g.reshape([-1, 4]).tr().matmul(&xq.reshape([-1, 8]));
        assert!(x.grad().allclose(&gx, 1e-5, 1e-6, false));
        assert!(w.grad().allclose(&gw, 1e-5, 1e-6, false));
        // And without the quantizers the identity path gives the same formula
        // with unquantized operands, so the STE gradient is non-trivial.
        assert!(!w.grad().allclose(
            &g.reshape([-1, 4]).tr().matmul(&x.detach().reshape([-1, 8])),
            1e-5,
            1e-6,
            false
        ));
    }

    #[test]
    fn straight_through_passes_the_gradient_unchanged() {
        let x = seeded_randn(7, &[10]).set_requires_grad(true);
        let g = seeded_randn(8, &[10]);
        (straight_through(&x, &ternarize(&x)) * &g).sum(Kind::Float).backward();
        assert!(x.grad().allclose(&g, 0.0, 0.0, false));
    }

    #[test]
    fn fused_activation_ste_equals_the_plain_formula() {
        let x = seeded_randn(9, &[3, 4, 16]).set_requires_grad(true);
        let g = seeded_randn(10, &[3, 4, 16]);
        let fused = quantize_activations_ste(&x);
        let plain = straight_through(&x, &quantize_activations(&x));
        assert!(fused.allclose(&plain, 0.0, 0.0, false));
        (fused * &g).sum(Kind::Float).backward();
        assert!(x.grad().allclose(&g, 0.0, 0.0, false));
        // Against the unfused reference: |x| then amax.
        let reference = {
            let x = x.detach();
            let scale = x.abs().amax([-1i64].as_slice(), true).clamp_min(ACTIVATION_EPS).reciprocal() * 127.0;
            (&x * &scale).round().clamp(-128.0, 127.0) / scale
        };
        assert!(quantize_activations(&x).allclose(&reference, 0.0, 0.0, false));
    }

    #[test]
    fn zero_inputs_stay_finite() {
        let z = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert_eq!(to_vec(&ternarize(&z)), vec![0.0; 8]);
        assert_eq!(to_vec(&quantize_activations(&z)), vec![0.0; 8]);
    }
}
