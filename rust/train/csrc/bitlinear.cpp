// BitLinear for CPU training: integer forward, bf16 backward, as one
// torch::autograd::Function (tch has no custom-autograd API, so this shim is
// compiled against the libtorch headers by rust/train/build.rs and called
// through a small C ABI from rust/train/src/cpu_bitlinear.rs).
//
// Forward: per-token int8 absmax quantization of x (the exact rule of
// quant.rs: scale = (1 / max(max|x|, eps)) * 127, q = clamp(round(x * scale),
// -128, 127)), then the exact integer product q · tritsᵀ on oneDNN's int8
// GEMM (AMX/VNNI; f32 output, exact below 2^24), times s_w / scale per token.
// This equals the fake-quant f32 forward up to float rounding.
// Backward (straight-through estimator, as quant.rs): dx = (g · s_w) · trits
// and dW = (g / scale)ᵀ · q, both bf16 matmuls with f32 accumulation (trits
// and q are exact in bf16), results in f32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr float kActivationEps = 1e-5f;  // quant.rs ACTIVATION_EPS
constexpr float kLevels = 127.0f;        // quant.rs ACTIVATION_LEVELS

char* copy_error(const std::string& msg) { return strdup(msg.c_str()); }

// One token: returns its scale, writes q.
inline float quantize_row_generic(const float* x, int8_t* q, int64_t cols) {
  float m = 0.0f;
  for (int64_t i = 0; i < cols; ++i) m = std::fmax(m, std::fabs(x[i]));
  const float scale = (1.0f / std::fmax(m, kActivationEps)) * kLevels;
  for (int64_t i = 0; i < cols; ++i) {
    float v = std::nearbyint(x[i] * scale);
    v = std::fmin(std::fmax(v, -kLevels - 1.0f), kLevels);
    q[i] = static_cast<int8_t>(v);
  }
  return scale;
}

#if defined(__x86_64__)
#define NCT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// clamp(round(v * scale), -128, 127) of 16 values, as int8.
NCT_AVX512 inline __m128i quantize16(__m512 v, __m512 scale) {
  v = _mm512_roundscale_ps(_mm512_mul_ps(v, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-kLevels - 1.0f)), _mm512_set1_ps(kLevels));
  return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
}

NCT_AVX512 float quantize_row_avx512(const float* x, int8_t* q, int64_t cols) {
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
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), quantize16(_mm512_loadu_ps(x + i), vs));
  }
  if (i < cols) {
    const __mmask16 k = static_cast<__mmask16>((1u << (cols - i)) - 1);
    _mm_mask_storeu_epi8(q + i, k, quantize16(_mm512_maskz_loadu_ps(k, x + i), vs));
  }
  return scale;
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return yes;
}
#endif

// x: (rows, cols) contiguous f32 -> (q int8 (rows, cols), scale f32 (rows, 1)).
std::pair<Tensor, Tensor> quantize_rows(const Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  Tensor q = at::empty({rows, cols}, x.options().dtype(at::kChar));
  Tensor scale = at::empty({rows, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
#if defined(__x86_64__)
  const bool wide = has_avx512();
#endif
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
#if defined(__x86_64__)
      if (wide) {
        sp[r] = quantize_row_avx512(xp + r * cols, qp + r * cols, cols);
        continue;
      }
#endif
      sp[r] = quantize_row_generic(xp + r * cols, qp + r * cols, cols);
    }
  });
  return {q, scale};
}

const c10::OperatorHandle& qlinear_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  return op;
}

// Exact f32 q · tritsᵀ on oneDNN's int8 GEMM.
Tensor int8_gemm(const Tensor& q, const Tensor& packed, const Tensor& ones, const Tensor& zeros) {
  torch::jit::Stack stack;
  stack.reserve(13);
  stack.emplace_back(q);
  stack.emplace_back(1.0);
  stack.emplace_back(static_cast<int64_t>(0));
  stack.emplace_back(packed);
  stack.emplace_back(ones);
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

struct BitLinearFn : public torch::autograd::Function<BitLinearFn> {
  // wq: the ternarized weight (a leaf that collects the STE gradient); the
  // forward reads only its packed forms.
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor wq, Tensor packed, Tensor trits, Tensor ones,
                        Tensor zeros, double w_scale) {
    const int64_t cols = x.size(-1), out = trits.size(0);
    auto out_shape = x.sizes().vec();
    out_shape.back() = out;
    Tensor x2 = x.reshape({-1, cols}).contiguous();
    auto [q, scale] = quantize_rows(x2);
    Tensor y = int8_gemm(q, packed, ones, zeros);
    y.mul_(at::reciprocal(scale).mul_(w_scale));
    ctx->save_for_backward({q, scale, trits});
    ctx->saved_data["w_scale"] = w_scale;
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return y.view(out_shape);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &scale = saved[1], &trits = saved[2];
    const double w_scale = ctx->saved_data["w_scale"].toDouble();
    const auto x_shape = ctx->saved_data["x_shape"].toIntVector();
    Tensor g = grads[0].reshape({-1, trits.size(0)});
    Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = at::mm(g.mul(w_scale).to(at::kBFloat16), trits).to(at::kFloat).view(x_shape);
    }
    if (ctx->needs_input_grad(1)) {
      Tensor gs = g.div(scale).to(at::kBFloat16);
      dw = at::mm(gs.t(), q.to(at::kBFloat16)).to(at::kFloat);
    }
    return {dx, dw, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

extern "C" {

void nct_free_error(char* error) { free(error); }

// Packs a ternarized weight (values t·s, t in {-1, 0, 1}) for the int8
// forward. *ternary = 0 (and no outputs) when the values are not of that form.
char* nct_ternary_pack(const Tensor* wq, Tensor** packed, Tensor** trits, Tensor** ones, Tensor** zeros,
                       double* scale, int* ternary) {
  try {
    *ternary = 0;
    const Tensor w = wq->detach().contiguous();
    if (w.dim() != 2 || w.scalar_type() != at::kFloat || !w.device().is_cpu()) return nullptr;
    const float s = w.abs().max().item<float>();
    Tensor t = s > 0.0f ? at::div(w, s).round_().clamp_(-1.0, 1.0) : at::zeros_like(w);
    if (!std::isfinite(s) || !at::equal(t.mul(s), w)) return nullptr;
    static const c10::OperatorHandle prepack =
        c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_prepack", "");
    torch::jit::Stack stack{t.to(at::kChar), c10::IValue()};
    prepack.callBoxed(&stack);
    const int64_t rows = w.size(0);
    *packed = new Tensor(stack.at(0).toTensor());
    *trits = new Tensor(t.to(at::kBFloat16));
    *ones = new Tensor(at::ones({rows}, w.options()));
    *zeros = new Tensor(at::zeros({rows}, w.options().dtype(at::kLong)));
    *scale = s;
    *ternary = 1;
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

char* nct_bit_linear(const Tensor* x, const Tensor* wq, const Tensor* packed, const Tensor* trits,
                     const Tensor* ones, const Tensor* zeros, double scale, Tensor** out) {
  try {
    if (x->scalar_type() != at::kFloat || !x->device().is_cpu() || x->size(-1) != trits->size(1)) {
      return copy_error("bit_linear: expected f32 CPU input with " + std::to_string(trits->size(1)) +
                        " features, got " + std::string(c10::toString(x->scalar_type())) + " " +
                        c10::str(x->sizes()) + " on " + x->device().str());
    }
    *out = new Tensor(BitLinearFn::apply(*x, *wq, *packed, *trits, *ones, *zeros, scale));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

}  // extern "C"
