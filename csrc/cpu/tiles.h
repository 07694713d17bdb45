// Shared helpers of the CPU kernels: strided access to B×C×H×W maps of any floating dtype by
// tiles of at most kTilePixels pixels, converted to/from the accumulation type acc_t (float, or
// double for float64 inputs), and the labels -> class-index map.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// Hot loops get AVX2 and AVX-512 clones next to the baseline build, picked at load time (GCC, x86-64).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FRKD_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FRKD_VECTOR_CLONES
#endif

namespace frkd::cpu {

constexpr int64_t kTilePixels = 64;
constexpr int64_t T = kTilePixels;  // the kernels' short name for it

// A B×C×H×W tensor seen as B images of C channels over N = H·W pixels, any strides and dtype.
struct FeatureMap {
  void* data;
  at::ScalarType dtype;
  int64_t C, H, W, N;
  int64_t stride_b, stride_c, stride_h, stride_w;
  int64_t pixel_stride;  // stride between consecutive pixels p, p+1 when uniform, else 0

  explicit FeatureMap(const at::Tensor& t)
      : data(t.data_ptr()), dtype(t.scalar_type()), C(t.size(1)), H(t.size(2)), W(t.size(3)),
        N(t.size(2) * t.size(3)), stride_b(t.stride(0)), stride_c(t.stride(1)), stride_h(t.stride(2)),
        stride_w(t.stride(3)),
        pixel_stride(t.size(2) == 1 || t.stride(2) == t.size(3) * t.stride(3) ? t.stride(3) : 0) {}

  // Element offsets (from the image's first element) of pixels p0 .. p0+n-1.
  void pixel_offsets(int64_t p0, int64_t n, int64_t* off) const {
    int64_t h = W > 0 ? p0 / W : 0, w = W > 0 ? p0 % W : 0;
    for (int64_t i = 0; i < n; ++i) {
      off[i] = h * stride_h + w * stride_w;
      if (++w == W) {
        w = 0;
        ++h;
      }
    }
  }
};

// Copies between a map's pixels [p0, p0+n) × channels [c0, c0+nc) of image b and a buffer laid out
// as buf[(c - c0) * ldc + i * ldp]: ldp = 1 gives a channel-major tile, ldc = 1 a pixel-major one.
template <typename acc_t, bool kLoad>
void copy_tile(const FeatureMap& f, int64_t b, int64_t c0, int64_t nc, int64_t p0, int64_t n, acc_t* buf,
               int64_t ldc, int64_t ldp) {
  TORCH_CHECK(n <= kTilePixels, "frkd cpu: tile of ", n, " pixels exceeds ", kTilePixels);
  int64_t off[kTilePixels];
  const int64_t ps = f.pixel_stride;
  if (ps == 0) f.pixel_offsets(p0, n, off);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.dtype, "frkd_copy_tile", [&] {
    scalar_t* base = static_cast<scalar_t*>(f.data) + b * f.stride_b + c0 * f.stride_c;
    for (int64_t c = 0; c < nc; ++c) {
      scalar_t* map = base + c * f.stride_c;
      acc_t* tile = buf + c * ldc;
      if (ps == 1) {
        map += p0;
        for (int64_t i = 0; i < n; ++i) {
          if constexpr (kLoad) tile[i * ldp] = static_cast<acc_t>(map[i]);
          else map[i] = static_cast<scalar_t>(tile[i * ldp]);
        }
      } else if (ps != 0) {
        map += p0 * ps;
        for (int64_t i = 0; i < n; ++i) {
          if constexpr (kLoad) tile[i * ldp] = static_cast<acc_t>(map[i * ps]);
          else map[i * ps] = static_cast<scalar_t>(tile[i * ldp]);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          if constexpr (kLoad) tile[i * ldp] = static_cast<acc_t>(map[off[i]]);
          else map[off[i]] = static_cast<scalar_t>(tile[i * ldp]);
        }
      }
    }
  });
}

template <typename acc_t>
void load_tile(const FeatureMap& f, int64_t b, int64_t c0, int64_t nc, int64_t p0, int64_t n, acc_t* buf,
               int64_t ldc, int64_t ldp) {
  copy_tile<acc_t, true>(f, b, c0, nc, p0, n, buf, ldc, ldp);
}

template <typename acc_t>
void store_tile(const FeatureMap& f, int64_t b, int64_t c0, int64_t nc, int64_t p0, int64_t n, const acc_t* buf,
                int64_t ldc, int64_t ldp) {
  copy_tile<acc_t, false>(f, b, c0, nc, p0, n, const_cast<acc_t*>(buf), ldc, ldp);
}

inline int64_t num_tiles(int64_t n) { return (n + kTilePixels - 1) / kTilePixels; }

// Grain size for at::parallel_for over items that each cost about `cost` element operations:
// loops with less than kParallelWork operations in all run on the calling thread.
constexpr int64_t kParallelWork = 32768;
inline int64_t grain(int64_t cost) { return std::max<int64_t>(1, kParallelWork / std::max<int64_t>(cost, 1)); }

// Class index of every pixel, cls[b * N + p] in [0, K]: the label when 0 <= label < K and
// label != ignore_index, else K (the "ignored" bucket). labels: B×H×W uint8/int32/int64, any strides.
inline std::vector<int32_t> class_map(const at::Tensor& labels, int64_t K, int64_t ignore_index) {
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  std::vector<int32_t> cls(B * H * W);
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "frkd_class_map", [&] {
    const scalar_t* y = labels.const_data_ptr<scalar_t>();
    const int64_t sb = labels.stride(0), sh = labels.stride(1), sw = labels.stride(2);
    at::parallel_for(0, B * H, grain(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* src = y + (row / H) * sb + (row % H) * sh;
        int32_t* dst = cls.data() + row * W;
        for (int64_t w = 0; w < W; ++w) {
          const int64_t v = static_cast<int64_t>(src[w * sw]);
          dst[w] = (v >= 0 && v < K && v != ignore_index) ? static_cast<int32_t>(v) : static_cast<int32_t>(K);
        }
      }
    });
  });
  return cls;
}

// Checks an argument that the kernels index as a contiguous array of `dtype` with `sizes`.
inline void check_array(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef sizes, const char* op,
                        const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.sizes() == sizes, "frkd::", op, ": ", name,
              " must be a contiguous ", dtype, " tensor of shape ", sizes, ", got ", t.scalar_type(), " ",
              t.sizes(), t.is_contiguous() ? "" : " (non-contiguous)");
}

// Checks that a B×C×H×W map and B×H×W labels (or another B×C'×H×W map) agree on B, H, W.
inline void check_pixels(const at::Tensor& feat, const at::Tensor& other, int64_t other_dim, const char* op,
                         const char* name) {
  const bool same = other.dim() == other_dim && other.size(0) == feat.size(0) &&
                    other.size(other_dim - 2) == feat.size(2) && other.size(other_dim - 1) == feat.size(3);
  TORCH_CHECK(feat.dim() == 4 && same, "frkd::", op, ": ", name, " must match the B, H, W of ", feat.sizes(),
              ", got ", other.sizes());
}

}  // namespace frkd::cpu
