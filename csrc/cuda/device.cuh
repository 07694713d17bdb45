// Shared device helpers of the CUDA kernels: dtype dispatch, conversions to and from the
// accumulation type, label decoding, strided pixel offsets, launch checks and workspace carving.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/launch.h"

namespace frkd::cuda {

template <class T>
struct Tag {
  using type = T;
};

// Accumulation type of an input type: double for double, float otherwise.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Calls f(Tag<T>{}) with T the C++ type of dt.
template <class F>
void dispatch_float(Float dt, F&& f) {
  switch (dt) {
    case Float::F32: f(Tag<float>{}); return;
    case Float::F16: f(Tag<__half>{}); return;
    case Float::BF16: f(Tag<__nv_bfloat16>{}); return;
    case Float::F64: f(Tag<double>{}); return;
  }
  throw std::invalid_argument("frkd cuda: unsupported float dtype");
}

// Calls f(Tag<T>{}, Tag<A>{}): T from dt, A = double when acc_double or T is double, else float.
template <class F>
void dispatch_float_acc(Float dt, bool acc_double, F&& f) {
  dispatch_float(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (acc_double) {
      f(tag, Tag<double>{});
    } else {
      f(tag, Tag<acc_t<T>>{});
    }
  });
}

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

// p[i] converted to the accumulation type A.
template <class A, class T>
__device__ __forceinline__ A load_as(const T* p, int64_t i) {
  return static_cast<A>(widen(p[i]));
}

// v rounded to T (round to nearest even, through float for the 16-bit types, as torch casts).
template <class T, class A>
__device__ __forceinline__ T narrow(A v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// The class index of a raw label: y when 0 <= y < K and y != ignore_index, else -1. The label
// is widened to int64 first, so no label value is ever used as an index unchecked.
__device__ __forceinline__ int class_of(const Labels& l, int64_t off, int64_t K, int64_t ignore_index) {
  int64_t y;
  switch (l.dtype) {
    case Label::U8: y = static_cast<const uint8_t*>(l.data)[off]; break;
    case Label::I32: y = static_cast<const int32_t*>(l.data)[off]; break;
    default: y = static_cast<const int64_t*>(l.data)[off]; break;
  }
  return (y >= 0 && y < K && y != ignore_index) ? static_cast<int>(y) : -1;
}

// Element offset of pixel p (row-major over H×W) inside one image/channel plane.
__device__ __forceinline__ int64_t pixel_offset(int64_t p, int64_t W, int64_t sH, int64_t sW) {
  const int64_t h = p / W;
  return h * sH + (p - h * W) * sW;
}

// cos = dot / (|a||b|) when |a||b| >= eps, else 0 (docs/ops.md); `ok` tells which case.
template <class A>
__device__ __forceinline__ A cosine(A dot, A norm_a, A norm_b, A eps, bool& ok) {
  const A den = norm_a * norm_b;
  ok = den >= eps;
  return ok ? dot / den : A(0);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Throws with the kernel's name when the last launch (or an earlier asynchronous error) failed.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("frkd cuda: launch of ") + kernel + " failed: " + cudaGetErrorString(err));
  }
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("frkd cuda: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

// Grid dimension x is limited to 2^31 - 1 blocks.
inline unsigned grid_x(int64_t n) {
  if (n > 2147483647) {
    throw std::invalid_argument("frkd cuda: " + std::to_string(n) + " blocks exceed the 2^31-1 a CUDA grid allows");
  }
  return static_cast<unsigned>(n);
}

// Grid dimension y and z are limited to 65535 blocks.
inline unsigned grid_yz(int64_t n, const char* what) {
  if (n > 65535) {
    throw std::invalid_argument(std::string("frkd cuda: ") + what + " = " + std::to_string(n) +
                                " exceeds the 65535 blocks a CUDA grid allows in that dimension");
  }
  return static_cast<unsigned>(n);
}

// Multiprocessors of the current device (sizes grids that split reductions).
inline int sm_count() {
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return sms > 0 ? sms : 1;
}

// Carves 256-byte aligned buffers out of one workspace; with a null base it only counts bytes.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <class T>
  T* take(int64_t count) {
    const size_t at = used_;
    used_ += (static_cast<size_t>(count) * sizeof(T) + 255) / 256 * 256;
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  size_t bytes() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace frkd::cuda
