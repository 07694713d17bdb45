// class_distance_maps on CUDA (docs/ops.md), forward and backward.
//
// Forward, three passes:
//  1. psq[b, k] = |protos[b, k]|²                       (prototype_sumsq, also in the backward)
//  2. dots[b, k, p] = feat[b, :, p] · protos[b, k, :] and fsq[b, p] = |feat[b, :, p]|², a small
//     GEMM per image tiled over 64 pixels × 32 classes, channels streamed through shared memory
//  3. per pixel over k: cos with the eps rule, intra = cos to its own class (1 when ignored),
//     inter = max over present classes k != y (ties: lowest k; a NaN counts as the largest), its
//     class saved for the backward.
//
// Backward. With cos = f·c / (|f||c|), a pixel's gradient flows only
// to its own class y (intra, valid pixels) and to the inter arg-max class j saved by the forward,
// and only where |f||c| >= eps. Per pixel, with g the incoming gradient of that term,
//   a = g / (|f||c|),  gc = g · cos,
//   grad_feat[:, p]   = a_y c_y + a_j c_j - f_p (gc_y + gc_j) / |f_p|²
//   grad_protos[k, :] = Σ_p a_k(p) f_p - c_k Σ_p gc_k(p) / |c_k|²      (|x|² = 0 read as 1)
// Pass 1 (one thread per pixel) computes the two dot products, writes grad_feat and stores
// (class, a, gc) pairs; pass 2 sums them per class with `class_pool` (class_pool.cuh).
#include "cuda/class_pool.cuh"

