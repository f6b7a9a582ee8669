// mHC's two stream passes for CPU training, each one pass over the streams forward and one backward, as
// torch::autograd::Functions (called over a C ABI from rust/train/src/mhc_layer.rs; compiled by build.rs):
//
//   reduce:  y[r]    = Σ_i h[r,i] · S[r,i,:]                       (the sub-layer's input, H_pre·x)
//   mix:     out[r,i] = Σ_j M[r,i,j] · S[r,j,:] + p[r,i] · O[r,:]   (H_res·x + H_postᵀ ⊗ F(...))
//
//   maps:    z[r,:]   = ρ_r · (x[r,:] · W),  ρ_r = (mean_k x[r,k]² + ε)^-½   (the three maps' logits before α, b)
//
// S: (rows, n, C) streams, h and p: (rows, n), M: (rows, n, n), O: (rows, C); x: the streams flattened to
// (rows, n·C), W: (n·C, m) the maps' weights side by side; all f32, CPU. The ATen form
// of the same (a broadcast multiply and a sum; a batched n×n matmul, a broadcast multiply and an add) makes
// several passes over the streams each way, and the batched matmul of 2×2 matrices is slow on CPU.
#include "common.h"

#include <algorithm>
#include <cmath>

namespace {

using namespace nct;

// Rows go to threads in chunks of this many.
constexpr int64_t kGrain = 16;

// The per-row kernels: generic loops, and AVX-512 ones (masked tails) where the CPU has it.
// n: streams, c: channels; every pointer is one row.

// y = Σ_i h_i · s_i
void reduce_row_generic(const float* s, const float* h, float* y, int64_t n, int64_t c) {
  for (int64_t k = 0; k < c; ++k) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += h[i] * s[i * c + k];
    y[k] = acc;
  }
}

// ds_i = h_i · dy; dh_i = <s_i, dy>
void reduce_back_row_generic(const float* s, const float* h, const float* dy, float* ds, float* dh, int64_t n,
                             int64_t c) {
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0.0;
    for (int64_t k = 0; k < c; ++k) {
      ds[i * c + k] = h[i] * dy[k];
      dot += static_cast<double>(s[i * c + k]) * dy[k];
    }
    dh[i] = static_cast<float>(dot);
  }
}

// out_i = Σ_j m_ij · s_j + p_i · o
void mix_row_generic(const float* s, const float* m, const float* p, const float* o, float* out, int64_t n,
                     int64_t c) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c; ++k) {
      float acc = p[i] * o[k];
      for (int64_t j = 0; j < n; ++j) acc += m[i * n + j] * s[j * c + k];
      out[i * c + k] = acc;
    }
  }
}

// ds_j = Σ_i m_ij · d_i; dm_ij = <d_i, s_j>; dp_i = <d_i, o>; do = Σ_i p_i · d_i
void mix_back_row_generic(const float* s, const float* m, const float* p, const float* o, const float* d, float* ds,
                          float* dm, float* dp, float* dout_o, int64_t n, int64_t c) {
  for (int64_t k = 0; k < c; ++k) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += p[i] * d[i * c + k];
    dout_o[k] = acc;
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t k = 0; k < c; ++k) {
      float acc = 0.0f;
      for (int64_t i = 0; i < n; ++i) acc += m[i * n + j] * d[i * c + k];
      ds[j * c + k] = acc;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    double dot_o = 0.0;
    for (int64_t k = 0; k < c; ++k) dot_o += static_cast<double>(d[i * c + k]) * o[k];
    dp[i] = static_cast<float>(dot_o);
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0.0;
      for (int64_t k = 0; k < c; ++k) dot += static_cast<double>(d[i * c + k]) * s[j * c + k];
      dm[i * n + j] = static_cast<float>(dot);
    }
  }
}

#if defined(__x86_64__)
#define NCT_AVX512 __attribute__((target("avx512f")))
// The AVX-512 kernels keep n² + n accumulators in registers: up to this many streams.
constexpr int64_t kMaxWide = 4;

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

NCT_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

