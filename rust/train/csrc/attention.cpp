// Causal self-attention for CPU training, from the stacked q/k/v projection output to the attention output,
// as one torch::autograd::Function (called over a C ABI from rust/train/src/cpu_attention.rs; compiled by
// build.rs):
//
//   forward:  qkv f32 (B, T, (H + 2·KV)·D) -> rotary q, k and plain v, rounded once to bf16 in the (B, heads,
//             T, D) layout in one pass -> libtorch's CPU flash attention in bf16 (f32 accumulation) -> y f32
//             (B, T, H·D)
//   backward: the flash backward in f32 on the same bf16-rounded q, k, v (written in f32 too by the forward's
//             pass; exact) -> the inverse rotation and the (B, T, ·) layout in one pass -> dqkv f32
//
// The ATen form of the same (split, views, rope as narrows, products and a concatenation, dtype casts,
// transposes, and each of their backwards) makes a dozen passes over q and k each way. The flash backward
// runs in f32 because libtorch's CPU kernel measured ~1.4x faster there than in bf16 (tiny and d20 shapes);
// its inputs are the forward's values, so it differentiates exactly what the forward computed.
// Rotary layout: "rotate half" (HF llama), as Rope in layers.rs: pairs (i, i + D/2), angle t·θ_i.
#include "common.h"

namespace {

using namespace nct;

// Rows (b, t) go to threads in chunks of this many.
constexpr int64_t kGrain = 8;

struct Shape {
  int64_t b, t, h, kv, d;
};

// One head of one row: the rotation (q, k) or the copy (v), rounded to bf16 into y and, exactly, into yf.
void rotate_head_generic(const float* x, const float* c, const float* sn, bool rotate, int64_t d,
                         c10::BFloat16* y, float* yf) {
  if (!rotate) {
    for (int64_t i = 0; i < d; ++i) {
      y[i] = c10::BFloat16(x[i]);
      yf[i] = static_cast<float>(y[i]);
    }
    return;
  }
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    y[i] = c10::BFloat16(x1 * c[i] - x2 * sn[i]);
    y[i + half] = c10::BFloat16(x1 * sn[i] + x2 * c[i]);
    yf[i] = static_cast<float>(y[i]);
    yf[i + half] = static_cast<float>(y[i + half]);
  }
}

// One head of one row of the backward: g (contiguous) rotated back (or copied) into y.
void unrotate_head_generic(const float* g, int64_t e, const float* c, const float* sn, bool rotate, int64_t d,
                           float* y) {
  if (!rotate) {
    for (int64_t i = 0; i < d; ++i) y[i] = g[i * e];
    return;
  }
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float g1 = g[i * e], g2 = g[(i + half) * e];
    y[i] = g1 * c[i] + g2 * sn[i];
    y[i + half] = g2 * c[i] - g1 * sn[i];
  }
}

#if defined(__x86_64__)
// 16 values rounded to bf16 into y[at..] and, exactly, into yf[at..].
NCT_SIMD inline void put_bf16(c10::BFloat16* y, float* yf, int64_t at, __mmask16 mk, __m512 v) {
  const __m256i b = bf16x16(v);
  _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(y + at), mk, b);
  _mm512_mask_storeu_ps(yf + at, mk, f32x16(b));
}

// The same with 16 lanes (the same products and sums, no fused multiply-adds).
NCT_SIMD void rotate_head_avx512(const float* x, const float* c, const float* sn, bool rotate, int64_t d,
                                 c10::BFloat16* y, float* yf) {
  if (!rotate) {
    for (int64_t i = 0; i < d; i += 16) put_bf16(y, yf, i, mask16(d - i), _mm512_maskz_loadu_ps(mask16(d - i), x + i));
    return;
  }
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 mk = mask16(half - i);
    const __m512 x1 = _mm512_maskz_loadu_ps(mk, x + i), x2 = _mm512_maskz_loadu_ps(mk, x + half + i);
    const __m512 cv = _mm512_maskz_loadu_ps(mk, c + i), sv = _mm512_maskz_loadu_ps(mk, sn + i);
    put_bf16(y, yf, i, mk, _mm512_sub_ps(_mm512_mul_ps(x1, cv), _mm512_mul_ps(x2, sv)));
    put_bf16(y, yf, half + i, mk, _mm512_add_ps(_mm512_mul_ps(x1, sv), _mm512_mul_ps(x2, cv)));
  }
}