namespace frkd::cuda {
namespace {

constexpr int kDotPixels = 64, kDotClasses = 32, kDotChannels = 32;
constexpr int kDotThreads = 256;
constexpr int kClassesPerThread = kDotClasses * kDotPixels / kDotThreads;  // 8
constexpr int kThreads = 256;
constexpr int kNormWarps = 8;  // prototype rows per block of row_sumsq_kernel: one warp each

// psq[r] = Σ_c protos[r, c]² for the B·K rows of a contiguous B×K×C array of type A.
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

// The prototypes' squared norms, for the forward's cosines and the backward's gradients.
template <class A>
void prototype_sumsq(const A* protos, int64_t rows, int64_t C, A* psq, cudaStream_t stream) {
  if (rows == 0) return;
  row_sumsq_kernel<A><<<grid_x(ceil_div(rows, kNormWarps)), 32 * kNormWarps, 0, stream>>>(
      protos, rows, C, psq);
  check_launch("row_sumsq_kernel");
}

template <class T, class A>
__global__ void __launch_bounds__(kDotThreads) class_dots_kernel(const T* __restrict__ feat, int64_t C, int64_t W,
                                                                 int64_t N, int64_t sB, int64_t sC, int64_t sH,
                                                                 int64_t sW, bool channels_fastest,
                                                                 const A* __restrict__ protos, int64_t K,
                                                                 A* __restrict__ dots, A* __restrict__ fsq) {
  __shared__ A f_s[kDotChannels][kDotPixels + 1];
  __shared__ A p_s[kDotClasses][kDotChannels];
  __shared__ int64_t poff[kDotPixels];
  const int tid = threadIdx.x, px = tid % kDotPixels, k_lane = tid / kDotPixels;  // a warp shares k_lane
  const int64_t b = blockIdx.z, p0 = static_cast<int64_t>(blockIdx.x) * kDotPixels;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kDotClasses;
  if (tid < kDotPixels) poff[tid] = p0 + tid < N ? pixel_offset(p0 + tid, W, sH, sW) : 0;
  const T* fb = feat + b * sB;
  const A* pb = protos + b * K * C;
  A acc[kClassesPerThread];
#pragma unroll
  for (int j = 0; j < kClassesPerThread; ++j) acc[j] = A(0);
  A f_sq = A(0);
  for (int64_t c0 = 0; c0 < C; c0 += kDotChannels) {
    __syncthreads();  // poff written / previous chunk consumed
    for (int i = tid; i < kDotChannels * kDotPixels; i += kDotThreads) {
      // consecutive threads read consecutive addresses in either layout
      const int ci = channels_fastest ? i % kDotChannels : i / kDotPixels;
      const int pi = channels_fastest ? i / kDotChannels : i % kDotPixels;
      const int64_t c = c0 + ci;
      f_s[ci][pi] = c < C && p0 + pi < N ? load_as<A>(fb, c * sC + poff[pi]) : A(0);
    }
    for (int i = tid; i < kDotClasses * kDotChannels; i += kDotThreads) {
      const int ki = i / kDotChannels, ci = i % kDotChannels;
      const int64_t k = k0 + ki, c = c0 + ci;
      p_s[ki][ci] = k < K && c < C ? pb[k * C + c] : A(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int ci = 0; ci < kDotChannels; ++ci) {
      const A f = f_s[ci][px];
      f_sq += f * f;
#pragma unroll
      for (int j = 0; j < kClassesPerThread; ++j) acc[j] += p_s[k_lane * kClassesPerThread + j][ci] * f;
    }
  }
  const int64_t p = p0 + px;
  if (p >= N) return;
#pragma unroll
  for (int j = 0; j < kClassesPerThread; ++j) {
    const int64_t k = k0 + k_lane * kClassesPerThread + j;
    if (k < K) dots[(b * K + k) * N + p] = acc[j];
  }
  if (blockIdx.y == 0 && k_lane == 0) fsq[b * N + p] = f_sq;
}

template <class A>
__global__ void __launch_bounds__(kThreads) class_maps_kernel(const A* __restrict__ dots, const A* __restrict__ fsq,
                                                              const A* __restrict__ psq,
                                                              const A* __restrict__ counts, Labels labels,
                                                              int64_t B, int64_t W, int64_t N, int64_t K,
                                                              int64_t ignore_index, A eps, A* __restrict__ intra,
                                                              A* __restrict__ inter, int32_t* __restrict__ inter_class) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= B * N) return;
  const int64_t b = q / N, p = q - b * N;
  const int y = class_of(labels, b * labels.sB + pixel_offset(p, W, labels.sH, labels.sW), K, ignore_index);
  const A f_norm = sqrt_acc(fsq[q]);
  A own = A(1), best = A(0);
  int best_k = -1;
  for (int64_t k = 0; k < K; ++k) {
    const bool mine = k == y;
    if (!mine && (y < 0 || !(counts[b * K + k] > A(0)))) continue;  // not a candidate for inter
    bool ok;
    const A cos = cosine(dots[(b * K + k) * N + p], sqrt_acc(psq[b * K + k]), f_norm, eps, ok);
    if (mine) {
      own = cos;
    } else if (best_k < 0 || cos > best || (cos != cos && best == best)) {  // ties: lowest k; NaN wins
      best = cos;
      best_k = static_cast<int>(k);
    }
  }
  intra[q] = own;
  inter[q] = best_k >= 0 ? best : A(-1);
  inter_class[q] = best_k;
}

struct MapsWorkspace {
  void* dots;
  void* fsq;
  void* psq;
  size_t bytes;
};

template <class A>
MapsWorkspace maps_workspace(const Map4& feat, int64_t K, void* base) {
  Carver carve(base);
  MapsWorkspace ws{};
  ws.dots = carve.take<A>(feat.B * K * feat.H * feat.W);
  ws.fsq = carve.take<A>(feat.B * feat.H * feat.W);
  ws.psq = carve.take<A>(feat.B * K);
  ws.bytes = carve.bytes();
  return ws;
}

}  // namespace

size_t class_distance_maps_workspace(const Map4& feat, int64_t K, bool acc_double) {
  const bool wide = acc_double || feat.dtype == Float::F64;
  return wide ? maps_workspace<double>(feat, K, nullptr).bytes : maps_workspace<float>(feat, K, nullptr).bytes;
}

void class_distance_maps(const Map4& feat, const Labels& labels, const void* protos, const void* counts, int64_t K,
                         bool acc_double, int64_t ignore_index, double eps, void* intra, void* inter,
                         int32_t* inter_class, void* workspace, cudaStream_t stream) {
  const int64_t N = feat.H * feat.W;
  if (feat.B * N == 0) return;  // the maps are empty
  dispatch_float_acc(feat.dtype, acc_double, [&](auto tag, auto acc) {
    using T = typename decltype(tag)::type;
    using A = typename decltype(acc)::type;
    const MapsWorkspace ws = maps_workspace<A>(feat, K, workspace);
    A* dots = static_cast<A*>(ws.dots);
    A* fsq = static_cast<A*>(ws.fsq);
    A* psq = static_cast<A*>(ws.psq);
    prototype_sumsq(static_cast<const A*>(protos), feat.B * K, feat.C, psq, stream);
    const dim3 grid(grid_x(ceil_div(N, kDotPixels)), grid_yz(ceil_div(K, kDotClasses), "class tiles"),
                    grid_yz(feat.B, "batch size"));
    class_dots_kernel<T, A><<<grid, kDotThreads, 0, stream>>>(
        static_cast<const T*>(feat.data), feat.C, feat.W, N, feat.sB, feat.sC, feat.sH, feat.sW, feat.sC < feat.sW,
        static_cast<const A*>(protos), K, dots, fsq);
    check_launch("class_dots_kernel");
    class_maps_kernel<A><<<grid_x(ceil_div(feat.B * N, kThreads)), kThreads, 0, stream>>>(
        dots, fsq, psq, static_cast<const A*>(counts), labels, feat.B, feat.W, N, K, ignore_index,
        static_cast<A>(eps), static_cast<A*>(intra), static_cast<A*>(inter), inter_class);
    check_launch("class_maps_kernel");
  });
}

}  // namespace frkd::cuda