NCT_AVX512 void reduce_row_avx512(const float* s, const float* h, float* y, int64_t n, int64_t c) {
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 mk = tail_mask(c - k);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) acc = _mm512_fmadd_ps(_mm512_set1_ps(h[i]), _mm512_maskz_loadu_ps(mk, s + i * c + k), acc);
    _mm512_mask_storeu_ps(y + k, mk, acc);
  }
}

NCT_AVX512 void reduce_back_row_avx512(const float* s, const float* h, const float* dy, float* ds, float* dh,
                                       int64_t n, int64_t c) {
  __m512 dots[kMaxWide];
  for (int64_t i = 0; i < n; ++i) dots[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 mk = tail_mask(c - k);
    const __m512 g = _mm512_maskz_loadu_ps(mk, dy + k);
    for (int64_t i = 0; i < n; ++i) {
      _mm512_mask_storeu_ps(ds + i * c + k, mk, _mm512_mul_ps(_mm512_set1_ps(h[i]), g));
      dots[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, s + i * c + k), g, dots[i]);
    }
  }
  for (int64_t i = 0; i < n; ++i) dh[i] = _mm512_reduce_add_ps(dots[i]);
}

NCT_AVX512 void mix_row_avx512(const float* s, const float* m, const float* p, const float* o, float* out, int64_t n,
                               int64_t c) {
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 mk = tail_mask(c - k);
    __m512 sv[kMaxWide];
    for (int64_t j = 0; j < n; ++j) sv[j] = _mm512_maskz_loadu_ps(mk, s + j * c + k);
    const __m512 ov = _mm512_maskz_loadu_ps(mk, o + k);
    for (int64_t i = 0; i < n; ++i) {
      __m512 acc = _mm512_mul_ps(_mm512_set1_ps(p[i]), ov);
      for (int64_t j = 0; j < n; ++j) acc = _mm512_fmadd_ps(_mm512_set1_ps(m[i * n + j]), sv[j], acc);
      _mm512_mask_storeu_ps(out + i * c + k, mk, acc);
    }
  }
}

NCT_AVX512 void mix_back_row_avx512(const float* s, const float* m, const float* p, const float* o, const float* d,
                                    float* ds, float* dm, float* dp, float* dout_o, int64_t n, int64_t c) {
  __m512 dms[kMaxWide * kMaxWide], dps[kMaxWide];
  for (int64_t i = 0; i < n * n; ++i) dms[i] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; ++i) dps[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 mk = tail_mask(c - k);
    __m512 dv[kMaxWide], sv[kMaxWide];
    for (int64_t i = 0; i < n; ++i) {
      dv[i] = _mm512_maskz_loadu_ps(mk, d + i * c + k);
      sv[i] = _mm512_maskz_loadu_ps(mk, s + i * c + k);
    }
    const __m512 ov = _mm512_maskz_loadu_ps(mk, o + k);
    __m512 go = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      go = _mm512_fmadd_ps(_mm512_set1_ps(p[i]), dv[i], go);
      dps[i] = _mm512_fmadd_ps(dv[i], ov, dps[i]);
      for (int64_t j = 0; j < n; ++j) dms[i * n + j] = _mm512_fmadd_ps(dv[i], sv[j], dms[i * n + j]);
    }
    _mm512_mask_storeu_ps(dout_o + k, mk, go);
    for (int64_t j = 0; j < n; ++j) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < n; ++i) acc = _mm512_fmadd_ps(_mm512_set1_ps(m[i * n + j]), dv[i], acc);
      _mm512_mask_storeu_ps(ds + j * c + k, mk, acc);
    }
  }
  for (int64_t i = 0; i < n * n; ++i) dm[i] = _mm512_reduce_add_ps(dms[i]);
  for (int64_t i = 0; i < n; ++i) dp[i] = _mm512_reduce_add_ps(dps[i]);
}
#endif

// maps, one row: returns ρ, writes the m dot products x·W (wt: W transposed, (m, k)).
float maps_row_generic(const float* x, const float* wt, float* z, int64_t m, int64_t k, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < k; ++i) ss += static_cast<double>(x[i]) * x[i];
  for (int64_t j = 0; j < m; ++j) {
    double dot = 0.0;
    for (int64_t i = 0; i < k; ++i) dot += static_cast<double>(x[i]) * wt[j * k + i];
    z[j] = static_cast<float>(dot);
  }
  return 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(k)) + eps);
}

