// prototype_pool on CPU: per-image class means of a feature map, and its backward.
// Forward: one task per (image, group of kGroup channels) walks the image's pixels in order and
// adds each pixel's channels into its class row, so the sums are deterministic without atomics.
// Compiled as part of csrc/frkd_ext.cpp (one translation unit for all CPU kernels).
#include "cpu/tiles.h"

namespace frkd::cpu {
namespace {

constexpr int64_t kGroup = 16;

// counts[b, k] = number of pixels of image b whose class index is k (k < K).
template <typename acc_t>
void count_classes(const std::vector<int32_t>& cls, int64_t B, int64_t N, int64_t K, acc_t* counts) {
  at::parallel_for(0, B, grain(N), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> n(K + 1);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(n.begin(), n.end(), 0);
      for (int64_t p = 0; p < N; ++p) ++n[cls[b * N + p]];
      for (int64_t k = 0; k < K; ++k) counts[b * K + k] = static_cast<acc_t>(n[k]);
    }
  });
}

// feat B×C×H×W -> protos B×K×C (contiguous), counts B×K (contiguous).
template <typename acc_t>
void pool_forward(const FeatureMap& f, const std::vector<int32_t>& cls, int64_t B, int64_t K, acc_t* protos,
                  acc_t* counts) {
  count_classes(cls, B, f.N, K, counts);
  const int64_t groups = (f.C + kGroup - 1) / kGroup;
  at::parallel_for(0, B * groups, grain(f.N * kGroup), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums((K + 1) * kGroup), tile(kTilePixels * kGroup, acc_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, c0 = (task % groups) * kGroup, nc = std::min(kGroup, f.C - c0);
      const int32_t* y = cls.data() + b * f.N;
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t p0 = 0; p0 < f.N; p0 += kTilePixels) {
        const int64_t n = std::min(kTilePixels, f.N - p0);
        load_tile(f, b, c0, nc, p0, n, tile.data(), 1, kGroup);  // pixel-major; lanes >= nc unused
        for (int64_t i = 0; i < n; ++i) {
          acc_t* row = sums.data() + y[p0 + i] * kGroup;
          const acc_t* px = tile.data() + i * kGroup;
          for (int64_t g = 0; g < kGroup; ++g) row[g] += px[g];
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const acc_t n = std::max(counts[b * K + k], acc_t(1));
        for (int64_t g = 0; g < nc; ++g) protos[(b * K + k) * f.C + c0 + g] = sums[k * kGroup + g] / n;
      }
    }
  });
}

// grad_feat[b, :, p] = grad_protos[b, y_p, :] / max(counts[b, y_p], 1) on valid pixels, 0 elsewhere.
template <typename acc_t>
void pool_backward(const acc_t* grad_protos, const std::vector<int32_t>& cls, const acc_t* counts, int64_t B,
                   int64_t K, const FeatureMap& grad_feat) {
  const int64_t C = grad_feat.C, N = grad_feat.N;
  std::vector<acc_t> scaled(B * (K + 1) * C, acc_t(0));  // row K of each image stays 0 (ignored pixels)
  at::parallel_for(0, B * K, grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / K, k = bk % K;
      const acc_t n = std::max(counts[bk], acc_t(1));
      for (int64_t c = 0; c < C; ++c) scaled[(b * (K + 1) + k) * C + c] = grad_protos[bk * C + c] / n;
    }
  });
  const int64_t tiles = num_tiles(N);
  at::parallel_for(0, B * tiles, grain(kTilePixels * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(C * kTilePixels);
    int64_t row[kTilePixels];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * kTilePixels, n = std::min(kTilePixels, N - p0);
      const acc_t* table = scaled.data() + b * (K + 1) * C;
      for (int64_t i = 0; i < n; ++i) row[i] = cls[b * N + p0 + i] * C;
      for (int64_t c = 0; c < C; ++c)  // channel-major tile: contiguous stores for NCHW maps
        for (int64_t i = 0; i < n; ++i) tile[c * kTilePixels + i] = table[row[i] + c];
      store_tile(grad_feat, b, 0, C, p0, n, tile.data(), kTilePixels, 1);
    }
  });
}

void prototype_pool_cpu(const at::Tensor& feat, const at::Tensor& labels, int64_t ignore_index, at::Tensor& protos,
                        at::Tensor& counts) {
  const char* op = "_cpu_prototype_pool";
  const int64_t B = feat.size(0), C = feat.size(1), K = protos.size(1);
  const at::ScalarType dt = protos.scalar_type();
  check_pixels(feat, labels, 3, op, "labels");
  check_array(protos, dt, {B, K, C}, op, "protos");
  check_array(counts, dt, {B, K}, op, "counts");
  const std::vector<int32_t> cls = class_map(labels, K, ignore_index);
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    pool_forward<scalar_t>(FeatureMap(feat), cls, B, K, protos.data_ptr<scalar_t>(), counts.data_ptr<scalar_t>());
  });
}

void prototype_pool_backward_cpu(const at::Tensor& grad_protos, const at::Tensor& labels, const at::Tensor& counts,
                                 int64_t ignore_index, at::Tensor& grad_feat) {
  const char* op = "_cpu_prototype_pool_backward";
  const int64_t B = counts.size(0), K = counts.size(1), C = grad_feat.size(1);
  const at::ScalarType dt = counts.scalar_type();
  check_pixels(grad_feat, labels, 3, op, "labels");
  check_array(counts, dt, {grad_feat.size(0), K}, op, "counts");
  check_array(grad_protos, dt, {B, K, C}, op, "grad_protos");
  const std::vector<int32_t> cls = class_map(labels, K, ignore_index);
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    pool_backward<scalar_t>(grad_protos.const_data_ptr<scalar_t>(), cls, counts.const_data_ptr<scalar_t>(), B, K,
                            FeatureMap(grad_feat));
  });
}

}  // namespace
}  // namespace frkd::cpu

TORCH_LIBRARY_IMPL(frkd, CPU, m) {
  m.impl("_cpu_prototype_pool", &frkd::cpu::prototype_pool_cpu);
  m.impl("_cpu_prototype_pool_backward", &frkd::cpu::prototype_pool_backward_cpu);
}
