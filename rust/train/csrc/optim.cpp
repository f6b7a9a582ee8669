// The optimizers' element-wise work for f32 CPU parameters (called over a C ABI from rust/train/src/optim.rs;
// compiled by build.rs). Muon, around Newton–Schulz, as two passes per matrix instead of a dozen ATen ones:
//
//   prepare: buf ← β·buf + g;  x = g + β·buf (Nesterov);  out = x / (‖x‖_F + 1e-7) in the iteration's kind
//            (bf16 or f32), transposed for tall matrices (the iteration runs on the wide orientation)
//   update:  p ← p − lr·(scale·o + wd·p), o the iteration's result (read back through the same transpose)
//
// Lion, one pass instead of seven: c = β1·m + (1 − β1)·g;  p ← p − lr·(sign(c) + wd·p);  m ← β2·m + (1 − β2)·g
// (the ATen update's operations in its order; equal to float rounding).
//
// The Frobenius norm sums per block of rows in double, blocks combined in order, so the result does not
// depend on the thread count.
#include "common.h"

#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>

namespace {

using namespace nct;

constexpr int64_t kRowsPerBlock = 16;
constexpr int64_t kTile = 32;

template <typename T>
inline T from_f32(float v) {
  return static_cast<T>(v);
}

template <typename T>
void prepare(const Tensor& g, Tensor& buf, float beta, bool transpose, Tensor& out) {
  const int64_t rows = g.size(0), cols = g.size(1);
  const float* gp = g.data_ptr<float>();
  float* bp = buf.data_ptr<float>();
  T* op = out.data_ptr<T>();
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      double acc = 0.0;
      const int64_t r1 = std::min(rows, (blk + 1) * kRowsPerBlock);
      for (int64_t i = blk * kRowsPerBlock * cols; i < r1 * cols; ++i) {
        const float b = bp[i] * beta + gp[i];
        bp[i] = b;
        const float x = gp[i] + b * beta;
        acc += static_cast<double>(x) * x;
      }
      partial[blk] = acc;
    }
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  const float inv = 1.0f / (static_cast<float>(std::sqrt(sum)) + 1e-7f);
  if (!transpose) {
    at::parallel_for(0, rows, kRowsPerBlock, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin * cols; i < end * cols; ++i) op[i] = from_f32<T>((gp[i] + bp[i] * beta) * inv);
    });
    return;
  }
  // out (cols, rows) = xᵀ, by tiles so reads and writes both stay in cache lines.
  at::parallel_for(0, (cols + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tj = begin * kTile; tj < std::min(cols, end * kTile); tj += kTile) {
      for (int64_t ti = 0; ti < rows; ti += kTile) {
        for (int64_t j = tj; j < std::min(cols, tj + kTile); ++j) {
          for (int64_t i = ti; i < std::min(rows, ti + kTile); ++i) {
            const int64_t at = i * cols + j;
            op[j * rows + i] = from_f32<T>((gp[at] + bp[at] * beta) * inv);
          }
        }
      }
    }
  });
}

template <typename T>
void update(Tensor& p, const Tensor& o, float lr, float scale, float wd, bool transpose) {
  const int64_t rows = p.size(0), cols = p.size(1);
  float* pp = p.data_ptr<float>();
  const T* op = o.data_ptr<T>();
  const float step = lr * scale, decay = lr * wd;
  at::parallel_for(0, rows, kRowsPerBlock, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const float v = static_cast<float>(transpose ? op[j * rows + i] : op[i * cols + j]);
        pp[i * cols + j] -= step * v + decay * pp[i * cols + j];
      }
    }
  });
}

void lion(Tensor& p, Tensor& m, const Tensor& g, float lr, float beta1, float beta2, float wd) {
  float* pp = p.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float keep1 = static_cast<float>(1.0 - static_cast<double>(beta1));
  const float keep2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  at::parallel_for(0, p.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float c = mp[i] * beta1 + gp[i] * keep1;
      const float dir = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c);
      const float update = wd == 0.0f ? dir : dir + pp[i] * wd;
      pp[i] = pp[i] - update * lr;
      mp[i] = mp[i] * beta2 + gp[i] * keep2;
    }
  });
}

bool matrix_f32(const Tensor& t) { return cpu_f32(t) && t.dim() == 2 && t.is_contiguous(); }

// `out` must be (cols, rows) when transposed, (rows, cols) otherwise, contiguous, bf16 or f32, on the CPU.
bool fits(const Tensor& out, const Tensor& p, bool transpose) {
  const bool kind = out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat;
  return out.defined() && kind && out.device().is_cpu() && out.dim() == 2 && out.is_contiguous() &&
         out.size(0) == p.size(transpose ? 1 : 0) && out.size(1) == p.size(transpose ? 0 : 1);
}

}  // namespace

extern "C" {

// See `prepare` above: updates `buf` in place and writes the normalized Nesterov input into `out`.
char* nct_muon_prepare(const Tensor* g, const Tensor* buf, double beta, int transpose, const Tensor* out) {
  try {
    if (!matrix_f32(*g) || !matrix_f32(*buf) || !g->sizes().equals(buf->sizes()) || !fits(*out, *g, transpose)) {
      return copy_error("muon prepare: expected contiguous f32 CPU gradient and buffer of one shape and a " +
                        std::string(transpose ? "transposed " : "") + "contiguous bf16/f32 output, got " +
                        describe(*g) + ", " + describe(*buf) + ", " + describe(*out));
    }
    Tensor b = *buf, o = *out;
    if (o.scalar_type() == at::kBFloat16) {
      prepare<c10::BFloat16>(*g, b, static_cast<float>(beta), transpose != 0, o);
    } else {
      prepare<float>(*g, b, static_cast<float>(beta), transpose != 0, o);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return copy_error(e.what());
  }
}

// See `update` above: p ← p − lr·(scale·o + wd·p) in place.
char* nct_muon_update(const Tensor* p, const Tensor* o, double lr, double scale, double wd, int transpose) {
  try {
    if (!matrix_f32(*p) || !fits(*o, *p, transpose)) {
      return copy_error("muon update: expected a contiguous f32 CPU parameter and a " +
                        std::string(transpose ? "transposed " : "") + "contiguous bf16/f32 direction, got " +
                        describe(*p) + " and " + describe(*o));
    }
    Tensor param = *p;
    torch::autograd::impl::bump_version(param);  // as an in-place ATen update would
    if (o->scalar_type() == at::kBFloat16) {
      update<c10::BFloat16>(param, *o, static_cast<float>(lr), static_cast<float>(scale), static_cast<float>(wd),
                            transpose != 0);
    } else {
      update<float>(param, *o, static_cast<float>(lr), static_cast<float>(scale), static_cast<float>(wd),
                    transpose != 0);
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
