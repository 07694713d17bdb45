// Squared norms of the prototypes, shared by class_distance_maps' forward and backward:
// psq[r] = Σ_c protos[r, c]² for the B·K rows of a contiguous B×K×C array of type A.
#pragma once

#include "cuda/device.cuh"

namespace frkd::cuda {

constexpr int kNormWarps = 8;  // rows per block: one warp each

template <class A>
__global__ void __launch_bounds__(32 * kNormWarps) row_sumsq_kernel(const A* __restrict__ protos, int64_t rows,
                                                                    int64_t C, A* __restrict__ psq) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  A sum = A(0);
  for (int64_t c = lane; c < C; c += 32) {
    const A v = protos[row * C + c];
    sum += v * v;
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) psq[row] = sum;
}

template <class A>
void prototype_sumsq(const A* protos, int64_t rows, int64_t C, A* psq, cudaStream_t stream) {
  if (rows == 0) return;
  row_sumsq_kernel<A><<<grid_x(ceil_div(rows, kNormWarps)), 32 * kNormWarps, 0, stream>>>(
      protos, rows, C, psq);
  check_launch("row_sumsq_kernel");
}

}  // namespace frkd::cuda
