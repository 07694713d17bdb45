// Host emulation of the CUDA execution model for tests/cuda_emulation/check_emulated.py: blocks run
// one after another, the threads of a block as std::threads (so __syncthreads is a real barrier),
// __shared__ becomes static storage (one block at a time), dynamic shared memory starts as garbage,
// shuffles go through a per-warp exchange and atomics through a mutex. Not part of any build.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <math.h>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  std::vector<double> slots;  // shuffle exchange, 8 bytes per thread
  std::vector<unsigned char> smem;
};
inline thread_local Block* cur = nullptr;
inline thread_local int my_tid = 0;
inline std::mutex atomic_mu;
inline unsigned char* dynamic_smem() {
  auto p = reinterpret_cast<std::uintptr_t>(cur->smem.data());
  return reinterpret_cast<unsigned char*>((p + 15) / 16 * 16);
}
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, F&& body) {
  const unsigned n = block.x * block.y * block.z;
  if (n % 32 != 0 || n == 0 || n > 1024) std::abort();
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b;
        b.bar = std::make_unique<std::barrier<>>(n);
        for (unsigned w = 0; w < n / 32; ++w) b.warp_bars.push_back(std::make_unique<std::barrier<>>(32));
        b.slots.resize(n);
        b.smem.assign(smem + 16, 0xAB);  // garbage, like real shared memory
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < n; ++t) {
          ts.emplace_back([&, t] {
            cur = &b;
            my_tid = t;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            blockDim = block;
            gridDim = grid;
            body();
            b.warp_bars[t / 32]->arrive_and_drop();
            b.bar->arrive_and_drop();
          });
        }
        for (auto& th : ts) th.join();
      }
}
}  // namespace emu

inline void __syncthreads() { emu::cur->bar->arrive_and_wait(); }
template <class T>
T __shfl_down_sync(unsigned, T v, int offset) {
  emu::Block* b = emu::cur;
  const int t = emu::my_tid, lane = t % 32;
  auto& bar = *b->warp_bars[t / 32];
  std::memcpy(&b->slots[t], &v, sizeof(T));
  bar.arrive_and_wait();
  T r = v;
  if (lane + offset < 32) std::memcpy(&r, &b->slots[t + offset], sizeof(T));
  bar.arrive_and_wait();
  return r;
}
template <class T>
T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> g(emu::atomic_mu);
  T old = *p;
  *p = old + v;
  return old;
}