NCT_SIMD void unrotate_head_avx512(const float* g, const float* c, const float* sn, bool rotate, int64_t d, float* y) {
  if (!rotate) {
    for (int64_t i = 0; i < d; i += 16) _mm512_mask_storeu_ps(y + i, mask16(d - i), _mm512_maskz_loadu_ps(mask16(d - i), g + i));
    return;
  }
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 mk = mask16(half - i);
    const __m512 g1 = _mm512_maskz_loadu_ps(mk, g + i), g2 = _mm512_maskz_loadu_ps(mk, g + half + i);
    const __m512 cv = _mm512_maskz_loadu_ps(mk, c + i), sv = _mm512_maskz_loadu_ps(mk, sn + i);
    _mm512_mask_storeu_ps(y + i, mk, _mm512_add_ps(_mm512_mul_ps(g1, cv), _mm512_mul_ps(g2, sv)));
    _mm512_mask_storeu_ps(y + half + i, mk, _mm512_sub_ps(_mm512_mul_ps(g2, cv), _mm512_mul_ps(g1, sv)));
  }
}
#endif

// q, k (rotated) and v of each row of qkv into bf16 (B, heads, T, D) tensors, and the same values in f32
// (exact; the backward's inputs) into `wide` (3, …) ones.
void rotate_forward(const Tensor& qkv, const Tensor& cos, const Tensor& sin, const Shape& s, Tensor& q, Tensor& k,
                    Tensor& v, Tensor& qf, Tensor& kf, Tensor& vf) {
  const int64_t half = s.d / 2, width = (s.h + 2 * s.kv) * s.d;
  const float* src = qkv.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  c10::BFloat16* outs[3] = {q.data_ptr<c10::BFloat16>(), k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>()};
  float* f32s[3] = {qf.data_ptr<float>(), kf.data_ptr<float>(), vf.data_ptr<float>()};
  const int64_t heads[3] = {s.h, s.kv, s.kv};
  const bool wide = simd();
  at::parallel_for(0, s.b * s.t, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / s.t, ti = row % s.t;
      const float* x = src + row * width;
      const float* cr = c + ti * half;
      const float* sr = sn + ti * half;
      for (int part = 0; part < 3; ++part) {
        for (int64_t hd = 0; hd < heads[part]; ++hd, x += s.d) {
          const int64_t at = ((bi * heads[part] + hd) * s.t + ti) * s.d;
#if defined(__x86_64__)
          if (wide) {
            rotate_head_avx512(x, cr, sr, part != 2, s.d, outs[part] + at, f32s[part] + at);
            continue;
          }
#endif
          rotate_head_generic(x, cr, sr, part != 2, s.d, outs[part] + at, f32s[part] + at);
        }
      }
    }
  });
}

// The transpose of rotate_forward: dq, dk (rotated back) and dv, f32 (B, heads, T, D) of any strides, into
// dqkv rows.
void rotate_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos, const Tensor& sin,
                     const Shape& s, Tensor& dqkv) {
  const int64_t half = s.d / 2, width = (s.h + 2 * s.kv) * s.d;
  float* dst = dqkv.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  const float* ins[3] = {dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>()};
  const Tensor* grads[3] = {&dq, &dk, &dv};
  const int64_t heads[3] = {s.h, s.kv, s.kv};
  const bool wide = simd();
  at::parallel_for(0, s.b * s.t, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / s.t, ti = row % s.t;
      float* y = dst + row * width;
      const float* cr = c + ti * half;
      const float* sr = sn + ti * half;
      for (int part = 0; part < 3; ++part) {
        for (int64_t hd = 0; hd < heads[part]; ++hd, y += s.d) {
          const Tensor& src = *grads[part];
          const float* g = ins[part] + bi * src.stride(0) + hd * src.stride(1) + ti * src.stride(2);
          const int64_t e = src.stride(3);
#if defined(__x86_64__)
          if (wide && e == 1) {
            unrotate_head_avx512(g, cr, sr, part != 2, s.d, y);
            continue;
          }
#endif
          unrotate_head_generic(g, e, cr, sr, part != 2, s.d, y);
        }
      }
    }
  });
}

