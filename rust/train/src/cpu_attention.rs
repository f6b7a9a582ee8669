//! Causal self-attention on the CPU training path, from the stacked q/k/v
//! projection output to the attention output, as one libtorch autograd
//! function (`csrc/attention.cpp`): the rotary embedding, the per-head layout
//! and the bf16 rounding of q, k and v are one pass, the attention is
//! libtorch's CPU flash kernel in bf16, and its backward runs in f32 (measured
//! faster than the bf16 backward on this kind of CPU) on the same bf16 values,
//! followed by the inverse rotation in one pass. The unfused graph in
//! `layers.rs` computes the same (the test below compares them).
use std::ffi::c_char;
use std::ptr;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::cpu_bitlinear::take;
use crate::error::Result;

extern "C" {
    fn nct_attention(
        qkv: *const C_tensor,
        cos: *const C_tensor,
        sin: *const C_tensor,
        n_heads: i64,
        n_kv_heads: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    #[cfg(test)]
    fn nct_simd_force_generic(on: i32);
}

/// y (B, T, heads·head_dim) = causal attention of rotary q, k and plain v taken from
/// `qkv` (B, T, (heads + 2·kv_heads)·head_dim: q | k | v), with the rotary tables `cos`
/// and `sin` ((≥ T, head_dim / 2) each); f32 CPU tensors, with autograd.
pub fn attention(qkv: &Tensor, cos: &Tensor, sin: &Tensor, n_heads: i64, n_kv_heads: i64) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: all tensors are live; on success `out` is a fresh tensor we own.
    let error = unsafe { nct_attention(qkv.as_ptr(), cos.as_ptr(), sin.as_ptr(), n_heads, n_kv_heads, &mut out) };
    take(error, out, "fused attention")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The unfused graph of layers.rs in `kind`: split, rotate half, SDPA, back to (B, T, H·D).
    fn reference(qkv: &Tensor, cos: &Tensor, sin: &Tensor, h: i64, kv: i64, kind: Kind) -> Tensor {
        let (b, t, w) = qkv.size3().unwrap();
        let d = w / (h + 2 * kv);
        let half = d / 2;
        let x = qkv.to_kind(kind);
        let parts = x.split_with_sizes([h * d, kv * d, kv * d], -1);
        let (cos, sin) = (cos.narrow(0, 0, t).unsqueeze(1).to_kind(kind), sin.narrow(0, 0, t).unsqueeze(1).to_kind(kind));
        let rotate = |y: &Tensor, heads: i64| {
            let y = y.view([b, t, heads, d]);
            let (y1, y2) = (y.narrow(-1, 0, half), y.narrow(-1, half, half));
            Tensor::cat(&[&y1 * &cos - &y2 * &sin, &y1 * &sin + &y2 * &cos], -1).transpose(1, 2)
        };
        let (q, k) = (rotate(&parts[0], h), rotate(&parts[1], kv));
        let v = parts[2].view([b, t, kv, d]).transpose(1, 2);
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, h != kv);
        y.transpose(1, 2).reshape([b, t, h * d])
    }

    fn tables(positions: i64, half: i64) -> (Tensor, Tensor) {
        let f = (Kind::Float, Device::Cpu);
        let inv = (Tensor::arange(half, f) * (-2.0 * 10_000f64.ln() / (2 * half) as f64)).exp();
        let angles = Tensor::arange(positions, f).outer(&inv);
        (angles.cos(), angles.sin())
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
        f64::try_from((&a - &b).norm()).unwrap() / f64::try_from(b.norm()).unwrap()
    }

    #[test]
    fn fused_attention_matches_the_unfused_graph() {
        // (B, T, heads, kv heads, head_dim, generic kernels): plain, grouped-query, odd lengths, small
        // heads (masked tails), with the AVX-512 row kernels where the CPU has them and the generic ones.
        let cases = [(2i64, 37i64, 4i64, 4i64, 16i64, false), (1, 64, 8, 2, 64, false), (3, 5, 2, 1, 8, false), (1, 1, 2, 2, 4, false), (2, 37, 4, 4, 16, true), (1, 64, 8, 2, 40, true), (2, 19, 4, 2, 40, false)];
        for &(b, t, h, kv, d, generic) in &cases {
            // SAFETY: sets an atomic flag; both kernel sets compute the same values.
            unsafe { nct_simd_force_generic(generic as i32) };
            let f = (Kind::Float, Device::Cpu);
            let (cos, sin) = tables(t + 3, d / 2);
            let qkv = Tensor::randn([b, t, (h + 2 * kv) * d], f).set_requires_grad(true);
            let dy = Tensor::randn([b, t, h * d], f);
            let ours = attention(&qkv, &cos, &sin, h, kv).unwrap();
            assert_eq!(ours.size(), [b, t, h * d]);
            assert_eq!(ours.kind(), Kind::Float);
            let g_ours = Tensor::run_backward(&[(&ours * &dy).sum(Kind::Float)], &[&qkv], false, false).remove(0);
            // The exact graph in f64, and the unfused bf16 graph this replaces (its error is the yardstick).
            let q64 = qkv.detach().to_kind(Kind::Double).set_requires_grad(true);
            let exact = reference(&q64, &cos, &sin, h, kv, Kind::Double);
            let g_exact = Tensor::run_backward(&[(&exact * dy.to_kind(Kind::Double)).sum(Kind::Double)], &[&q64], false, false).remove(0);
            let q16 = qkv.detach().set_requires_grad(true);
            let old = reference(&q16, &cos, &sin, h, kv, Kind::BFloat16).to_kind(Kind::Float);
            let g_old = Tensor::run_backward(&[(&old * &dy).sum(Kind::Float)], &[&q16], false, false).remove(0);
            let (fwd, fwd_old) = (rel(&ours, &exact), rel(&old, &exact));
            let (grad, grad_old) = (rel(&g_ours, &g_exact), rel(&g_old, &g_exact));
            let shape = (b, t, h, kv, d, generic);
            assert!(fwd < 1e-2 && fwd <= 1.5 * fwd_old + 1e-3, "{shape:?} forward {fwd} vs unfused bf16 {fwd_old}");
            assert!(grad < 2e-2 && grad <= 1.5 * grad_old + 1e-3, "{shape:?} gradient {grad} vs unfused bf16 {grad_old}");
        }
        unsafe { nct_simd_force_generic(0) };
    }

    #[test]
    fn fused_attention_rejects_bad_inputs() {
        let f = (Kind::Float, Device::Cpu);
        let (cos, sin) = tables(16, 4);
        let good = Tensor::zeros([1, 8, 3 * 2 * 8], f);
        assert!(attention(&good, &cos, &sin, 2, 2).is_ok());
        let cases = [
            (Tensor::zeros([1, 8, 47], f), 2, 2, "width"),
            (good.to_kind(Kind::BFloat16), 2, 2, "bf16"),
            (Tensor::zeros([8, 48], f), 2, 2, "2-D"),
            (good.shallow_clone(), 3, 2, "heads not a multiple"),
            (good.shallow_clone(), 0, 0, "no heads"),
            (Tensor::zeros([1, 8, 3 * 2 * 7], f), 2, 2, "odd head_dim"),
            (Tensor::zeros([1, 17, 48], f), 2, 2, "longer than the tables"),
        ];
        for (x, h, kv, what) in cases {
            let err = attention(&x, &cos, &sin, h, kv).unwrap_err().to_string();
            assert!(err.contains("fused attention"), "{what}: {err}");
        }
        let narrow_table = cos.narrow(1, 0, 3);
        assert!(attention(&good, &narrow_table, &sin, 2, 2).is_err());
    }
}
