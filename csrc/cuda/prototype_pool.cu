// prototype_pool on CUDA (docs/ops.md): per-image class means of a feature map, and its backward.
// Forward: labels -> class indices (B×N int32), class sums and counts by `class_pool`
// (class_pool.cuh), then one pass dividing sums by counts (exactly 0 for absent classes).
#include "cuda/class_pool.cuh"

namespace frkd::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerThread = 32;  // backward: channels each thread writes for its pixel

// cls[b, p] = class_of(labels[b, p]) for the B×N pixels.
__global__ void __launch_bounds__(kThreads) label_classes_kernel(Labels labels, int64_t B, int64_t W, int64_t N,
                                                                 int64_t K, int64_t ignore_index, int32_t* cls) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= B * N) return;
  const int64_t b = q / N, p = q - b * N;
  cls[q] = class_of(labels, b * labels.sB + pixel_offset(p, W, labels.sH, labels.sW), K, ignore_index);
}

// protos[b, k, c] = sums / counts (0 where counts = 0); counts[b, k] = the class scalar column.
template <class A>
__global__ void __launch_bounds__(kThreads) pool_finalize_kernel(const A* __restrict__ buf, ClassPoolPlan plan,
                                                                 A* __restrict__ protos, A* __restrict__ counts) {
  const int64_t C = plan.C, total = plan.B * plan.K * (C + 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t bk = i / (C + 1), col = i - bk * (C + 1), b = bk / plan.K, k = bk - b * plan.K;
    const A count = pooled(buf, plan, b, k, C);
    if (col == C) {
      counts[bk] = count;
    } else {
      protos[bk * C + col] = count > A(0) ? pooled(buf, plan, b, k, col) / count : A(0);
    }
  }
}

// grad_feat[b, c, p] = grad_protos[b, y_p, c] / max(counts[b, y_p], 1) for valid p, else 0.
// Thread = one pixel × kChannelsPerThread channels (grid.y walks the channel chunks).
template <class T, class A>
__global__ void __launch_bounds__(kThreads) pool_backward_kernel(const A* __restrict__ grad_protos,
                                                                 const A* __restrict__ counts, Labels labels,
                                                                 int64_t K, int64_t ignore_index, Map4 g) {
  const int64_t N = g.H * g.W;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= g.B * N) return;
  const int64_t b = q / N, p = q - b * N;
  const int k = class_of(labels, b * labels.sB + pixel_offset(p, g.W, labels.sH, labels.sW), K, ignore_index);
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerThread;
  const int64_t c_end = c_begin + kChannelsPerThread < g.C ? c_begin + kChannelsPerThread : g.C;
  T* out = static_cast<T*>(g.data) + b * g.sB + pixel_offset(p, g.W, g.sH, g.sW);
  if (k < 0) {
    for (int64_t c = c_begin; c < c_end; ++c) out[c * g.sC] = narrow<T>(A(0));
    return;
  }
  const int64_t bk = b * K + k;
  const A n = counts[bk] > A(1) ? counts[bk] : A(1);
  for (int64_t c = c_begin; c < c_end; ++c) out[c * g.sC] = narrow<T>(grad_protos[bk * g.C + c] / n);
}

struct PoolWorkspace {
  ClassPoolPlan plan;
  int32_t* cls;
  void* buf;
  size_t bytes;
};

template <class A>
PoolWorkspace pool_workspace(const Map4& feat, int64_t K, bool deterministic, void* base) {
  PoolWorkspace ws{};
  ws.plan = plan_class_pool(feat.B, K, feat.C, feat.H * feat.W, sizeof(A), deterministic);
  Carver carve(base);
  ws.cls = carve.take<int32_t>(feat.B * feat.H * feat.W);
  ws.buf = carve.take<A>(ws.plan.buffer_elems);
  ws.bytes = carve.bytes();
  return ws;
}

}  // namespace

size_t prototype_pool_workspace(const Map4& feat, int64_t K, bool deterministic) {
  size_t bytes = 0;
  dispatch_float(feat.dtype, [&](auto tag) {
    using A = acc_t<typename decltype(tag)::type>;
    bytes = pool_workspace<A>(feat, K, deterministic, nullptr).bytes;
  });
  return bytes;
}

void prototype_pool(const Map4& feat, const Labels& labels, int64_t K, int64_t ignore_index, bool deterministic,
                    void* protos, void* counts, void* workspace, cudaStream_t stream) {
  if (feat.B == 0) return;  // protos and counts are empty
  dispatch_float(feat.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const PoolWorkspace ws = pool_workspace<A>(feat, K, deterministic, workspace);
    const int64_t pixels = feat.B * feat.H * feat.W;
    if (pixels > 0) {
      label_classes_kernel<<<grid_x(ceil_div(pixels, kThreads)), kThreads, 0, stream>>>(
          labels, feat.B, feat.W, feat.H * feat.W, K, ignore_index, ws.cls);
      check_launch("label_classes_kernel");
    }
    PixelClasses<A> px{ws.cls, nullptr, nullptr, nullptr, nullptr, nullptr};
    A* buf = static_cast<A*>(ws.buf);
    class_pool<T, A>(feat, px, ws.plan, buf, stream);
    const int64_t total = feat.B * K * (feat.C + 1);
    const int64_t blocks = ceil_div(total, kThreads) < 65536 ? ceil_div(total, kThreads) : 65536;
    pool_finalize_kernel<A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        buf, ws.plan, static_cast<A*>(protos), static_cast<A*>(counts));
    check_launch("pool_finalize_kernel");
  });
}

void prototype_pool_backward(const void* grad_protos, const void* counts, bool acc_double, const Labels& labels,
                             int64_t K, int64_t ignore_index, const Map4& grad_feat, cudaStream_t stream) {
  const int64_t pixels = grad_feat.B * grad_feat.H * grad_feat.W;
  if (pixels == 0 || grad_feat.C == 0) return;
  dispatch_float_acc(grad_feat.dtype, acc_double, [&](auto tag, auto acc) {
    using T = typename decltype(tag)::type;
    using A = typename decltype(acc)::type;
    const dim3 grid(grid_x(ceil_div(pixels, kThreads)),
                    grid_yz(ceil_div(grad_feat.C, kChannelsPerThread), "channel chunks"));
    pool_backward_kernel<T, A><<<grid, kThreads, 0, stream>>>(static_cast<const A*>(grad_protos),
                                                              static_cast<const A*>(counts), labels, K, ignore_index,
                                                              grad_feat);
    check_launch("pool_backward_kernel");
  });
}

}  // namespace frkd::cuda
