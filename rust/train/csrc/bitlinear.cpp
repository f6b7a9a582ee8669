// BitLinear for CPU training: integer forward, bf16 backward, as one
// torch::autograd::Function (tch has no custom-autograd API, so this shim is
// compiled against the libtorch headers by rust/train/build.rs and called
// through a small C ABI from rust/train/src/cpu_bitlinear.rs).
//
// Forward: per-token int8 absmax quantization of x (the exact rule of
// quant.rs: scale = (1 / max(max|x|, eps)) * 127, q = clamp(round(x * scale),
// -128, 127)), then the exact integer product q · tritsᵀ on oneDNN's int8
// GEMM (AMX/VNNI; f32 output, exact below 2^24), times s_w / scale per token.
// This equals the fake-quant f32 forward up to float rounding. The weight may
// be several projections stacked by rows (q, k, v; gate, up), each row with
// its own s_w, so their common input is quantized once and multiplied once.
// Backward (straight-through estimator, as quant.rs): dx = (g · s_w) · trits
// and dW = (g / scale)ᵀ · q, both bf16 matmuls with f32 accumulation (trits
// and q are exact in bf16), results in f32.
// An optional prologue is fused into the quantization pass and its backward
// into the pass after dx: the sub-layer's RMSNorm (with gain) before q/k/v and
// gate/up, or SwiGLU's silu(gate)·up before the down projection, so neither
// the normed nor the hidden activations exist as f32 tensors.
#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cmath>

namespace {

using namespace nct;

constexpr float kActivationEps = 1e-5f;  // quant.rs ACTIVATION_EPS
constexpr float kLevels = 127.0f;        // quant.rs ACTIVATION_LEVELS

// One token: returns its scale, writes q as int8 and as bf16 (exact).
inline float quantize_row_generic(const float* x, int8_t* q, c10::BFloat16* qb, int64_t cols) {
  float m = 0.0f;
  for (int64_t i = 0; i < cols; ++i) m = std::fmax(m, std::fabs(x[i]));
  const float scale = (1.0f / std::fmax(m, kActivationEps)) * kLevels;
  for (int64_t i = 0; i < cols; ++i) {
    float v = std::nearbyint(x[i] * scale);
    v = std::fmin(std::fmax(v, -kLevels - 1.0f), kLevels);
    q[i] = static_cast<int8_t>(v);
    qb[i] = c10::BFloat16(v);
  }
  return scale;
}

// One row of the backward's inputs: a[i] = bf16(g[i] * fa[i]), b[i] = bf16(g[i] * fb).
inline void scale_row_generic(const float* g, const float* fa, float fb, c10::BFloat16* a, c10::BFloat16* b,
                              int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    a[i] = c10::BFloat16(g[i] * fa[i]);
    b[i] = c10::BFloat16(g[i] * fb);
  }
}

#if defined(__x86_64__)
#define NCT_AVX512 NCT_SIMD  // common.h: the same target set

// clamp(round(v * scale), -128, 127) of 16 values, as f32 integers.
NCT_AVX512 inline __m512 quantize16(__m512 v, __m512 scale) {
  v = _mm512_roundscale_ps(_mm512_mul_ps(v, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-kLevels - 1.0f)), _mm512_set1_ps(kLevels));
}

NCT_AVX512 void scale_row_avx512(const float* g, const float* fa, float fb, c10::BFloat16* a, c10::BFloat16* b,
                                 int64_t n) {
  const __m512 vb = _mm512_set1_ps(fb);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(g + i);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + i), bf16x16(_mm512_mul_ps(v, _mm512_loadu_ps(fa + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i), bf16x16(_mm512_mul_ps(v, vb)));
  }
  if (i < n) scale_row_generic(g + i, fa + i, fb, a + i, b + i, n - i);
}

