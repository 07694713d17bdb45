// Weighted class sums over the pixels of each image, the reduction behind prototype_pool's forward
// and class_distance_maps' prototype gradient:
//   sums[b, k, c] = Σ_p Σ_{t=1,2} [cls_t(b,p) = k] · w_t(b,p) · feat[b, c, p]      (c < C)
//   sums[b, k, C] = Σ_p Σ_{t=1,2} [cls_t(b,p) = k] · s_t(b,p)                      (a per-class scalar)
// cls_t are B×N int32 (-1: no class), w_t and s_t B×N arrays of type A (null: all ones); cls2 may
// be null. Rows are C+1 wide. Grid: (pixel splits, channel chunks, B); each block walks its split
// in tiles of kTile pixels, loads each tile's features through shared memory (coalesced for
// channels-first and channels-last maps) and adds them into per-block partial sums, one column
// per thread, in pixel order. Partial sums live in shared memory when K rows fit, else in the
// block's own slice of global memory. Flush: global atomics into one B×K×(C+1) buffer (fast), or,
// when deterministic (or partials are global), one slice per split that `pooled` sums in split
// order, so results never depend on scheduling.
#pragma once

#include "cuda/device.cuh"

namespace frkd::cuda {

constexpr int kTile = 32;                // pixels per tile
constexpr size_t kSmemBudget = 48 * 1024;  // default dynamic shared memory limit

struct ClassPoolPlan {
  int64_t B, K, C, N;
  int64_t splits;     // pixel ranges per image (0 when N = 0)
  int64_t split_len;  // pixels per range, a multiple of kTile
  int64_t chunks;     // channel chunks of `block` channels (at least 1: chunk 0 owns the scalars)
  int block;          // threads per block = channels per chunk
  bool smem_acc;      // partial sums in shared memory (else in the global slices)
  bool atomic;        // flush with atomics into B×K×(C+1) (else one slice per split)
  size_t smem_bytes;
  int64_t buffer_elems;  // elements of type A in the sums / slices buffer
};

template <class A>
struct PixelClasses {
  const int32_t* cls1;
  const int32_t* cls2;
  const A* w1;
  const A* w2;
  const A* s1;
  const A* s2;
};

inline size_t class_pool_smem(int block, int64_t K, size_t acc_size, bool smem_acc) {
  const size_t tile = static_cast<size_t>(kTile) * (block + 1) * acc_size;
  const size_t acc = smem_acc ? static_cast<size_t>(K) * (block + 1) * acc_size : 0;
  const size_t pixels = 4 * kTile * acc_size + kTile * sizeof(int64_t) + 2 * kTile * sizeof(int32_t);
  return tile + acc + pixels;
}

inline ClassPoolPlan plan_class_pool(int64_t B, int64_t K, int64_t C, int64_t N, size_t acc_size,
                                     bool deterministic) {
  ClassPoolPlan p{};
  p.B = B;
  p.K = K;
  p.C = C;
  p.N = N;
  int block = 128;
  while (block > 32 && block / 2 >= C) block /= 2;
  while (block > 32 && class_pool_smem(block, K, acc_size, true) > kSmemBudget) block /= 2;
  p.block = block;
  p.smem_acc = class_pool_smem(block, K, acc_size, true) <= kSmemBudget;
  p.smem_bytes = class_pool_smem(block, K, acc_size, p.smem_acc);
  p.chunks = C > 0 ? ceil_div(C, block) : 1;
  p.atomic = p.smem_acc && !deterministic;
  if (N > 0) {
    // Enough blocks to fill the device, but at least max(kTile, 4K) pixels per split so that the
    // flushed K×(C+1) partials stay small next to the features read.
    const int64_t tiles = ceil_div(N, kTile);
    const int64_t min_tiles = ceil_div(4 * K > kTile ? 4 * K : kTile, kTile);
    int64_t splits = ceil_div(8 * static_cast<int64_t>(sm_count()), B * p.chunks);
    const int64_t max_splits = ceil_div(tiles, min_tiles);
    splits = splits < 1 ? 1 : (splits > max_splits ? max_splits : splits);
    p.split_len = ceil_div(tiles, splits) * kTile;
    p.splits = ceil_div(N, p.split_len);
  }
  p.buffer_elems = B * (p.atomic ? 1 : p.splits) * K * (C + 1);
  return p;
}

template <class T, class A>
__global__ void __launch_bounds__(128) class_pool_kernel(const T* __restrict__ feat, int64_t W, int64_t sB,
                                                         int64_t sC, int64_t sH, int64_t sW, bool channels_fastest,
                                                         PixelClasses<A> px, ClassPoolPlan plan, A* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int block = blockDim.x, tid = threadIdx.x, ld_tile = block + 1;
  const int64_t K = plan.K, C = plan.C, N = plan.N;
  const int64_t b = blockIdx.z, s = blockIdx.x, c0 = static_cast<int64_t>(blockIdx.y) * block, c = c0 + tid;
  const bool has_c = c < C;
  const bool owns_scalars = blockIdx.y == 0 && tid == 0;

  int64_t* poff = reinterpret_cast<int64_t*>(smem_raw);  // kTile pixel offsets
  int32_t* cls = reinterpret_cast<int32_t*>(poff + kTile);  // cls1, cls2: 2 × kTile
  A* tile = reinterpret_cast<A*>(cls + 2 * kTile);          // kTile × (block+1)
  A* wts = tile + kTile * ld_tile;                          // w1, w2, s1, s2: 4 × kTile
  A* acc_s = wts + 4 * kTile;                               // K × (block+1) when smem_acc

  // This thread's column (and, for one thread, the scalar column) of the partial sums.
  A* slice = plan.atomic ? out : out + (b * plan.splits + s) * K * (C + 1);
  A* col = plan.smem_acc ? acc_s + tid : slice + c;
  A* scal = plan.smem_acc ? acc_s + block : slice + C;
  const int64_t ld = plan.smem_acc ? ld_tile : C + 1;
  for (int64_t k = 0; k < K; ++k) {
    if (has_c) col[k * ld] = A(0);
    if (owns_scalars) scal[k * ld] = A(0);
  }

  const T* fb = feat + b * sB;
  const int64_t p_begin = s * plan.split_len;
  const int64_t p_end = p_begin + plan.split_len < N ? p_begin + plan.split_len : N;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
    const int n = static_cast<int>(p_end - p0 < kTile ? p_end - p0 : kTile);
    __syncthreads();  // the previous tile has been consumed
    if (tid < kTile) {
      const bool in = tid < n;
      const int64_t q = b * N + p0 + tid;
      cls[tid] = in ? px.cls1[q] : -1;
      cls[kTile + tid] = in && px.cls2 ? px.cls2[q] : -1;
      wts[tid] = in && px.w1 ? px.w1[q] : A(1);
      wts[kTile + tid] = in && px.w2 ? px.w2[q] : A(1);
      wts[2 * kTile + tid] = in && px.s1 ? px.s1[q] : A(1);
      wts[3 * kTile + tid] = in && px.s2 ? px.s2[q] : A(1);
      poff[tid] = in ? pixel_offset(p0 + tid, W, sH, sW) : 0;
    }
    __syncthreads();
    if (channels_fastest) {  // each thread loads its channel: a warp reads consecutive channels
      if (has_c) {
        for (int i = 0; i < n; ++i) tile[i * ld_tile + tid] = load_as<A>(fb, c * sC + poff[i]);
      }
    } else {  // a warp reads kTile consecutive pixels of one channel
      for (int i = tid; i < kTile * block; i += block) {
        const int pi = i % kTile, ci = i / kTile;
        if (pi < n && c0 + ci < C) tile[pi * ld_tile + ci] = load_as<A>(fb, (c0 + ci) * sC + poff[pi]);
      }
    }
    __syncthreads();
    for (int i = 0; i < n; ++i) {  // every thread sees the same pixel: uniform branches
      const int k1 = cls[i], k2 = cls[kTile + i];
      const A v = has_c ? tile[i * ld_tile + tid] : A(0);
      if (k1 >= 0) {
        if (has_c) col[k1 * ld] += wts[i] * v;
        if (owns_scalars) scal[k1 * ld] += wts[2 * kTile + i];
      }
      if (k2 >= 0) {
        if (has_c) col[k2 * ld] += wts[kTile + i] * v;
        if (owns_scalars) scal[k2 * ld] += wts[3 * kTile + i];
      }
    }
  }

