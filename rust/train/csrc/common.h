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

}  // namespace nct
