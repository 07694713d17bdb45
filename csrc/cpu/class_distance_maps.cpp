// class_distance_maps on CPU: cosine of each pixel to its own class prototype (intra) and to the
// nearest other present class (inter, with its arg-max), and the backward w.r.t. feat and protos.
// Pixels are processed in channel-major tiles (tile[c * kTilePixels + i]) so that the loops over a
// tile's pixels are contiguous; the one reduction over pixels (grad_protos) runs per (image, group
// of channels) in pixel order, so every result is deterministic.
#include "cpu/tiles.h"

#include <cmath>

namespace frkd::cpu {
namespace {

constexpr int64_t T = kTilePixels;
constexpr int64_t kGroup = 16;

// Squared norms of the prototypes: csq[b * K + k] = Σ_c protos[b, k, c]².
template <typename acc_t>
std::vector<acc_t> squared_norms(const acc_t* protos, int64_t BK, int64_t C) {
  std::vector<acc_t> csq(BK, acc_t(0));
  for (int64_t r = 0; r < BK; ++r)
    for (int64_t c = 0; c < C; ++c) csq[r] += protos[r * C + c] * protos[r * C + c];
  return csq;
}

template <typename acc_t>
void distance_forward(const FeatureMap& f, const std::vector<int32_t>& cls, const acc_t* protos, const acc_t* counts,
                      int64_t B, int64_t K, acc_t eps, acc_t* intra, acc_t* inter, int32_t* inter_class) {
  const int64_t C = f.C, N = f.N, tiles = num_tiles(N);
  std::vector<acc_t> pnorm = squared_norms(protos, B * K, C);
  for (acc_t& v : pnorm) v = std::sqrt(v);
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(C * T), dots(K * T), fsq(T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0);
      const acc_t* P = protos + b * K * C;
      load_tile(f, b, 0, C, p0, n, tile.data(), T, 1);
      std::fill(fsq.begin(), fsq.end(), acc_t(0));
      std::fill(dots.begin(), dots.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* fc = tile.data() + c * T;
        for (int64_t i = 0; i < n; ++i) fsq[i] += fc[i] * fc[i];
        for (int64_t k = 0; k < K; ++k) {
          const acc_t pkc = P[k * C + c];
          acc_t* d = dots.data() + k * T;
          for (int64_t i = 0; i < n; ++i) d[i] += pkc * fc[i];
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = b * N + p0 + i;
        const int32_t y = cls[p];
        const bool valid = y < K;
        const acc_t fn = std::sqrt(fsq[i]);
        acc_t own = 0, best = 0;
        int32_t arg = -1;
        for (int32_t k = 0; k < K; ++k) {
          const acc_t den = pnorm[b * K + k] * fn;
          const acc_t cos = den >= eps ? dots[k * T + i] / den : acc_t(0);
          if (k == y) {
            own = cos;
          } else if (valid && counts[b * K + k] > 0 && (arg < 0 || cos > best)) {  // ties: lowest k
            best = cos;
            arg = k;
          }
        }
        intra[p] = valid ? own : acc_t(1);
        inter[p] = arg >= 0 ? best : acc_t(-1);
        inter_class[p] = arg;
      }
    }
  });
}

// Per-pixel backward coefficients: grad_f_p = Σ_t coef_t·c_{k_t} − beta·f_p over the two terms
// t (own class, saved arg-max class); gcos_t = g_t·cos_t feeds the protos' second term.
template <typename acc_t>
struct PixelCoefficients {
  std::vector<int32_t> own, other;        // class index of each term, K for none
  std::vector<acc_t> coef_own, coef_other, gcos_own, gcos_other;
};

