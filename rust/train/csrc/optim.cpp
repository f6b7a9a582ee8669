// The optimizers' element-wise work for f32 CPU parameters (called over a C ABI from rust/train/src/optim.rs;
// compiled by build.rs). Muon, around Newton–Schulz, as two passes per matrix instead of a dozen ATen ones:
//
//   prepare: buf ← β·buf + g;  x = g + β·buf (Nesterov);  out = x / (‖x‖_F + 1e-7) in the iteration's kind
//            (bf16 or f32), in the parameter's own layout
//   update:  p ← p − lr·(scale·o + wd·p), o the iteration's result
//
// Lion, one pass instead of seven: c = β1·m + (1 − β1)·g;  p ← p − lr·(sign(c) + wd·p);  m ← β2·m + (1 − β2)·g
// (the ATen update's operations in its order; equal to float rounding).
//
// The Frobenius norm sums per block of elements in double, blocks combined in order, so the result does not
// depend on the thread count. Each pass has an AVX-512 kernel and a generic one (common.h's dispatch).
#include "common.h"

#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>

namespace {

using namespace nct;

constexpr int64_t kBlock = 4096;  // elements per task (and per partial sum of the norm)

// ---- generic kernels: [begin, end) of the flattened tensors ----

double momentum_generic(const float* g, float* buf, float beta, int64_t begin, int64_t end) {
  double acc = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    const float b = buf[i] * beta + g[i];
    buf[i] = b;
    const float x = g[i] + b * beta;
    acc += static_cast<double>(x) * x;
  }
  return acc;
}

template <typename T>
void normalize_generic(const float* g, const float* buf, float beta, float inv, T* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) out[i] = static_cast<T>((g[i] + buf[i] * beta) * inv);
}

template <typename T>
void update_generic(float* p, const T* o, float step, float decay, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) p[i] -= step * static_cast<float>(o[i]) + decay * p[i];
}

void lion_generic(float* p, float* m, const float* g, float lr, float b1, float k1, float b2, float k2, float wd,
                  int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float c = m[i] * b1 + g[i] * k1;
    const float dir = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c);
    const float update = wd == 0.0f ? dir : dir + p[i] * wd;
    p[i] = p[i] - update * lr;
    m[i] = m[i] * b2 + g[i] * k2;
  }
}

#if defined(__x86_64__)
// ---- AVX-512 kernels: the same operations, 16 lanes (masked tails) ----

NCT_SIMD double momentum_avx512(const float* g, float* buf, float beta, int64_t begin, int64_t end) {
  const __m512 vb = _mm512_set1_ps(beta);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 mk = mask16(end - i);
    const __m512 gv = _mm512_maskz_loadu_ps(mk, g + i);
    const __m512 b = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, buf + i), vb), gv);
    _mm512_mask_storeu_ps(buf + i, mk, b);
    const __m512 x = _mm512_add_ps(gv, _mm512_mul_ps(b, vb));
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    const __m512d x1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    lo = _mm512_fmadd_pd(x0, x0, lo);
    hi = _mm512_fmadd_pd(x1, x1, hi);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

NCT_SIMD void normalize_avx512(const float* g, const float* buf, float beta, float inv, c10::BFloat16* out,
                               int64_t begin, int64_t end) {
  const __m512 vb = _mm512_set1_ps(beta), vi = _mm512_set1_ps(inv);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 mk = mask16(end - i);
    const __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, g + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, buf + i), vb));
    _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(out + i), mk, bf16x16(_mm512_mul_ps(x, vi)));
  }
}

NCT_SIMD void update_avx512(float* p, const c10::BFloat16* o, float step, float decay, int64_t begin, int64_t end) {
  const __m512 vs = _mm512_set1_ps(step), vd = _mm512_set1_ps(decay);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 mk = mask16(end - i);
    const __m512 ov = f32x16(_mm256_maskz_loadu_epi16(mk, reinterpret_cast<const __m256i*>(o + i)));
    const __m512 pv = _mm512_maskz_loadu_ps(mk, p + i);
    const __m512 delta = _mm512_add_ps(_mm512_mul_ps(vs, ov), _mm512_mul_ps(vd, pv));
    _mm512_mask_storeu_ps(p + i, mk, _mm512_sub_ps(pv, delta));
  }
}

NCT_SIMD void lion_avx512(float* p, float* m, const float* g, float lr, float b1, float k1, float b2, float k2,
                          float wd, int64_t begin, int64_t end) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 mk = mask16(end - i);
    const __m512 gv = _mm512_maskz_loadu_ps(mk, g + i);
    const __m512 mv = _mm512_maskz_loadu_ps(mk, m + i);
    const __m512 pv = _mm512_maskz_loadu_ps(mk, p + i);
    const __m512 c = _mm512_add_ps(_mm512_mul_ps(mv, _mm512_set1_ps(b1)), _mm512_mul_ps(gv, _mm512_set1_ps(k1)));
    // sign(c): ±1, and c itself where it is 0 (or NaN), as torch.sign.
    __m512 dir = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, zero, _CMP_GT_OQ), c, one);
    dir = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, zero, _CMP_LT_OQ), dir, minus);
    const __m512 update = wd == 0.0f ? dir : _mm512_add_ps(dir, _mm512_mul_ps(pv, _mm512_set1_ps(wd)));
    _mm512_mask_storeu_ps(p + i, mk, _mm512_sub_ps(pv, _mm512_mul_ps(update, _mm512_set1_ps(lr))));
    _mm512_mask_storeu_ps(m + i, mk,
                          _mm512_add_ps(_mm512_mul_ps(mv, _mm512_set1_ps(b2)), _mm512_mul_ps(gv, _mm512_set1_ps(k2))));
  }
}
#endif