// --- backward ---------------------------------------------------------------------------------

namespace frkd::cuda {
namespace {

template <class A>
struct PixelPairsOut {
  int32_t* cls1;  // own class (-1: ignored pixel)
  int32_t* cls2;  // inter class (-1: none)
  A* w1;
  A* w2;
  A* s1;
  A* s2;
};

template <class A>
__device__ __forceinline__ void term(A dot, A sq_norm, A f_norm, A eps, A g, A& a, A& gc) {
  const A den = sqrt_acc(sq_norm) * f_norm;
  if (den >= eps) {
    a = g / den;
    gc = g * (dot / den);
  }
}

template <class T, class A>
__global__ void __launch_bounds__(kThreads) pixel_grads_kernel(const A* __restrict__ grad_intra,
                                                               const A* __restrict__ grad_inter, Map4 feat,
                                                               Labels labels, const A* __restrict__ protos,
                                                               const A* __restrict__ psq,
                                                               const int32_t* __restrict__ inter_class, int64_t K,
                                                               int64_t ignore_index, A eps, Map4 grad_feat,
                                                               PixelPairsOut<A> pairs) {
  const int64_t N = feat.H * feat.W, C = feat.C;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= feat.B * N) return;
  const int64_t b = q / N, p = q - b * N;
  const int y = class_of(labels, b * labels.sB + pixel_offset(p, feat.W, labels.sH, labels.sW), K, ignore_index);
  const int j = inter_class[q] >= 0 && inter_class[q] < K ? inter_class[q] : -1;
  const T* f = static_cast<const T*>(feat.data) + b * feat.sB + pixel_offset(p, feat.W, feat.sH, feat.sW);
  const A* c_y = y >= 0 ? protos + (b * K + y) * C : nullptr;
  const A* c_j = j >= 0 ? protos + (b * K + j) * C : nullptr;

  A dot_y = A(0), dot_j = A(0), f_sq = A(0);
  for (int64_t c = 0; c < C; ++c) {
    const A v = load_as<A>(f, c * feat.sC);
    f_sq += v * v;
    if (c_y) dot_y += c_y[c] * v;
    if (c_j) dot_j += c_j[c] * v;
  }
  const A f_norm = sqrt_acc(f_sq);
  A a_y = A(0), gc_y = A(0), a_j = A(0), gc_j = A(0);
  if (c_y) term(dot_y, psq[b * K + y], f_norm, eps, grad_intra[q], a_y, gc_y);
  if (c_j) term(dot_j, psq[b * K + j], f_norm, eps, grad_inter[q], a_j, gc_j);

  if (grad_feat.data) {
    const A f_coef = (gc_y + gc_j) / (f_sq > A(0) ? f_sq : A(1));
    T* out = static_cast<T*>(grad_feat.data) + b * grad_feat.sB + pixel_offset(p, grad_feat.W, grad_feat.sH,
                                                                                grad_feat.sW);
    for (int64_t c = 0; c < C; ++c) {
      A g = -load_as<A>(f, c * feat.sC) * f_coef;
      if (c_y) g += a_y * c_y[c];
      if (c_j) g += a_j * c_j[c];
      out[c * grad_feat.sC] = narrow<T>(g);
    }
  }
  if (pairs.cls1) {
    pairs.cls1[q] = y;
    pairs.cls2[q] = j;
    pairs.w1[q] = a_y;
    pairs.w2[q] = a_j;
    pairs.s1[q] = gc_y;
    pairs.s2[q] = gc_j;
  }
}

// grad_protos[b, k, c] = Σ a f - protos[b, k, c] · (Σ gc / |c_k|²), from the class sums.
template <class A>
__global__ void __launch_bounds__(kThreads) protos_grad_kernel(const A* __restrict__ buf, ClassPoolPlan plan,
                                                               const A* __restrict__ protos,
                                                               const A* __restrict__ psq, A* __restrict__ out) {
  const int64_t C = plan.C, total = plan.B * plan.K * C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t bk = i / C, c = i - bk * C, b = bk / plan.K, k = bk - b * plan.K;
    const A c_sq = psq[bk] > A(0) ? psq[bk] : A(1);
    out[i] = pooled(buf, plan, b, k, c) - protos[i] * (pooled(buf, plan, b, k, C) / c_sq);
  }
}