// expf on 16 lanes (Cephes polynomial, ~1 ulp); inputs below -87.3 give ~1e-38.
NCT_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.37626f)), _mm512_set1_ps(-87.33654f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

NCT_AVX512 inline __m512 load_bf16(const c10::BFloat16* p) {
  return f32x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// log-sum-exp of one bf16 row (n a multiple of 16).
NCT_AVX512 float logsumexp_row_avx512(const c10::BFloat16* x, int64_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) vmax = _mm512_max_ps(vmax, load_bf16(x + i));
  const float m = _mm512_reduce_max_ps(vmax);
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) sum = _mm512_add_ps(sum, exp16(_mm512_sub_ps(load_bf16(x + i), vm)));
  return m + std::log(_mm512_reduce_add_ps(sum));
}

// grad[i] = bf16((exp(x[i] - lse) - [i == target]) * g) of one bf16 row (n a multiple of 16).
NCT_AVX512 void softmax_grad_row_avx512(const c10::BFloat16* x, float lse, float g, c10::BFloat16* grad, int64_t n) {
  const __m512 vl = _mm512_set1_ps(lse), vg = _mm512_set1_ps(g);
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 p = exp16(_mm512_sub_ps(load_bf16(x + i), vl));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(grad + i), bf16x16(_mm512_mul_ps(p, vg)));
  }
}

NCT_AVX512 float quantize_row_avx512(const float* x, int8_t* q, c10::BFloat16* qb, int64_t cols) {
  __m512 vmax = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  if (i < cols) {
    const __mmask16 k = static_cast<__mmask16>((1u << (cols - i)) - 1);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)));
  }
  const float m = _mm512_reduce_max_ps(vmax);
  const float scale = (1.0f / std::fmax(m, kActivationEps)) * kLevels;
  const __m512 vs = _mm512_set1_ps(scale);
  for (i = 0; i + 16 <= cols; i += 16) {
    const __m512 v = quantize16(_mm512_loadu_ps(x + i), vs);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb + i), bf16x16(v));
  }
  if (i < cols) {
    const __mmask16 k = static_cast<__mmask16>((1u << (cols - i)) - 1);
    const __m512 v = quantize16(_mm512_maskz_loadu_ps(k, x + i), vs);
    _mm_mask_storeu_epi8(q + i, k, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    _mm256_mask_storeu_epi16(qb + i, k, bf16x16(v));
  }
  return scale;
}

// Set by tests (nct_bitlinear_force_generic) to run the generic row kernels on an AVX-512 CPU.
std::atomic<bool> force_generic{false};

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return yes && !force_generic.load();
}
#endif

// What the forward applies to each row of its input before quantizing it (one pass,
// no f32 tensor of the result): kNorm is RMSNorm with a gain (the sub-layer's pre-norm),
// kSwiglu is silu(gate) · up of a (gate | up) row (the FFN's hidden activation).
enum Prologue : int64_t { kPlain = 0, kNorm = 1, kSwiglu = 2 };

inline float sigmoid1(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// h = x · r · gain with r = 1 / sqrt(mean(x²) + eps); returns r.
inline float norm_row_generic(const float* x, const float* gain, float eps, float* h, int64_t n) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
  for (int64_t i = 0; i < n; ++i) h[i] = x[i] * r * gain[i];
  return r;
}

// h = silu(x[:n]) · x[n:2n].
inline void swiglu_row_generic(const float* x, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = x[i] * sigmoid1(x[i]) * x[n + i];
}

// Norm backward of one row: dx = r·u − x·r³·mean(u·x) with u = dh·gain; acc += dh·x·r (the gain's gradient).
inline void norm_back_row_generic(const float* x, const float* gain, float r, const c10::BFloat16* dh, float* dx,
                                  float* acc, int64_t n) {
  double dot = 0.0;
  for (int64_t i = 0; i < n; ++i) dot += static_cast<double>(static_cast<float>(dh[i]) * gain[i]) * x[i];
  const float c = r * r * r * static_cast<float>(dot / static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float d = static_cast<float>(dh[i]);
    dx[i] = r * d * gain[i] - x[i] * c;
    acc[i] += d * x[i] * r;
  }
}

