// Runs the CUDA kernels of csrc/ on the CPU for tests/test_cuda_emulated.py: every CUDA thread of a
// block is a std::thread, __syncthreads a std::barrier over the block, __shfl_down_sync a barrier
// over the warp; blocks run one after another (so `__shared__` can be a function-local static).
// Only what the kernels use is defined. Compile with g++ -std=c++20 -ffp-contract=off.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
inline int emu_shuffle[1024];

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
inline int __shfl_down_sync(unsigned, int v, int off) {
    const unsigned t = threadIdx.x, lane = t & 31, warp = t >> 5;
    emu_shuffle[t] = v;
    emu_warp_barriers[warp]->arrive_and_wait();
    const int r = lane + off < 32 ? emu_shuffle[t + off] : v;
    emu_warp_barriers[warp]->arrive_and_wait();
    return r;
}

template <typename F, typename... A>
void emu_launch(F f, dim3 grid, dim3 block, A... args) {
    const unsigned n = block.x * block.y * block.z;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> block_barrier((std::ptrdiff_t)n);
                emu_block_barrier = &block_barrier;
                emu_warp_barriers.clear();
                for (unsigned w = 0; w < (n + 31) / 32; ++w)
                    emu_warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, n - 32 * w)));
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; ++t) {
                    threads.emplace_back([&, t] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        f(args...);
                        block_barrier.arrive_and_drop();  // a thread that returned no longer holds up the others
                    });
                }
                for (auto& th : threads) th.join();
            }
}
