// class_distance_maps on CPU: cosine of each pixel to its own class prototype (intra) and to the
// nearest other present class (inter, with its arg-max), and the backward w.r.t. feat and protos.
// The forward works on channel-major tiles (tile[c * T + i]) to compute all K dot products of a
// block of pixels in registers; the backward needs two classes per pixel and works on pixel-major
// tiles. The one reduction over pixels (grad_protos) sums fixed chunks of pixels in order, so every
// result is deterministic and independent of the thread count.
// Compiled as part of csrc/frkd_ext.cpp (one translation unit for all CPU kernels).
#include "cpu/tiles.h"

#include <cmath>

namespace frkd::cpu {
namespace {

constexpr int64_t kBlock = 32;  // pixels whose dot products stay in registers in the forward

// Squared norms of the prototypes: csq[b * K + k] = Σ_c protos[b, k, c]².
template <typename acc_t>
std::vector<acc_t> squared_norms(const acc_t* protos, int64_t BK, int64_t C) {
  std::vector<acc_t> csq(BK, acc_t(0));
  for (int64_t r = 0; r < BK; ++r)
    for (int64_t c = 0; c < C; ++c) csq[r] += protos[r * C + c] * protos[r * C + c];
  return csq;
}

// dots[k * T + i] = Σ_c protos[k, c]·tile[c, i] and fsq[i] = Σ_c tile[c, i]² for a channel-major
// tile, kBlock pixels at a time (results for columns past the tile's n pixels are never read).
template <typename acc_t>
FRKD_VECTOR_CLONES void tile_dots(const acc_t* tile, const acc_t* P, int64_t C, int64_t K, int64_t n, acc_t* dots,
                                  acc_t* fsq) {
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    acc_t sq[kBlock] = {};
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ii = 0; ii < kBlock; ++ii) sq[ii] += tile[c * T + i0 + ii] * tile[c * T + i0 + ii];
    std::copy(sq, sq + kBlock, fsq + i0);
    for (int64_t k = 0; k < K; ++k) {
      acc_t acc[kBlock] = {};
      for (int64_t c = 0; c < C; ++c) {
        const acc_t pkc = P[k * C + c];
        for (int64_t ii = 0; ii < kBlock; ++ii) acc[ii] += pkc * tile[c * T + i0 + ii];
      }
      std::copy(acc, acc + kBlock, dots + k * T + i0);
    }
  }
}