// maps backward, one row: dx = Σ_j dz_j · W[:, j] + c · x; acc (m, k) += dz ⊗ x (W's gradient, transposed).
void maps_back_row_generic(const float* x, const float* wt, const float* dz, float c, float* dx, float* acc,
                           int64_t m, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    float d = c * x[i];
    for (int64_t j = 0; j < m; ++j) {
      d += dz[j] * wt[j * k + i];
      acc[j * k + i] += dz[j] * x[i];
    }
    dx[i] = d;
  }
}

#if defined(__x86_64__)
// The AVX-512 maps kernels keep m + 1 accumulators: up to this many logits.
constexpr int64_t kMaxMaps = 15;

NCT_AVX512 float maps_row_avx512(const float* x, const float* wt, float* z, int64_t m, int64_t k, float eps) {
  __m512 ss = _mm512_setzero_ps();
  __m512 acc[kMaxMaps];
  for (int64_t j = 0; j < m; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mk = tail_mask(k - i);
    const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
    ss = _mm512_fmadd_ps(xv, xv, ss);
    for (int64_t j = 0; j < m; ++j) acc[j] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mk, wt + j * k + i), acc[j]);
  }
  for (int64_t j = 0; j < m; ++j) z[j] = _mm512_reduce_add_ps(acc[j]);
  return 1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(k) + eps);
}

NCT_AVX512 void maps_back_row_avx512(const float* x, const float* wt, const float* dz, float c, float* dx,
                                     float* acc, int64_t m, int64_t k) {
  const __m512 vc = _mm512_set1_ps(c);
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mk = tail_mask(k - i);
    const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
    __m512 d = _mm512_mul_ps(vc, xv);
    for (int64_t j = 0; j < m; ++j) {
      const __m512 g = _mm512_set1_ps(dz[j]);
      d = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(mk, wt + j * k + i), d);
      float* a = acc + j * k + i;
      _mm512_mask_storeu_ps(a, mk, _mm512_fmadd_ps(g, xv, _mm512_maskz_loadu_ps(mk, a)));
    }
    _mm512_mask_storeu_ps(dx + i, mk, d);
  }
}
#endif

// Set by tests (nct_mhc_force_generic) to run the generic kernels on an AVX-512 CPU.
std::atomic<bool> force_generic{false};

bool wide(int64_t n) {
#if defined(__x86_64__)
  return n <= kMaxWide && has_avx512() && !force_generic.load();
#else
  (void)n;
  return false;
#endif
}

struct ReduceFn : public torch::autograd::Function<ReduceFn> {
  static Tensor forward(AutogradContext* ctx, Tensor s, Tensor h) {
    const int64_t rows = s.size(0), n = s.size(1), c = s.size(2);
    Tensor y = at::empty({rows, c}, s.options());
    const float *sp = s.data_ptr<float>(), *hp = h.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const bool w = wide(n);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
#if defined(__x86_64__)
        if (w) {
          reduce_row_avx512(sp + r * n * c, hp + r * n, yp + r * c, n, c);
          continue;
        }
#endif
        reduce_row_generic(sp + r * n * c, hp + r * n, yp + r * c, n, c);
      }
    });
    ctx->save_for_backward({s, h});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &s = saved[0], &h = saved[1];
    const int64_t rows = s.size(0), n = s.size(1), c = s.size(2);
    const Tensor dy = grads[0].to(at::kFloat).contiguous();
    Tensor ds = at::empty_like(s), dh = at::empty_like(h);
    const float *sp = s.data_ptr<float>(), *hp = h.data_ptr<float>(), *gp = dy.data_ptr<float>();
    float *dsp = ds.data_ptr<float>(), *dhp = dh.data_ptr<float>();
    const bool w = wide(n);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
#if defined(__x86_64__)
        if (w) {
          reduce_back_row_avx512(sp + r * n * c, hp + r * n, gp + r * c, dsp + r * n * c, dhp + r * n, n, c);
          continue;
        }
#endif
        reduce_back_row_generic(sp + r * n * c, hp + r * n, gp + r * c, dsp + r * n * c, dhp + r * n, n, c);
      }
    });
    return {ds, dh};
  }
};