template <typename T>
void prepare(const Tensor& g, Tensor& buf, float beta, Tensor& out) {
  const int64_t n = g.numel();
  const float* gp = g.data_ptr<float>();
  float* bp = buf.data_ptr<float>();
  T* op = out.data_ptr<T>();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  const bool wide = simd();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t a = blk * kBlock, b = std::min(n, a + kBlock);
#if defined(__x86_64__)
      if (wide) {
        partial[blk] = momentum_avx512(gp, bp, beta, a, b);
        continue;
      }
#endif
      partial[blk] = momentum_generic(gp, bp, beta, a, b);
    }
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  const float inv = 1.0f / (static_cast<float>(std::sqrt(sum)) + 1e-7f);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t a = begin * kBlock, b = std::min(n, end * kBlock);
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (wide) return normalize_avx512(gp, bp, beta, inv, op, a, b);
    }
#endif
    normalize_generic(gp, bp, beta, inv, op, a, b);
  });
}

template <typename T>
void update(Tensor& p, const Tensor& o, float lr, float scale, float wd) {
  const int64_t n = p.numel();
  float* pp = p.data_ptr<float>();
  const T* op = o.data_ptr<T>();
  const float step = lr * scale, decay = lr * wd;
  const bool wide = simd();
  at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (wide) return update_avx512(pp, op, step, decay, begin, end);
    }
#endif
    update_generic(pp, op, step, decay, begin, end);
  });
}

void lion(Tensor& p, Tensor& m, const Tensor& g, float lr, float beta1, float beta2, float wd) {
  float* pp = p.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float keep1 = static_cast<float>(1.0 - static_cast<double>(beta1));
  const float keep2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  const bool wide = simd();
  at::parallel_for(0, p.numel(), kBlock, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (wide) return lion_avx512(pp, mp, gp, lr, beta1, keep1, beta2, keep2, wd, begin, end);
#endif
    lion_generic(pp, mp, gp, lr, beta1, keep1, beta2, keep2, wd, begin, end);
  });
}

bool matrix_f32(const Tensor& t) { return cpu_f32(t) && t.dim() == 2 && t.is_contiguous(); }

// `out` must have p's shape, be contiguous, bf16 or f32, on the CPU.
bool fits(const Tensor& out, const Tensor& p) {
  const bool kind = out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat;
  return out.defined() && kind && out.device().is_cpu() && out.is_contiguous() && out.sizes().equals(p.sizes());
}

}  // namespace

extern "C" {

// Tests: 1 runs the generic kernels of the AVX-512 row passes (common.h's dispatch) even where AVX-512 is
// available, 0 restores the dispatch.
void nct_simd_force_generic(int on) {
#if defined(__x86_64__)
  simd_off.store(on != 0);
#else
  (void)on;
#endif
}

// See `prepare` above: updates `buf` in place and writes the normalized Nesterov input into `out`.
char* nct_muon_prepare(const Tensor* g, const Tensor* buf, double beta, const Tensor* out) {
  try {
    if (!matrix_f32(*g) || !matrix_f32(*buf) || !g->sizes().equals(buf->sizes()) || !fits(*out, *g)) {
      return copy_error("muon prepare: expected contiguous f32 CPU gradient and buffer of one shape and a "
                        "contiguous bf16/f32 output of that shape, got " +
                        describe(*g) + ", " + describe(*buf) + ", " + describe(*out));
    }
    Tensor b = *buf, o = *out;
    if (o.scalar_type() == at::kBFloat16) {
      prepare<c10::BFloat16>(*g, b, static_cast<float>(beta), o);
    } else {
      prepare<float>(*g, b, static_cast<float>(beta), o);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// See `update` above: p ← p − lr·(scale·o + wd·p) in place.
char* nct_muon_update(const Tensor* p, const Tensor* o, double lr, double scale, double wd) {
  try {
    if (!matrix_f32(*p) || !fits(*o, *p)) {
      return copy_error("muon update: expected a contiguous f32 CPU parameter and a contiguous bf16/f32 direction "
                        "of its shape, got " + describe(*p) + " and " + describe(*o));
    }
    Tensor param = *p;
    torch::autograd::impl::bump_version(param);  // as an in-place ATen update would
    const auto [l, s, w] = std::make_tuple(static_cast<float>(lr), static_cast<float>(scale), static_cast<float>(wd));
    if (o->scalar_type() == at::kBFloat16) {
      update<c10::BFloat16>(param, *o, l, s, w);
    } else {
      update<float>(param, *o, l, s, w);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// See `lion` above: p and m updated in place.
char* nct_lion_update(const Tensor* p, const Tensor* m, const Tensor* g, double lr, double beta1, double beta2,
                      double wd) {
  try {
    const auto ok = [](const Tensor& t) { return cpu_f32(t) && t.is_contiguous(); };
    if (!ok(*p) || !ok(*m) || !ok(*g) || !p->sizes().equals(m->sizes()) || !p->sizes().equals(g->sizes())) {
      return copy_error("lion update: expected contiguous f32 CPU parameter, momentum and gradient of one shape, got " +
                        describe(*p) + ", " + describe(*m) + ", " + describe(*g));
    }
    Tensor param = *p, moment = *m;
    torch::autograd::impl::bump_version(param);
    lion(param, moment, *g, static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
         static_cast<float>(wd));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

}  // extern "C"