  if (!plan.smem_acc) return;  // the global slice already holds this block's sums
  A* dst = plan.atomic ? out + b * K * (C + 1) : slice;
  for (int64_t k = 0; k < K; ++k) {  // each thread flushes only the columns it wrote
    if (has_c) {
      const A v = col[k * ld];
      if (!plan.atomic) {
        dst[k * (C + 1) + c] = v;
      } else if (v != A(0)) {
        atomicAdd(dst + k * (C + 1) + c, v);
      }
    }
    if (owns_scalars) {
      const A v = scal[k * ld];
      if (!plan.atomic) {
        dst[k * (C + 1) + C] = v;
      } else if (v != A(0)) {
        atomicAdd(dst + k * (C + 1) + C, v);
      }
    }
  }
}

// sums[b, k, col] (col = C: the class scalar) from the buffer `class_pool` filled, summing split
// slices in order.
template <class A>
__device__ __forceinline__ A pooled(const A* __restrict__ buf, const ClassPoolPlan& plan, int64_t b, int64_t k,
                                    int64_t col) {
  const int64_t row = plan.K * (plan.C + 1), at = k * (plan.C + 1) + col;
  if (plan.atomic) return buf[b * row + at];
  A sum = A(0);
  for (int64_t s = 0; s < plan.splits; ++s) sum += buf[(b * plan.splits + s) * row + at];
  return sum;
}

// Fills `buf` (plan.buffer_elems elements of A) with the sums of `feat` (B×C×H×W, strided) by
// the classes and weights of `px`, on `stream`.
template <class T, class A>
void class_pool(const Map4& feat, const PixelClasses<A>& px, const ClassPoolPlan& plan, A* buf,
                cudaStream_t stream) {
  if (plan.atomic) {
    check_cuda(cudaMemsetAsync(buf, 0, plan.buffer_elems * sizeof(A), stream), "cudaMemsetAsync (class sums)");
  }
  if (plan.splits == 0 || plan.B == 0) return;
  const dim3 grid(grid_x(plan.splits), grid_yz(plan.chunks, "channel chunks"),
                  grid_yz(plan.B, "batch size"));
  class_pool_kernel<T, A><<<grid, plan.block, plan.smem_bytes, stream>>>(
      static_cast<const T*>(feat.data), feat.W, feat.sB, feat.sC, feat.sH, feat.sW, feat.sC < feat.sW, px, plan,
      buf);
  check_launch("class_pool_kernel");
}

}  // namespace frkd::cuda