struct MixFn : public torch::autograd::Function<MixFn> {
  static Tensor forward(AutogradContext* ctx, Tensor s, Tensor m, Tensor p, Tensor o) {
    const int64_t rows = s.size(0), n = s.size(1), c = s.size(2);
    Tensor out = at::empty_like(s);
    const float *sp = s.data_ptr<float>(), *mp = m.data_ptr<float>(), *pp = p.data_ptr<float>();
    const float* op = o.data_ptr<float>();
    float* outp = out.data_ptr<float>();
    const bool w = wide(n);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
#if defined(__x86_64__)
        if (w) {
          mix_row_avx512(sp + r * n * c, mp + r * n * n, pp + r * n, op + r * c, outp + r * n * c, n, c);
          continue;
        }
#endif
        mix_row_generic(sp + r * n * c, mp + r * n * n, pp + r * n, op + r * c, outp + r * n * c, n, c);
      }
    });
    ctx->save_for_backward({s, m, p, o});
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &s = saved[0], &m = saved[1], &p = saved[2], &o = saved[3];
    const int64_t rows = s.size(0), n = s.size(1), c = s.size(2);
    const Tensor d = grads[0].to(at::kFloat).contiguous();
    Tensor ds = at::empty_like(s), dm = at::empty_like(m), dp = at::empty_like(p), dout_o = at::empty_like(o);
    const float *sp = s.data_ptr<float>(), *mp = m.data_ptr<float>(), *pp = p.data_ptr<float>();
    const float *op = o.data_ptr<float>(), *gp = d.data_ptr<float>();
    float *dsp = ds.data_ptr<float>(), *dmp = dm.data_ptr<float>(), *dpp = dp.data_ptr<float>();
    float* dop = dout_o.data_ptr<float>();
    const bool w = wide(n);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t a = r * n * c;
#if defined(__x86_64__)
        if (w) {
          mix_back_row_avx512(sp + a, mp + r * n * n, pp + r * n, op + r * c, gp + a, dsp + a, dmp + r * n * n,
                              dpp + r * n, dop + r * c, n, c);
          continue;
        }
#endif
        mix_back_row_generic(sp + a, mp + r * n * n, pp + r * n, op + r * c, gp + a, dsp + a, dmp + r * n * n,
                             dpp + r * n, dop + r * c, n, c);
      }
    });
    return {ds, dm, dp, dout_o};
  }
};

// Rows go to this many chunks in the maps backward, each with its own partial W gradient, summed in order
// (the result does not depend on the thread count).
constexpr int64_t kMapChunks = 16;

bool wide_maps(int64_t m) {
#if defined(__x86_64__)
  return m <= kMaxMaps && has_avx512() && !force_generic.load();
#else
  (void)m;
  return false;
#endif
}

struct MapsFn : public torch::autograd::Function<MapsFn> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor w, double eps) {
    const int64_t rows = x.size(0), k = x.size(1), m = w.size(1);
    const Tensor wt = w.t().contiguous();
    Tensor z = at::empty({rows, m}, x.options()), rho = at::empty({rows}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = wt.data_ptr<float>();
    float *zp = z.data_ptr<float>(), *rp = rho.data_ptr<float>();
    const bool v = wide_maps(m);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
#if defined(__x86_64__)
        if (v) {
          rp[r] = maps_row_avx512(xp + r * k, wp, zp + r * m, m, k, static_cast<float>(eps));
          continue;
        }
#endif
        rp[r] = maps_row_generic(xp + r * k, wp, zp + r * m, m, k, static_cast<float>(eps));
      }
    });
    ctx->save_for_backward({x, wt, z, rho});
    return z * rho.unsqueeze(1);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &wt = saved[1], &z = saved[2], &rho = saved[3];
    const int64_t rows = x.size(0), k = x.size(1), m = wt.size(0);
    const Tensor g = grads[0].to(at::kFloat).contiguous();
    Tensor dx = at::empty_like(x);
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kMapChunks, rows));
    Tensor partial = at::zeros({chunks, m, k}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = wt.data_ptr<float>(), *zp = z.data_ptr<float>();
    const float *rp = rho.data_ptr<float>(), *gp = g.data_ptr<float>();
    float *dxp = dx.data_ptr<float>(), *pp = partial.data_ptr<float>();
    const bool v = wide_maps(m);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> dz(m);
      for (int64_t ch = begin; ch < end; ++ch) {
        for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
          // out = ρ·z: dz = g·ρ; dρ = <g, z>, and dρ/dx = -ρ³·x / k.
          const float rr = rp[r];
          float dr = 0.0f;
          for (int64_t j = 0; j < m; ++j) {
            dz[j] = gp[r * m + j] * rr;
            dr += gp[r * m + j] * zp[r * m + j];
          }
          const float c = -dr * rr * rr * rr / static_cast<float>(k);
#if defined(__x86_64__)
          if (v) {
            maps_back_row_avx512(xp + r * k, wp, dz.data(), c, dxp + r * k, pp + ch * m * k, m, k);
            continue;
          }
#endif
          maps_back_row_generic(xp + r * k, wp, dz.data(), c, dxp + r * k, pp + ch * m * k, m, k);
        }
      }
    });
    return {dx, partial.sum(0).t().contiguous(), Tensor()};
  }
};

}  // namespace

