// teacher_entropy on CUDA (docs/ops.md): one thread per pixel walks the K logits once with an
// online softmax. With z = x / T, m the running max, s = Σ e^(z-m) and u = Σ e^(z-m) (z - m):
//   entropy = (log s - u / s) / log K, clamped to [0, 1]; 0 when K = 1,
// which never forms z·e^z, so any logit gap is stable and 0·log 0 = 0 (e^(z-m) = 0 terms are
// skipped). pred = arg-max of the raw logits (ties: lowest k; a NaN logit wins, as in torch).
#include <cmath>

#include "cuda/device.cuh"

namespace frkd::cuda {
namespace {

constexpr int kThreads = 256;

template <class T, class A>
__global__ void __launch_bounds__(kThreads) entropy_kernel(Map4 logits, A temperature, A log_k,
                                                           A* __restrict__ entropy, int64_t* __restrict__ pred) {
  const int64_t N = logits.H * logits.W, K = logits.C;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= logits.B * N) return;
  const int64_t b = q / N, p = q - b * N;
  const T* x = static_cast<const T*>(logits.data) + b * logits.sB + pixel_offset(p, logits.W, logits.sH, logits.sW);
  A best = load_as<A>(x, 0), m = best / temperature, s = A(1), u = A(0);
  int64_t best_k = 0;
  for (int64_t k = 1; k < K; ++k) {
    const A v = load_as<A>(x, k * logits.sC);
    if (v > best || (v != v && best == best)) {
      best = v;
      best_k = k;
    }
    const A z = v / temperature;
    if (z > m) {  // rescale the sums to the new max: u' = e^(m-z) (u + (m - z) s)
      const A r = exp_acc(m - z);  // 0 when m was -inf: the old terms vanish
      u = r > A(0) ? r * (u + (m - z) * s) : A(0);
      s = r * s + A(1);
      m = z;
    } else {
      const A e = exp_acc(z - m);
      if (e > A(0)) {
        s += e;
        u += e * (z - m);
      }
    }
  }
  A h = A(0);
  if (K > 1) {
    h = (log_acc(s) - u / s) / log_k;
    h = h < A(0) ? A(0) : (h > A(1) ? A(1) : h);
  }
  entropy[q] = h;
  pred[q] = best_k;
}

}  // namespace

void teacher_entropy(const Map4& logits, double temperature, void* entropy, int64_t* pred, cudaStream_t stream) {
  const int64_t pixels = logits.B * logits.H * logits.W;
  if (pixels == 0) return;
  if (logits.C < 1) throw std::invalid_argument("frkd cuda: teacher_entropy needs K >= 1 classes");
  dispatch_float(logits.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const double log_k = std::log(static_cast<double>(logits.C));
    entropy_kernel<T, A><<<grid_x(ceil_div(pixels, kThreads)), kThreads, 0, stream>>>(
        logits, static_cast<A>(temperature), static_cast<A>(log_k), static_cast<A*>(entropy), pred);
    check_launch("entropy_kernel");
  });
}

}  // namespace frkd::cuda