// SwiGLU backward of n columns: d gate = dh·up·σ(g)·(1 + g·(1 − σ(g))), d up = dh·silu(g).
inline void swiglu_back_generic(const float* gate, const float* up, const c10::BFloat16* dh, float* dgate,
                                float* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], u = up[i], d = static_cast<float>(dh[i]), s = sigmoid1(g);
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    dup[i] = d * g * s;
  }
}

#if defined(__x86_64__)
NCT_AVX512 inline __m512 sigmoid16(__m512 v) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}

NCT_AVX512 float norm_row_avx512(const float* x, const float* gain, float eps, float* h, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  double ss = _mm512_reduce_add_ps(acc);
  for (int64_t j = i; j < n; ++j) ss += static_cast<double>(x[j]) * x[j];
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
  const __m512 vr = _mm512_set1_ps(r);
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vr);
    _mm512_storeu_ps(h + i, _mm512_mul_ps(v, _mm512_loadu_ps(gain + i)));
  }
  for (; i < n; ++i) h[i] = x[i] * r * gain[i];
  return r;
}

NCT_AVX512 void swiglu_row_avx512(const float* x, float* h, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), _mm512_loadu_ps(x + n + i)));
  }
  for (; i < n; ++i) h[i] = x[i] * sigmoid1(x[i]) * x[n + i];
}

NCT_AVX512 void norm_back_row_avx512(const float* x, const float* gain, float r, const c10::BFloat16* dh, float* dx,
                                     float* acc, int64_t n) {
  __m512 vdot = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 u = _mm512_mul_ps(load_bf16(dh + i), _mm512_loadu_ps(gain + i));
    vdot = _mm512_fmadd_ps(u, _mm512_loadu_ps(x + i), vdot);
  }
  double dot = _mm512_reduce_add_ps(vdot);
  for (int64_t j = i; j < n; ++j) dot += static_cast<double>(static_cast<float>(dh[j]) * gain[j]) * x[j];
  const float c = r * r * r * static_cast<float>(dot / static_cast<double>(n));
  const __m512 vr = _mm512_set1_ps(r), vc = _mm512_set1_ps(c);
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 d = load_bf16(dh + i), v = _mm512_loadu_ps(x + i);
    const __m512 u = _mm512_mul_ps(d, _mm512_loadu_ps(gain + i));
    _mm512_storeu_ps(dx + i, _mm512_fnmadd_ps(v, vc, _mm512_mul_ps(vr, u)));
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(_mm512_mul_ps(d, v), vr, _mm512_loadu_ps(acc + i)));
  }
  for (; i < n; ++i) {
    const float d = static_cast<float>(dh[i]);
    dx[i] = r * d * gain[i] - x[i] * c;
    acc[i] += d * x[i] * r;
  }
}

NCT_AVX512 void swiglu_back_row_avx512(const float* x, const c10::BFloat16* dh, float* dx, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(x + i), u = _mm512_loadu_ps(x + n + i), d = load_bf16(dh + i);
    const __m512 s = sigmoid16(g);
    const __m512 ds = _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one);  // 1 + g·(1 − σ)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_mul_ps(d, u), _mm512_mul_ps(s, ds)));
    _mm512_storeu_ps(dx + n + i, _mm512_mul_ps(d, _mm512_mul_ps(g, s)));
  }
  swiglu_back_generic(x + i, x + n + i, dh + i, dx + i, dx + n + i, n - i);
}