extern "C" {

// Tests: 1 runs the generic kernels even where AVX-512 is available, 0 restores the dispatch.
void nct_mhc_force_generic(int on) { force_generic.store(on != 0); }

// y (rows, C) = Σ_i h[:, i] · S[:, i, :] for S (rows, n, C) and h (rows, n).
char* nct_mhc_reduce(const Tensor* s, const Tensor* h, Tensor** out) {
  try {
    if (!cpu_f32(*s) || !cpu_f32(*h) || s->dim() != 3 || h->dim() != 2 || h->size(0) != s->size(0) ||
        h->size(1) != s->size(1)) {
      return copy_error("mhc reduce: expected f32 CPU streams (rows, n, C) and weights (rows, n), got " +
                        describe(*s) + " and " + describe(*h));
    }
    *out = new Tensor(ReduceFn::apply(s->contiguous(), h->contiguous()));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// out (rows, n, C) = M · S + p ⊗ O for S (rows, n, C), M (rows, n, n), p (rows, n), O (rows, C).
char* nct_mhc_mix(const Tensor* s, const Tensor* m, const Tensor* p, const Tensor* o, Tensor** out) {
  try {
    const bool ok = cpu_f32(*s) && cpu_f32(*m) && cpu_f32(*p) && cpu_f32(*o) && s->dim() == 3 && m->dim() == 3 &&
                    p->dim() == 2 && o->dim() == 2;
    if (!ok || m->size(0) != s->size(0) || m->size(1) != s->size(1) || m->size(2) != s->size(1) ||
        p->size(0) != s->size(0) || p->size(1) != s->size(1) || o->size(0) != s->size(0) ||
        o->size(1) != s->size(2)) {
      return copy_error("mhc mix: expected f32 CPU streams (rows, n, C), maps (rows, n, n), gates (rows, n) and "
                        "output (rows, C), got " + describe(*s) + ", " + describe(*m) + ", " + describe(*p) +
                        ", " + describe(*o));
    }
    *out = new Tensor(MixFn::apply(s->contiguous(), m->contiguous(), p->contiguous(), o->contiguous()));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// z (rows, m) = ρ_r · (x[r,:] · W) for x (rows, k) and W (k, m), ρ_r = (mean x[r,:]² + eps)^-½, with autograd.
char* nct_mhc_maps(const Tensor* x, const Tensor* w, double eps, Tensor** out) {
  try {
    if (!cpu_f32(*x) || !cpu_f32(*w) || x->dim() != 2 || w->dim() != 2 || w->size(0) != x->size(1) ||
        x->size(1) == 0 || w->size(1) == 0 || !(eps > 0.0)) {
      return copy_error("mhc maps: expected f32 CPU rows (rows, k), weights (k, m) and eps > 0, got " +
                        describe(*x) + " and " + describe(*w) + ", eps " + std::to_string(eps));
    }
    *out = new Tensor(MapsFn::apply(x->contiguous(), *w, eps));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

}  // extern "C"