template <typename acc_t>
void distance_backward(const acc_t* grad_intra, const acc_t* grad_inter, const FeatureMap& f,
                       const std::vector<int32_t>& cls, const acc_t* protos, const int32_t* inter_class, int64_t B,
                       int64_t K, acc_t eps, const FeatureMap* grad_feat, acc_t* grad_protos) {
  const int64_t C = f.C, N = f.N, tiles = num_tiles(N), BN = B * N;
  const std::vector<acc_t> csq = squared_norms(protos, B * K, C);
  std::vector<acc_t> pnorm(B * (K + 1), acc_t(0)), table(B * (K + 1) * C, acc_t(0));  // row K: zeros
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) pnorm[b * (K + 1) + k] = std::sqrt(csq[b * K + k]);
    std::copy(protos + b * K * C, protos + (b + 1) * K * C, table.begin() + b * (K + 1) * C);
  }
  PixelCoefficients<acc_t> pc;
  pc.own = cls;
  pc.other.resize(BN);
  for (int64_t p = 0; p < BN; ++p) pc.other[p] = inter_class[p] >= 0 && inter_class[p] < K ? inter_class[p] : K;
  if (grad_protos) {
    for (auto* v : {&pc.coef_own, &pc.coef_other, &pc.gcos_own, &pc.gcos_other}) v->resize(BN);
  }
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(C * T), fsq(T), d_own(T), d_other(T), a_own(T), a_other(T), beta(T);
    int64_t row_own[T], row_other[T];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0), q0 = b * N + p0;
      const acc_t* P = table.data() + b * (K + 1) * C;
      load_tile(f, b, 0, C, p0, n, tile.data(), T, 1);
      for (int64_t i = 0; i < n; ++i) {
        row_own[i] = pc.own[q0 + i] * C;
        row_other[i] = pc.other[q0 + i] * C;
        fsq[i] = d_own[i] = d_other[i] = 0;
      }
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* fc = tile.data() + c * T;
        for (int64_t i = 0; i < n; ++i) {
          fsq[i] += fc[i] * fc[i];
          d_own[i] += P[row_own[i] + c] * fc[i];
          d_other[i] += P[row_other[i] + c] * fc[i];
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t q = q0 + i;
        const int32_t k_own = pc.own[q], k_other = pc.other[q];
        const acc_t fn = std::sqrt(fsq[i]);
        acc_t gcos_sum = 0;
        auto term = [&](int32_t k, acc_t g, acc_t dot, acc_t& coef, acc_t& gcos) {
          const acc_t den = pnorm[b * (K + 1) + k] * fn;
          const bool ok = k < K && den >= eps;
          coef = ok ? g / den : acc_t(0);
          gcos = ok ? g * (dot / den) : acc_t(0);
          gcos_sum += gcos;
        };
        acc_t gc_own, gc_other;
        term(k_own, k_own < K ? grad_intra[q] : acc_t(0), d_own[i], a_own[i], gc_own);
        term(k_other, k_other < K ? grad_inter[q] : acc_t(0), d_other[i], a_other[i], gc_other);
        beta[i] = gcos_sum / (fsq[i] > 0 ? fsq[i] : acc_t(1));
        if (grad_protos) {
          pc.coef_own[q] = a_own[i];
          pc.coef_other[q] = a_other[i];
          pc.gcos_own[q] = gc_own;
          pc.gcos_other[q] = gc_other;
        }
      }
      if (!grad_feat) continue;
      for (int64_t c = 0; c < C; ++c) {
        acc_t* fc = tile.data() + c * T;
        for (int64_t i = 0; i < n; ++i)
          fc[i] = a_own[i] * P[row_own[i] + c] + a_other[i] * P[row_other[i] + c] - beta[i] * fc[i];
      }
      store_tile(*grad_feat, b, 0, C, p0, n, tile.data(), T, 1);
    }
  });
  if (!grad_protos) return;
  // grad_c_k = Σ_p coef_{p,k}·f_p − c_k·(Σ_p gcos_{p,k}) / |c_k|², per image, in pixel order.
  std::vector<acc_t> gcos_sums(B * (K + 1), acc_t(0));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* s = gcos_sums.data() + b * (K + 1);
      for (int64_t q = b * N; q < (b + 1) * N; ++q) {
        s[pc.own[q]] += pc.gcos_own[q];
        s[pc.other[q]] += pc.gcos_other[q];
      }
    }
  });
  const int64_t groups = (C + kGroup - 1) / kGroup;
  at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums((K + 1) * kGroup), tile(T * kGroup, acc_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, c0 = (task % groups) * kGroup, nc = std::min(kGroup, C - c0);
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t p0 = 0; p0 < N; p0 += T) {
        const int64_t n = std::min(T, N - p0);
        load_tile(f, b, c0, nc, p0, n, tile.data(), 1, kGroup);  // pixel-major; lanes >= nc unused
        for (int64_t i = 0; i < n; ++i) {
          const int64_t q = b * N + p0 + i;
          const acc_t* px = tile.data() + i * kGroup;
          acc_t* s_own = sums.data() + pc.own[q] * kGroup;
          acc_t* s_other = sums.data() + pc.other[q] * kGroup;
          const acc_t a_own = pc.coef_own[q], a_other = pc.coef_other[q];
          for (int64_t g = 0; g < kGroup; ++g) s_own[g] += a_own * px[g];
          for (int64_t g = 0; g < kGroup; ++g) s_other[g] += a_other * px[g];
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r = b * K + k;
        const acc_t shrink = gcos_sums[b * (K + 1) + k] / (csq[r] > 0 ? csq[r] : acc_t(1));
        for (int64_t g = 0; g < nc; ++g)
          grad_protos[r * C + c0 + g] = sums[k * kGroup + g] - protos[r * C + c0 + g] * shrink;
      }
    }
  });
}