template <typename acc_t>
void distance_forward(const FeatureMap& f, const std::vector<int32_t>& cls, const acc_t* protos, const acc_t* counts,
                      int64_t B, int64_t K, acc_t eps, acc_t* intra, acc_t* inter, int32_t* inter_class) {
  const int64_t C = f.C, N = f.N, tiles = num_tiles(N);
  std::vector<acc_t> pnorm = squared_norms(protos, B * K, C);
  for (acc_t& v : pnorm) v = std::sqrt(v);
  at::parallel_for(0, B * tiles, grain(T * C * K), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(C * T), dots(K * T), fsq(T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, N - p0);
      load_tile(f, b, 0, C, p0, n, tile.data(), T, 1);
      tile_dots(tile.data(), protos + b * K * C, C, K, n, dots.data(), fsq.data());
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
          } else if (valid && counts[b * K + k] > 0 &&
                     (arg < 0 || cos > best || (std::isnan(cos) && !std::isnan(best)))) {  // docs/ops.md: ties, NaN
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

// Tiles per chunk of the protos gradient: each chunk sums its pixels on its own and the chunks
// are added in order, so the result does not depend on the thread count (<= 64 chunks per image).
int64_t tiles_per_chunk(int64_t tiles) { return std::max<int64_t>(16, (tiles + 63) / 64); }

// One image's inputs to the backward; row K of `table` is zero and stands for "no class".
template <typename acc_t>
struct BackwardImage {
  int64_t C, K;
  acc_t eps;
  const acc_t* table;       // (K+1)×C prototypes
  const acc_t* norms;       // K+1 prototype norms
  const int32_t* own;       // per pixel: own class index in [0, K]
  const int32_t* arg;       // per pixel: saved arg-max class (-1 or out of range: none)
  const acc_t* grad_intra;  // per pixel
  const acc_t* grad_inter;  // per pixel
};

// The backward of the n pixels of a pixel-major tile (tile[i * ld + c]; img's per-pixel pointers
// start at the tile). Per pixel, with own class o and saved arg-max class a:
//   grad_f = coef_o·c_o + coef_a·c_a − beta·f,  coef = g/(|f||c|),  beta = Σ g·cos / |f|²,
// written to out[i * ld + c] when out is given; when part is given, coef·f is added to the class
// rows of part ((K+1)×C) and g·cos to gcos_part (K+1), for grad_c_k = Σ coef·f − c_k·Σ g·cos / |c_k|².
template <typename acc_t>
FRKD_VECTOR_CLONES void backward_tile(const BackwardImage<acc_t>& img, const acc_t* tile, int64_t ld, int64_t n,
                                      acc_t* out, acc_t* part, acc_t* gcos_part) {
  const int64_t C = img.C, K = img.K;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t o = img.own[i], a = img.arg[i] >= 0 && img.arg[i] < K ? img.arg[i] : K;
    const acc_t *fi = tile + i * ld, *co = img.table + o * C, *ca = img.table + a * C;
    acc_t fsq = 0, dot_o = 0, dot_a = 0;
#pragma omp simd reduction(+ : fsq, dot_o, dot_a)
    for (int64_t c = 0; c < C; ++c) {
      fsq += fi[c] * fi[c];
      dot_o += fi[c] * co[c];
      dot_a += fi[c] * ca[c];
    }
    const acc_t fn = std::sqrt(fsq), den_o = img.norms[o] * fn, den_a = img.norms[a] * fn;
    const bool ok_o = o < K && den_o >= img.eps, ok_a = a < K && den_a >= img.eps;
    const acc_t coef_o = ok_o ? img.grad_intra[i] / den_o : acc_t(0);
    const acc_t coef_a = ok_a ? img.grad_inter[i] / den_a : acc_t(0);
    const acc_t gcos_o = ok_o ? img.grad_intra[i] * (dot_o / den_o) : acc_t(0);
    const acc_t gcos_a = ok_a ? img.grad_inter[i] * (dot_a / den_a) : acc_t(0);
    if (out) {
      const acc_t beta = (gcos_o + gcos_a) / (fsq > 0 ? fsq : acc_t(1));
      acc_t* gi = out + i * ld;
      for (int64_t c = 0; c < C; ++c) gi[c] = coef_o * co[c] + coef_a * ca[c] - beta * fi[c];
    }
    if (part) {
      acc_t *so = part + o * C, *sa = part + a * C;
      for (int64_t c = 0; c < C; ++c) so[c] += coef_o * fi[c];
      for (int64_t c = 0; c < C; ++c) sa[c] += coef_a * fi[c];
      gcos_part[o] += gcos_o;
      gcos_part[a] += gcos_a;
    }
  }
}

template <typename acc_t>
void distance_backward(const acc_t* grad_intra, const acc_t* grad_inter, const FeatureMap& f,
                       const std::vector<int32_t>& cls, const acc_t* protos, const int32_t* inter_class, int64_t B,
                       int64_t K, acc_t eps, const FeatureMap* grad_feat, acc_t* grad_protos) {
  const int64_t C = f.C, N = f.N, tiles = num_tiles(N), ld = C + 1;  // padded rows: no cache-set conflicts
  const int64_t per_chunk = tiles_per_chunk(tiles), chunks = (tiles + per_chunk - 1) / per_chunk;
  const std::vector<acc_t> csq = squared_norms(protos, B * K, C);
  std::vector<acc_t> pnorm(B * (K + 1), acc_t(0)), table(B * (K + 1) * C, acc_t(0));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) pnorm[b * (K + 1) + k] = std::sqrt(csq[b * K + k]);
    std::copy(protos + b * K * C, protos + (b + 1) * K * C, table.begin() + b * (K + 1) * C);
  }
  const int64_t part_size = (K + 1) * C;
  std::vector<acc_t> partial(grad_protos ? B * chunks * part_size : 0, acc_t(0));
  std::vector<acc_t> gcos_partial(grad_protos ? B * chunks * (K + 1) : 0, acc_t(0));
  at::parallel_for(0, B * chunks, grain(per_chunk * T * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(T * ld), out(grad_feat ? T * ld : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      acc_t* part = grad_protos ? partial.data() + task * part_size : nullptr;
      acc_t* gcos_part = grad_protos ? gcos_partial.data() + task * (K + 1) : nullptr;
      for (int64_t t = chunk * per_chunk; t < std::min(tiles, (chunk + 1) * per_chunk); ++t) {
        const int64_t p0 = t * T, n = std::min(T, N - p0), q0 = b * N + p0;
        const BackwardImage<acc_t> img{C, K, eps, table.data() + b * part_size, pnorm.data() + b * (K + 1),
                                       cls.data() + q0, inter_class + q0, grad_intra + q0, grad_inter + q0};
        load_tile(f, b, 0, C, p0, n, tile.data(), 1, ld);
        backward_tile(img, tile.data(), ld, n, grad_feat ? out.data() : nullptr, part, gcos_part);
        if (grad_feat) store_tile(*grad_feat, b, 0, C, p0, n, out.data(), 1, ld);
      }
    }
  });
  if (!grad_protos) return;
  at::parallel_for(0, B * K, grain(chunks * C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / K, k = r % K;
      acc_t gcos = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) gcos += gcos_partial[(b * chunks + ch) * (K + 1) + k];
      const acc_t shrink = gcos / (csq[r] > 0 ? csq[r] : acc_t(1));
      for (int64_t c = 0; c < C; ++c) {
        acc_t sum = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) sum += partial[(b * chunks + ch) * part_size + k * C + c];
        grad_protos[r * C + c] = sum - protos[r * C + c] * shrink;
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