template <class A>
struct BackwardWorkspace {
  ClassPoolPlan plan;
  A* psq;
  PixelPairsOut<A> pairs;
  A* buf;
  size_t bytes;
};

template <class A>
BackwardWorkspace<A> backward_workspace(const Map4& feat, int64_t K, bool need_protos, bool deterministic,
                                        void* base) {
  Carver carve(base);
  BackwardWorkspace<A> ws{};
  const int64_t pixels = feat.B * feat.H * feat.W;
  ws.psq = carve.take<A>(feat.B * K);
  if (need_protos) {
    ws.plan = plan_class_pool(feat.B, K, feat.C, feat.H * feat.W, sizeof(A), deterministic);
    ws.pairs = {carve.take<int32_t>(pixels), carve.take<int32_t>(pixels), carve.take<A>(pixels),
                carve.take<A>(pixels),       carve.take<A>(pixels),       carve.take<A>(pixels)};
    ws.buf = carve.take<A>(ws.plan.buffer_elems);
  }
  ws.bytes = carve.bytes();
  return ws;
}

}  // namespace

size_t class_distance_maps_backward_workspace(const Map4& feat, int64_t K, bool acc_double, bool need_protos,
                                              bool deterministic) {
  const bool wide = acc_double || feat.dtype == Float::F64;
  return wide ? backward_workspace<double>(feat, K, need_protos, deterministic, nullptr).bytes
              : backward_workspace<float>(feat, K, need_protos, deterministic, nullptr).bytes;
}

void class_distance_maps_backward(const void* grad_intra, const void* grad_inter, const Map4& feat,
                                  const Labels& labels, const void* protos, const int32_t* inter_class, int64_t K,
                                  bool acc_double, int64_t ignore_index, double eps, bool deterministic,
                                  const Map4& grad_feat, void* grad_protos, void* workspace, cudaStream_t stream) {
  const bool need_protos = grad_protos != nullptr;
  if (!grad_feat.data && !need_protos) return;
  dispatch_float_acc(feat.dtype, acc_double, [&](auto tag, auto acc) {
    using T = typename decltype(tag)::type;
    using A = typename decltype(acc)::type;
    const BackwardWorkspace<A> ws = backward_workspace<A>(feat, K, need_protos, deterministic, workspace);
    const A* c = static_cast<const A*>(protos);
    prototype_sumsq(c, feat.B * K, feat.C, ws.psq, stream);
    const int64_t pixels = feat.B * feat.H * feat.W;
    if (pixels > 0) {
      pixel_grads_kernel<T, A><<<grid_x(ceil_div(pixels, kThreads)), kThreads, 0, stream>>>(
          static_cast<const A*>(grad_intra), static_cast<const A*>(grad_inter), feat, labels, c, ws.psq,
          inter_class, K, ignore_index, static_cast<A>(eps), grad_feat, ws.pairs);
      check_launch("pixel_grads_kernel");
    }
    if (!need_protos) return;
    PixelClasses<A> px{ws.pairs.cls1, ws.pairs.cls2, ws.pairs.w1, ws.pairs.w2, ws.pairs.s1, ws.pairs.s2};
    class_pool<T, A>(feat, px, ws.plan, ws.buf, stream);
    const int64_t total = feat.B * K * feat.C;
    if (total == 0) return;
    const int64_t blocks = ceil_div(total, kThreads) < 65536 ? ceil_div(total, kThreads) : 65536;
    protos_grad_kernel<A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(ws.buf, ws.plan, c, ws.psq,
                                                                                   static_cast<A*>(grad_protos));
    check_launch("protos_grad_kernel");
  });
}

}  // namespace frkd::cuda
