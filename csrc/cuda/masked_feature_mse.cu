// masked_feature_mse on CUDA (docs/ops.md): loss = Σ_{b,p} w[b,p] Σ_c (s - t)² / C, and its backward.
// Forward: each block sums w·(s - t)² over 256 pixels × 32 channels into one partial (fixed
// shuffle tree), then one block adds the partials in index order: deterministic, no atomics.
// Student and teacher dtypes may differ; A is float, or double when any input is float64.
#include "cuda/device.cuh"

namespace frkd::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerThread = 32;
constexpr int kFinalThreads = 1024;

// Calls f(Tag<S>{}, Tag<T>{}, Tag<A>{}) for the student and teacher types.
template <class F>
void dispatch_pair(Float student, Float teacher, bool acc_double, F&& f) {
  dispatch_float(student, [&](auto s) {
    dispatch_float(teacher, [&](auto t) {
      using S = typename decltype(s)::type;
      using T = typename decltype(t)::type;
      if constexpr (std::is_same_v<S, double> || std::is_same_v<T, double>) {
        f(s, t, Tag<double>{});
      } else if (acc_double) {
        f(s, t, Tag<double>{});
      } else {
        f(s, t, Tag<float>{});
      }
    });
  });
}

// Sum of v over a block of kBlock threads, valid in thread 0; the order is fixed.
template <int kBlock, class A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_sums[kBlock / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kBlock / 32 ? warp_sums[lane] : A(0);
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

struct PixelChunk {  // the pixel and channel range one thread covers
  int64_t b, p, c_begin, c_end;
  bool in;
};

__device__ __forceinline__ PixelChunk pixel_chunk(const Map4& m) {
  const int64_t N = m.H * m.W;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  PixelChunk r{};
  r.in = q < m.B * N;
  r.b = r.in ? q / N : 0;
  r.p = r.in ? q - r.b * N : 0;
  r.c_begin = static_cast<int64_t>(blockIdx.y) * kChannelsPerThread;
  r.c_end = r.c_begin + kChannelsPerThread < m.C ? r.c_begin + kChannelsPerThread : m.C;
  return r;
}

__device__ __forceinline__ int64_t offset_of(const Map4& m, const PixelChunk& r) {
  return r.b * m.sB + pixel_offset(r.p, m.W, m.sH, m.sW);
}

template <class S, class T, class A>
__global__ void __launch_bounds__(kThreads) mse_partial_kernel(Map4 student, Map4 teacher,
                                                               const A* __restrict__ weight, A* __restrict__ partials) {
  const PixelChunk r = pixel_chunk(student);
  A sum = A(0);
  if (r.in) {
    const S* s = static_cast<const S*>(student.data) + offset_of(student, r);
    const T* t = static_cast<const T*>(teacher.data) + offset_of(teacher, r);
    for (int64_t c = r.c_begin; c < r.c_end; ++c) {
      const A d = load_as<A>(s, c * student.sC) - load_as<A>(t, c * teacher.sC);
      sum += d * d;
    }
    sum *= weight[r.b * student.H * student.W + r.p];
  }
  sum = block_sum<kThreads>(sum);
  if (threadIdx.x == 0) partials[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = sum;
}

template <class A>
__global__ void __launch_bounds__(kFinalThreads) mse_final_kernel(const A* __restrict__ partials, int64_t count,
                                                                  int64_t C, A* __restrict__ loss) {
  A sum = A(0);
  for (int64_t i = threadIdx.x; i < count; i += kFinalThreads) sum += partials[i];
  sum = block_sum<kFinalThreads>(sum);
  if (threadIdx.x == 0) *loss = sum / static_cast<A>(C);  // C = 0 gives NaN, as the reference does
}

// grad_student = two_over_c · grad_loss · w · (s - t), grad_teacher = its negation.
template <class S, class T, class A>
__global__ void __launch_bounds__(kThreads) mse_backward_kernel(Map4 student, Map4 teacher,
                                                                const A* __restrict__ weight,
                                                                const A* __restrict__ grad_loss, A two_over_c,
                                                                Map4 grad_student, Map4 grad_teacher) {
  const PixelChunk r = pixel_chunk(student);
  if (!r.in) return;
  const S* s = static_cast<const S*>(student.data) + offset_of(student, r);
  const T* t = static_cast<const T*>(teacher.data) + offset_of(teacher, r);
  S* gs = grad_student.data ? static_cast<S*>(grad_student.data) + offset_of(grad_student, r) : nullptr;
  T* gt = grad_teacher.data ? static_cast<T*>(grad_teacher.data) + offset_of(grad_teacher, r) : nullptr;
  const A coef = two_over_c * grad_loss[0] * weight[r.b * student.H * student.W + r.p];
  for (int64_t c = r.c_begin; c < r.c_end; ++c) {
    const A g = coef * (load_as<A>(s, c * student.sC) - load_as<A>(t, c * teacher.sC));
    if (gs) gs[c * grad_student.sC] = narrow<S>(g);
    if (gt) gt[c * grad_teacher.sC] = narrow<T>(-g);
  }
}

dim3 pixel_grid(const Map4& m) {
  return dim3(grid_x(ceil_div(m.B * m.H * m.W, kThreads)),
              grid_yz(ceil_div(m.C, kChannelsPerThread), "channel chunks"));
}

int64_t partial_count(const Map4& m) {
  if (m.B * m.H * m.W == 0 || m.C == 0) return 0;
  const dim3 grid = pixel_grid(m);
  return static_cast<int64_t>(grid.x) * grid.y;
}

}  // namespace

size_t masked_feature_mse_workspace(const Map4& student) {
  return static_cast<size_t>(partial_count(student)) * sizeof(double);  // room for either A
}

void masked_feature_mse(const Map4& student, const Map4& teacher, const void* weight, bool acc_double, void* loss,
                        void* workspace, cudaStream_t stream) {
  dispatch_pair(student.dtype, teacher.dtype, acc_double, [&](auto st, auto tt, auto acc) {
    using S = typename decltype(st)::type;
    using T = typename decltype(tt)::type;
    using A = typename decltype(acc)::type;
    A* partials = static_cast<A*>(workspace);
    const int64_t count = partial_count(student);
    if (count > 0) {
      mse_partial_kernel<S, T, A><<<pixel_grid(student), kThreads, 0, stream>>>(
          student, teacher, static_cast<const A*>(weight), partials);
      check_launch("mse_partial_kernel");
    }
    mse_final_kernel<A><<<1, kFinalThreads, 0, stream>>>(partials, count, student.C, static_cast<A*>(loss));
    check_launch("mse_final_kernel");
  });
}

void masked_feature_mse_backward(const void* grad_loss, const Map4& student, const Map4& teacher, const void* weight,
                                 bool acc_double, const Map4& grad_student, const Map4& grad_teacher,
                                 cudaStream_t stream) {
  if (partial_count(student) == 0 || (!grad_student.data && !grad_teacher.data)) return;
  dispatch_pair(student.dtype, teacher.dtype, acc_double, [&](auto st, auto tt, auto acc) {
    using S = typename decltype(st)::type;
    using T = typename decltype(tt)::type;
    using A = typename decltype(acc)::type;
    mse_backward_kernel<S, T, A><<<pixel_grid(student), kThreads, 0, stream>>>(
        student, teacher, static_cast<const A*>(weight), static_cast<const A*>(grad_loss),
        static_cast<A>(2.0 / static_cast<double>(student.C)), grad_student, grad_teacher);
    check_launch("mse_backward_kernel");
  });
}

}  // namespace frkd::cuda