void class_distance_maps_cpu(const at::Tensor& feat, const at::Tensor& labels, const at::Tensor& protos,
                             const at::Tensor& counts, int64_t ignore_index, double eps, at::Tensor& intra,
                             at::Tensor& inter, at::Tensor& inter_class) {
  const char* op = "_cpu_class_distance_maps";
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), K = protos.size(1);
  const at::ScalarType dt = protos.scalar_type();
  check_pixels(feat, labels, 3, op, "labels");
  check_array(protos, dt, {B, K, C}, op, "protos");
  check_array(counts, dt, {B, K}, op, "counts");
  check_array(intra, dt, {B, H, W}, op, "intra");
  check_array(inter, dt, {B, H, W}, op, "inter");
  check_array(inter_class, at::kInt, {B, H, W}, op, "inter_class");
  const std::vector<int32_t> cls = class_map(labels, K, ignore_index);
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    distance_forward<scalar_t>(FeatureMap(feat), cls, protos.const_data_ptr<scalar_t>(),
                               counts.const_data_ptr<scalar_t>(), B, K, static_cast<scalar_t>(eps),
                               intra.data_ptr<scalar_t>(), inter.data_ptr<scalar_t>(), inter_class.data_ptr<int32_t>());
  });
}

void class_distance_maps_backward_cpu(const at::Tensor& grad_intra, const at::Tensor& grad_inter,
                                      const at::Tensor& feat, const at::Tensor& labels, const at::Tensor& protos,
                                      const at::Tensor& inter_class, int64_t ignore_index, double eps, bool need_feat,
                                      bool need_protos, at::Tensor& grad_feat, at::Tensor& grad_protos) {
  const char* op = "_cpu_class_distance_maps_backward";
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), K = protos.size(1);
  const at::ScalarType dt = protos.scalar_type();
  check_pixels(feat, labels, 3, op, "labels");
  check_array(protos, dt, {B, K, C}, op, "protos");
  check_array(grad_intra, dt, {B, H, W}, op, "grad_intra");
  check_array(grad_inter, dt, {B, H, W}, op, "grad_inter");
  check_array(inter_class, at::kInt, {B, H, W}, op, "inter_class");
  if (need_feat)
    TORCH_CHECK(grad_feat.sizes() == feat.sizes(), "frkd::", op, ": grad_feat must have feat's shape ", feat.sizes(),
                ", got ", grad_feat.sizes());
  if (need_protos) check_array(grad_protos, dt, {B, K, C}, op, "grad_protos");
  if (!need_feat && !need_protos) return;
  const std::vector<int32_t> cls = class_map(labels, K, ignore_index);
  AT_DISPATCH_FLOATING_TYPES(dt, "frkd_cpu_kernel", [&] {
    const FeatureMap out = need_feat ? FeatureMap(grad_feat) : FeatureMap(feat);
    distance_backward<scalar_t>(grad_intra.const_data_ptr<scalar_t>(), grad_inter.const_data_ptr<scalar_t>(),
                                FeatureMap(feat), cls, protos.const_data_ptr<scalar_t>(),
                                inter_class.const_data_ptr<int32_t>(), B, K, static_cast<scalar_t>(eps),
                                need_feat ? &out : nullptr, need_protos ? grad_protos.data_ptr<scalar_t>() : nullptr);
  });
}

}  // namespace
}  // namespace frkd::cpu

TORCH_LIBRARY_IMPL(frkd, CPU, m) {
  m.impl("_cpu_class_distance_maps", &frkd::cpu::class_distance_maps_cpu);
  m.impl("_cpu_class_distance_maps_backward", &frkd::cpu::class_distance_maps_backward_cpu);
}