NCT_AVX512 void bf16_row_to_f32_avx512(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_bf16(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
#endif

// x: (rows, xcols) contiguous f32 -> the prologue's rows quantized: q as int8 and bf16 (rows, cols),
// scale f32 (rows, 1), and for kNorm the per-row r (rows).
std::tuple<Tensor, Tensor, Tensor, Tensor> quantize_rows(const Tensor& x, int64_t mode, const Tensor& gain,
                                                          double eps, int64_t cols) {
  const int64_t rows = x.size(0), xcols = x.size(1);
  Tensor q = at::empty({rows, cols}, x.options().dtype(at::kChar));
  Tensor qb = at::empty({rows, cols}, x.options().dtype(at::kBFloat16));
  Tensor scale = at::empty({rows, 1}, x.options());
  Tensor rnorm = at::empty({mode == kNorm ? rows : 0}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = mode == kNorm ? gain.data_ptr<float>() : nullptr;
  int8_t* qp = q.data_ptr<int8_t>();
  c10::BFloat16* qbp = qb.data_ptr<c10::BFloat16>();
  float* sp = scale.data_ptr<float>();
  float* rp = mode == kNorm ? rnorm.data_ptr<float>() : nullptr;
  const float eps32 = static_cast<float>(eps);
#if defined(__x86_64__)
  const bool wide = has_avx512();
#endif
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(mode == kPlain ? 0 : cols);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * xcols;
      const float* h = row;
#if defined(__x86_64__)
      if (wide) {
        if (mode == kNorm) rp[r] = norm_row_avx512(row, gp, eps32, buf.data(), cols);
        if (mode == kSwiglu) swiglu_row_avx512(row, buf.data(), cols);
        if (mode != kPlain) h = buf.data();
        sp[r] = quantize_row_avx512(h, qp + r * cols, qbp + r * cols, cols);
        continue;
      }
#endif
      if (mode == kNorm) rp[r] = norm_row_generic(row, gp, eps32, buf.data(), cols);
      if (mode == kSwiglu) swiglu_row_generic(row, buf.data(), cols);
      if (mode != kPlain) h = buf.data();
      sp[r] = quantize_row_generic(h, qp + r * cols, qbp + r * cols, cols);
    }
  });
  return {q, qb, scale, rnorm};
}

// dh: (rows, cols) bf16 -> the gradient of the prologue's input (rows, xcols) f32, and for kNorm the
// gain's gradient (cols), summed over rows in a fixed order of chunks (deterministic).
std::pair<Tensor, Tensor> prologue_backward(const Tensor& dh, int64_t mode, const Tensor& x, const Tensor& gain,
                                            const Tensor& rnorm) {
  const int64_t rows = dh.size(0), cols = dh.size(1);
  const int64_t xcols = mode == kSwiglu ? 2 * cols : cols;
  Tensor dx = at::empty({rows, xcols}, dh.options().dtype(at::kFloat));
  const int64_t chunks = mode == kNorm ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows)) : 1;
  Tensor partial = at::zeros({mode == kNorm ? chunks : 0, cols}, dx.options());
  const c10::BFloat16* dp = dh.data_ptr<c10::BFloat16>();
  float* op = dx.data_ptr<float>();
  const float* xp = mode == kPlain ? nullptr : x.data_ptr<float>();
  const float* gp = mode == kNorm ? gain.data_ptr<float>() : nullptr;
  const float* rp = mode == kNorm ? rnorm.data_ptr<float>() : nullptr;
  float* pp = mode == kNorm ? partial.data_ptr<float>() : nullptr;
#if defined(__x86_64__)
  const bool wide = has_avx512();
#endif
  auto run = [&](int64_t begin, int64_t end, float* acc) {
    for (int64_t r = begin; r < end; ++r) {
      const c10::BFloat16* d = dp + r * cols;
      float* o = op + r * xcols;
#if defined(__x86_64__)
      if (wide) {
        if (mode == kPlain) bf16_row_to_f32_avx512(d, o, cols);
        if (mode == kNorm) norm_back_row_avx512(xp + r * xcols, gp, rp[r], d, o, acc, cols);
        if (mode == kSwiglu) swiglu_back_row_avx512(xp + r * xcols, d, o, cols);
        continue;
      }
#endif
      if (mode == kPlain) {
        for (int64_t i = 0; i < cols; ++i) o[i] = static_cast<float>(d[i]);
      }
      if (mode == kNorm) norm_back_row_generic(xp + r * xcols, gp, rp[r], d, o, acc, cols);
      if (mode == kSwiglu) {
        const float* row = xp + r * xcols;
        swiglu_back_generic(row, row + cols, d, o, o + cols, cols);
      }
    }
  };
  if (mode == kNorm) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) run(c * rows / chunks, (c + 1) * rows / chunks, pp + c * cols);
    });
    return {dx, partial.sum(0)};
  }
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) { run(begin, end, nullptr); });
  return {dx, Tensor()};
}

