// teacher_entropy on CPU: normalised softmax entropy of logits / T over the K classes, and the
// arg-max class (ties: lowest k; NaN counts as the maximum, as in torch.argmax). Teacher-only.
// Compiled as part of csrc/frkd_ext.cpp (one translation unit for all CPU kernels).
#include "cpu/tiles.h"

#include <cmath>

namespace frkd::cpu {
namespace {

// entropy = (log Σ_k e_k − Σ_k e_k·(z_k − m) / Σ_k e_k) / log K with z = logits / temperature,
// m = max_k z_k, e_k = exp(z_k − m): logsumexp − E_P[z] without cancelling large logits.
template <typename acc_t>
void entropy_forward(const FeatureMap& logits, int64_t B, acc_t temperature, acc_t* entropy, int64_t* pred) {
  const int64_t K = logits.C, N = logits.N, tiles = num_tiles(N);
  const acc_t inv_log_k = K > 1 ? acc_t(1) / std::log(static_cast<acc_t>(K)) : acc_t(0);
  at::parallel_for(0, B * tiles, grain(T * K), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(K * T), best(T), zmax(T), sum_e(T), sum_ez(T);
    std::vector<int64_t> arg(T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0);
      load_tile(logits, b, 0, K, p0, n, z.data(), T, 1);
      for (int64_t i = 0; i < n; ++i) {
        best[i] = z[i];
        arg[i] = 0;
      }
      for (int64_t k = 1; k < K; ++k) {
        for (int64_t i = 0; i < n; ++i) {
          const acc_t v = z[k * T + i];
          if (v > best[i] || (std::isnan(v) && !std::isnan(best[i]))) {
            best[i] = v;
            arg[i] = k;
          }
        }
      }
      for (int64_t j = 0; j < K * T; ++j) z[j] /= temperature;
      for (int64_t i = 0; i < n; ++i) {
        zmax[i] = z[i];
        sum_e[i] = sum_ez[i] = 0;
      }
      for (int64_t k = 1; k < K; ++k)
        for (int64_t i = 0; i < n; ++i) zmax[i] = std::max(zmax[i], z[k * T + i]);
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t i = 0; i < n; ++i) {
          const acc_t shifted = z[k * T + i] - zmax[i];
          const acc_t e = std::exp(shifted);
          sum_e[i] += e;
          if (e > 0) sum_ez[i] += e * shifted;  // 0·log 0 = 0
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const acc_t h = (std::log(sum_e[i]) - sum_ez[i] / sum_e[i]) * inv_log_k;
        entropy[b * N + p0 + i] = K > 1 ? std::min(std::max(h, acc_t(0)), acc_t(1)) : acc_t(0);
        pred[b * N + p0 + i] = arg[i];
      }
    }
  });
}

void teacher_entropy_cpu(const at::Tensor& logits, double temperature, at::Tensor& entropy, at::Tensor& pred) {
  const char* op = "_cpu_teacher_entropy";
  TORCH_CHECK(logits.dim() == 4 && logits.size(1) >= 1, "frkd::", op, ": logits must be B×K×H×W with K >= 1, got ",
              logits.sizes());
  const int64_t B = logits.size(0), H = logits.size(2), W = logits.size(3);
  const at::ScalarType dt = entropy.scalar_type();
  check_array(entropy, dt, {B, H, W}, op, "entropy");
  check_array(pred, at::kLong, {B, H, W}, op, "pred");
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    entropy_forward<scalar_t>(FeatureMap(logits), B, static_cast<scalar_t>(temperature),
                              entropy.data_ptr<scalar_t>(), pred.data_ptr<int64_t>());
  });
}

}  // namespace
}  // namespace frkd::cpu

TORCH_LIBRARY_IMPL(frkd, CPU, m) { m.impl("_cpu_teacher_entropy", &frkd::cpu::teacher_entropy_cpu); }