struct AttentionFn : public torch::autograd::Function<AttentionFn> {
  static Tensor forward(AutogradContext* ctx, Tensor qkv, Tensor cos, Tensor sin, int64_t n_heads,
                        int64_t n_kv_heads) {
    const Shape s{qkv.size(0), qkv.size(1), n_heads, n_kv_heads, qkv.size(2) / (n_heads + 2 * n_kv_heads)};
    const auto bf16 = qkv.options().dtype(at::kBFloat16);
    Tensor q = at::empty({s.b, s.h, s.t, s.d}, bf16);
    Tensor k = at::empty({s.b, s.kv, s.t, s.d}, bf16);
    Tensor v = at::empty({s.b, s.kv, s.t, s.d}, bf16);
    Tensor qf = at::empty(q.sizes(), qkv.options()), kf = at::empty(k.sizes(), qkv.options());
    Tensor vf = at::empty(v.sizes(), qkv.options());
    rotate_forward(qkv, cos, sin, s, q, k, v, qf, kf, vf);
    auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, true);
    // (B, H, T, D) -> (B, T, H·D) in f32: the result, and (as a strided view) the backward's `out`.
    Tensor y = out.transpose(1, 2).reshape({s.b, s.t, s.h * s.d}).to(at::kFloat);
    ctx->save_for_backward({qf, kf, vf, y, lse, cos, sin});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &y = saved[3], &lse = saved[4];
    const Tensor &cos = saved[5], &sin = saved[6];
    const Shape s{q.size(0), q.size(2), q.size(1), k.size(1), q.size(3)};
    const auto heads_view = [&](const Tensor& t) { return t.view({s.b, s.t, s.h, s.d}).transpose(1, 2); };
    const Tensor dy = heads_view(grads[0].to(at::kFloat).contiguous());
    auto [dq, dk, dv] =
        at::_scaled_dot_product_flash_attention_for_cpu_backward(dy, q, k, v, heads_view(y), lse, 0.0, true);
    Tensor dqkv = at::empty({s.b, s.t, (s.h + 2 * s.kv) * s.d}, dy.options());
    rotate_backward(dq, dk, dv, cos, sin, s, dqkv);
    return {dqkv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

extern "C" {

// y (B, T, H·D) = causal attention of the rotated q, k and v in qkv (B, T, (H + 2·KV)·D), with the rotary
// tables cos and sin (≥ T positions, D/2 angles each; f32), with autograd.
char* nct_attention(const Tensor* qkv, const Tensor* cos, const Tensor* sin, int64_t n_heads, int64_t n_kv_heads,
                    Tensor** out) {
  try {
    const Tensor& x = *qkv;
    const bool heads_ok = n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0;
    const int64_t per = heads_ok ? n_heads + 2 * n_kv_heads : 1;
    const bool x_ok = cpu_f32(x) && x.dim() == 3 && x.size(0) > 0 && x.size(1) > 0 && x.size(2) % per == 0 &&
                      (x.size(2) / per) % 2 == 0 && x.size(2) > 0;
    if (!heads_ok || !x_ok) {
      return copy_error("attention: expected f32 CPU q/k/v (B, T, (heads + 2·kv heads)·head_dim) with an even "
                        "head_dim and heads a multiple of kv heads, got " + describe(x) + " with " +
                        std::to_string(n_heads) + " heads, " + std::to_string(n_kv_heads) + " kv heads");
    }
    const int64_t t = x.size(1), half = x.size(2) / per / 2;
    for (const Tensor* table : {cos, sin}) {
      if (!cpu_f32(*table) || table->dim() != 2 || table->size(0) < t || table->size(1) != half) {
        return copy_error("attention: expected f32 CPU rotary tables (>= " + std::to_string(t) + ", " +
                          std::to_string(half) + "), got " + describe(*table));
      }
    }
    *out = new Tensor(AttentionFn::apply(x.contiguous(), cos->narrow(0, 0, t).contiguous(),
                                         sin->narrow(0, 0, t).contiguous(), n_heads, n_kv_heads));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

}  // extern "C"