// g: (rows, n) contiguous f32 -> (bf16(g · fa[col]), bf16(g / scale_row)).
std::pair<Tensor, Tensor> backward_inputs(const Tensor& g, const Tensor& fa, const Tensor& scale) {
  const int64_t rows = g.size(0), n = g.size(1);
  Tensor a = at::empty({rows, n}, g.options().dtype(at::kBFloat16));
  Tensor b = at::empty({rows, n}, g.options().dtype(at::kBFloat16));
  const float* gp = g.data_ptr<float>();
  const float* fp = fa.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  c10::BFloat16* ap = a.data_ptr<c10::BFloat16>();
  c10::BFloat16* bp = b.data_ptr<c10::BFloat16>();
#if defined(__x86_64__)
  const bool wide = has_avx512();
#endif
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float fb = 1.0f / sp[r];
#if defined(__x86_64__)
      if (wide) {
        scale_row_avx512(gp + r * n, fp, fb, ap + r * n, bp + r * n, n);
        continue;
      }
#endif
      scale_row_generic(gp + r * n, fp, fb, ap + r * n, bp + r * n, n);
    }
  });
  return {a, b};
}

float logsumexp_row(const c10::BFloat16* x, int64_t n) {
#if defined(__x86_64__)
  if (has_avx512() && n % 16 == 0) return logsumexp_row_avx512(x, n);
#endif
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, static_cast<float>(x[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<float>(x[i]) - m);
  return m + static_cast<float>(std::log(sum));
}

void softmax_grad_row(const c10::BFloat16* x, float lse, float g, c10::BFloat16* grad, int64_t n) {
#if defined(__x86_64__)
  if (has_avx512() && n % 16 == 0) return softmax_grad_row_avx512(x, lse, g, grad, n);
#endif
  for (int64_t i = 0; i < n; ++i) grad[i] = c10::BFloat16(std::exp(static_cast<float>(x[i]) - lse) * g);
}

// Mean cross-entropy of bf16 logits (rows, vocab) against int64 targets, the
// log-softmax taken in f32; the backward writes (softmax − onehot)·g/rows in
// bf16 in one pass (no f32 copy of the logits, no log-prob tensor).
struct CrossEntropyFn : public torch::autograd::Function<CrossEntropyFn> {
  static Tensor forward(AutogradContext* ctx, Tensor logits, Tensor targets) {
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    Tensor lse = at::empty({rows}, logits.options().dtype(at::kFloat));
    Tensor losses = at::empty({rows}, logits.options().dtype(at::kDouble));
    const c10::BFloat16* xp = logits.data_ptr<c10::BFloat16>();
    const int64_t* tp = targets.data_ptr<int64_t>();
    float* lp = lse.data_ptr<float>();
    double* op = losses.data_ptr<double>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        lp[r] = logsumexp_row(xp + r * vocab, vocab);
        op[r] = static_cast<double>(lp[r]) - static_cast<double>(static_cast<float>(xp[r * vocab + tp[r]]));
      }
    });
    ctx->save_for_backward({logits, targets, lse});
    return (losses.sum() / static_cast<double>(rows)).to(at::kFloat);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2];
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    const float g = grads[0].item<float>() / static_cast<float>(rows);
    Tensor grad = at::empty_like(logits);
    const c10::BFloat16* xp = logits.data_ptr<c10::BFloat16>();
    const int64_t* tp = targets.data_ptr<int64_t>();
    const float* lp = lse.data_ptr<float>();
    c10::BFloat16* gp = grad.data_ptr<c10::BFloat16>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        softmax_grad_row(xp + r * vocab, lp[r], g, gp + r * vocab, vocab);
        const int64_t t = r * vocab + tp[r];
        gp[t] = c10::BFloat16(static_cast<float>(gp[t]) - g);
      }
    });
    return {grad, Tensor()};
  }
};

