// What the CPU training shims share (bitlinear.cpp, mhc.cpp, attention.cpp): the libtorch includes, the
// names they use, and the C ABI's error strings (strdup'd here, freed by nct_free_error from Rust).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace nct {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

inline char* copy_error(const std::string& msg) { return strdup(msg.c_str()); }

inline bool cpu_f32(const Tensor& t) { return t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu(); }

// "Float [2, 3] on cpu", for error messages.
inline std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined";
  return std::string(c10::toString(t.scalar_type())) + " " + c10::str(t.sizes()) + " on " + t.device().str();
}

#if defined(__x86_64__)
// The AVX-512 row kernels of attention.cpp, optim.cpp and the ternary pack (bitlinear.cpp), dispatched at run
// time; tests switch them off (nct_simd_force_generic) to check the generic loops on an AVX-512 CPU.
#define NCT_SIMD __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

inline std::atomic<bool> simd_off{false};

inline bool simd() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return yes && !simd_off.load(std::memory_order_relaxed);
}

NCT_SIMD inline __mmask16 mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// Round-to-nearest-even f32 -> bf16 of 16 finite values (c10::BFloat16's rule).
NCT_SIMD inline __m256i bf16x16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// The f32 values of 16 bf16 ones.
NCT_SIMD inline __m512 f32x16(__m256i b) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)); }
#else
inline bool simd() { return false; }
#endif

}  // namespace nct