const c10::OperatorHandle& qlinear_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  return op;
}

// q · tritsᵀ · diag(scales) on oneDNN's int8 GEMM (exact integer sums, f32 output).
Tensor int8_gemm(const Tensor& q, const Tensor& packed, const Tensor& scales, const Tensor& zeros) {
  torch::jit::Stack stack;
  stack.reserve(13);
  stack.emplace_back(q);
  stack.emplace_back(1.0);
  stack.emplace_back(static_cast<int64_t>(0));
  stack.emplace_back(packed);
  stack.emplace_back(scales);
  stack.emplace_back(zeros);
  stack.emplace_back(c10::IValue());
  stack.emplace_back(1.0);
  stack.emplace_back(static_cast<int64_t>(0));
  stack.emplace_back(at::kFloat);
  stack.emplace_back(std::string("none"));
  c10::List<std::optional<at::Scalar>> args;
  args.push_back(std::nullopt);
  stack.emplace_back(args);
  stack.emplace_back(std::string(""));
  qlinear_op().callBoxed(&stack);
  return stack.at(0).toTensor();
}

// y = prologue(x) quantized per token, times the trits, times s_w[row] / scale[token]. `wq` is the
// ternarized weight (possibly several projections stacked by rows, each with its own scale; a leaf or a
// concatenation of leaves, which collects the STE gradient); the forward reads only its packed forms.
// `gain` is the RMSNorm gain for kNorm (an empty tensor otherwise).
struct BitLinearFn : public torch::autograd::Function<BitLinearFn> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor gain, Tensor wq, Tensor packed, Tensor trits,
                        Tensor scales, Tensor zeros, int64_t mode, double eps) {
    const int64_t cols = trits.size(1), out = trits.size(0), xcols = x.size(-1);
    auto out_shape = x.sizes().vec();
    out_shape.back() = out;
    Tensor x2 = x.reshape({-1, xcols}).contiguous();
    auto [q, qb, scale, rnorm] = quantize_rows(x2, mode, gain, eps, cols);
    // oneDNN applies the per-row weight scales s_w; the per-token 1 / scale follows.
    Tensor y = int8_gemm(q, packed, scales, zeros);
    y.mul_(at::reciprocal(scale));
    const Tensor none = at::empty({0}, x.options());
    ctx->save_for_backward({qb, scale, trits, scales, mode == kPlain ? none : x2, mode == kNorm ? gain : none,
                            rnorm});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return y.view(out_shape);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &qb = saved[0], &scale = saved[1], &trits = saved[2], &scales = saved[3];
    const Tensor &x2 = saved[4], &gain = saved[5], &rnorm = saved[6];
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const auto x_shape = ctx->saved_data["x_shape"].toIntVector();
    Tensor g = grads[0].reshape({-1, trits.size(0)}).to(at::kFloat).contiguous();
    // One pass over g: g · s_w[row] for dx, g / scale (per token) for dW.
    auto [gx, gw] = backward_inputs(g, scales, scale);
    Tensor dx, dgain, dw;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      auto [d, dg] = prologue_backward(at::mm(gx, trits), mode, x2, gain, rnorm);
      dx = d.view(x_shape);
      dgain = dg;
    }
    if (ctx->needs_input_grad(2)) dw = at::mm(gw.t(), qb).to(at::kFloat);
    return {dx, dgain, dw, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// One row of the ternary pack: s = max |w|, t = clamp(round(w / s), -1, 1) as int8 and bf16; false unless
// s is finite and t·s gives every w back exactly (a NaN fails that check).
bool pack_row_generic(const float* w, int8_t* t8, c10::BFloat16* tb, float* scale, int64_t cols) {
  float m = 0.0f;
  for (int64_t i = 0; i < cols; ++i) {
    const float a = std::fabs(w[i]);
    m = a > m ? a : m;
  }
  if (!std::isfinite(m)) return false;
  const float divisor = m > 0.0f ? m : 1.0f;
  bool ok = true;
  for (int64_t i = 0; i < cols; ++i) {
    float v = std::nearbyint(w[i] / divisor);
    v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    ok &= v * m == w[i];
    t8[i] = static_cast<int8_t>(v);
    tb[i] = c10::BFloat16(v);
  }
  *scale = m;
  return ok;
}

#if defined(__x86_64__)
NCT_SIMD bool pack_row_avx512(const float* w, int8_t* t8, c10::BFloat16* tb, float* scale, int64_t cols) {
  __m512 mv = _mm512_setzero_ps();
  for (int64_t i = 0; i < cols; i += 16) mv = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(mask16(cols - i), w + i)), mv);
  const float m = _mm512_reduce_max_ps(mv);
  if (!std::isfinite(m)) return false;
  const __m512 vm = _mm512_set1_ps(m), vd = _mm512_set1_ps(m > 0.0f ? m : 1.0f);
  const __m512 lo = _mm512_set1_ps(-1.0f), hi = _mm512_set1_ps(1.0f);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < cols; i += 16) {
    const __mmask16 mk = mask16(cols - i);
    const __m512 x = _mm512_maskz_loadu_ps(mk, w + i);
    __m512 v = _mm512_roundscale_ps(_mm512_div_ps(x, vd), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    bad |= _mm512_mask_cmp_ps_mask(mk, _mm512_mul_ps(v, vm), x, _CMP_NEQ_UQ);
    _mm_mask_storeu_epi8(t8 + i, mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(tb + i), mk, bf16x16(v));
  }
  *scale = m;
  return bad == 0;
}
#endif

}  // namespace

extern "C" {

void nct_free_error(char* error) { free(error); }

// Tests: 1 runs the generic row kernels even where AVX-512 is available, 0 restores the dispatch.
void nct_bitlinear_force_generic(int on) {
#if defined(__x86_64__)
  force_generic.store(on != 0);
#else
  (void)on;
#endif
}

// Packs a ternarized weight (each row's values t·s_row, t in {-1, 0, 1}: one projection, or several
// stacked by rows) for the int8 forward. *ternary = 0 (and no outputs) when the values are not of that form.
char* nct_ternary_pack(const Tensor* wq, Tensor** packed, Tensor** trits, Tensor** scales, Tensor** zeros,
                       int* ternary) {
  try {
    *ternary = 0;
    const Tensor w = wq->detach().contiguous();
    if (w.dim() != 2 || w.scalar_type() != at::kFloat || !w.device().is_cpu() || w.numel() == 0) return nullptr;
    // One pass per row: s_row = max |w|, t = clamp(round(w / s_row), -1, 1) as int8 and bf16, and the check
    // that t·s_row gives w back exactly (otherwise the values are not ternary and nothing is packed).
    const int64_t rows = w.size(0), cols = w.size(1);
    Tensor t8 = at::empty({rows, cols}, w.options().dtype(at::kChar));
    Tensor tb = at::empty({rows, cols}, w.options().dtype(at::kBFloat16));
    Tensor s = at::empty({rows}, w.options());
    std::atomic<bool> exact{true};
    const float* wp = w.data_ptr<float>();
    int8_t* t8p = t8.data_ptr<int8_t>();
    c10::BFloat16* tbp = tb.data_ptr<c10::BFloat16>();
    float* sp = s.data_ptr<float>();
#if defined(__x86_64__)
    const bool wide = has_avx512();  // (the test switch nct_bitlinear_force_generic applies)
#endif
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end && exact.load(std::memory_order_relaxed); ++r) {
#if defined(__x86_64__)
        const bool ok = wide ? pack_row_avx512(wp + r * cols, t8p + r * cols, tbp + r * cols, sp + r, cols)
                             : pack_row_generic(wp + r * cols, t8p + r * cols, tbp + r * cols, sp + r, cols);
#else
        const bool ok = pack_row_generic(wp + r * cols, t8p + r * cols, tbp + r * cols, sp + r, cols);
#endif
        if (!ok) exact.store(false);
      }
    });
    if (!exact.load()) return nullptr;
    static const c10::OperatorHandle prepack =
        c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_prepack", "");
    torch::jit::Stack stack{t8, c10::IValue()};
    prepack.callBoxed(&stack);
    *packed = new Tensor(stack.at(0).toTensor());
    *trits = new Tensor(tb);
    *scales = new Tensor(s);
    *zeros = new Tensor(at::zeros({rows}, w.options().dtype(at::kLong)));
    *ternary = 1;
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// mode: 0 plain (x has in features), 1 RMSNorm with `gain` (in) and `eps` first, 2 SwiGLU of a
// (gate | up) input (x has 2·in features).
char* nct_bit_linear(const Tensor* x, const Tensor* gain, const Tensor* wq, const Tensor* packed,
                     const Tensor* trits, const Tensor* scales, const Tensor* zeros, int64_t mode, double eps,
                     Tensor** out) {
  try {
    const int64_t in = trits->size(1);
    const int64_t want = mode == kSwiglu ? 2 * in : in;
    if (mode < kPlain || mode > kSwiglu) return copy_error("bit_linear: unknown prologue " + std::to_string(mode));
    if (x->scalar_type() != at::kFloat || !x->device().is_cpu() || x->dim() < 1 || x->size(-1) != want) {
      return copy_error("bit_linear: expected f32 CPU input with " + std::to_string(want) + " features, got " +
                        std::string(c10::toString(x->scalar_type())) + " " + c10::str(x->sizes()) + " on " +
                        x->device().str());
    }
    if (mode == kNorm && (gain->scalar_type() != at::kFloat || !gain->device().is_cpu() || gain->dim() != 1 ||
                          gain->size(0) != in || !gain->is_contiguous() || !(eps > 0.0))) {
      return copy_error("bit_linear: RMSNorm needs a contiguous f32 CPU gain of " + std::to_string(in) +
                        " values and eps > 0, got " + std::string(c10::toString(gain->scalar_type())) + " " +
                        c10::str(gain->sizes()) + ", eps " + std::to_string(eps));
    }
    const Tensor g = mode == kNorm ? *gain : at::empty({0}, x->options());
    *out = new Tensor(BitLinearFn::apply(*x, g, *wq, *packed, *trits, *scales, *zeros, mode, eps));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// Mean cross-entropy of bf16 CPU logits (rows, vocab) and int64 targets in [0, vocab).
char* nct_cross_entropy(const Tensor* logits, const Tensor* targets, Tensor** out) {
  try {
    const Tensor& x = *logits;
    const Tensor& t = *targets;
    if (x.dim() != 2 || x.scalar_type() != at::kBFloat16 || !x.device().is_cpu() || t.dim() != 1 ||
        t.scalar_type() != at::kLong || t.size(0) != x.size(0) || x.size(0) == 0 || x.size(1) == 0) {
      return copy_error("cross_entropy: expected bf16 CPU logits (rows, vocab) and int64 targets (rows), got " +
                        std::string(c10::toString(x.scalar_type())) + " " + c10::str(x.sizes()) + " and " +
                        std::string(c10::toString(t.scalar_type())) + " " + c10::str(t.sizes()));
    }
    const Tensor tc = t.contiguous();
    const int64_t lo = tc.min().item<int64_t>(), hi = tc.max().item<int64_t>();
    if (lo < 0 || hi >= x.size(1)) {
      return copy_error("cross_entropy: targets must lie in [0, " + std::to_string(x.size(1)) + "), got [" +
                        std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    *out = new Tensor(CrossEntropyFn::apply(x.contiguous(), tc));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// beta·input + alpha·(m1 · m2) as one libtorch addmm (tch's addmm has no beta / alpha): the
// scalings and the sum happen inside the GEMM, before its result is rounded to the tensors' kind.
char* nct_addmm(const Tensor* input, const Tensor* m1, const Tensor* m2, double beta, double alpha, Tensor** out) {
  try {
    *out = new Tensor(at::addmm(*input, *m1, *m2, beta, alpha));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

}  // extern "C"
