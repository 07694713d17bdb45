// Torch side of the CUDA binding: checks tensors and turns them into the plain views of
// launch.h (data pointer, dtype, sizes, element strides), allocates workspaces with the caching
// allocator, and gives the current stream. Included only by csrc/cuda/bind_*.cpp (CUDA builds).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "cuda/launch.h"

namespace frkd::cuda {

inline Float float_of(const at::Tensor& t, const char* op, const char* name) {
  const at::ScalarType dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, "frkd.", op, ": ",
              name, " must be float32, float16, bfloat16 or float64, got ", dt);
  return dt == at::kFloat ? Float::F32 : dt == at::kHalf ? Float::F16 : dt == at::kBFloat16 ? Float::BF16 : Float::F64;
}

inline void check_on(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), "frkd.", op, ": ", name, " must be on ", ref.device(),
              " like the features, got ", t.device());
}

// A B×C×H×W float map on ref's device.
inline Map4 map4(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, "frkd.", op, ": ", name, " must be 4-D B×C×H×W, got ", t.dim(), "-D ", t.sizes());
  check_on(t, ref, op, name);
  return Map4{t.data_ptr(), float_of(t, op, name), t.size(0), t.size(1), t.size(2), t.size(3),
              t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A gradient output: like `like` (shape and dtype) when needed, else a view with null data.
inline Map4 grad_map4(const at::Tensor& grad, bool needed, const at::Tensor& like, const char* op, const char* name) {
  if (!needed) return Map4{nullptr, Float::F32, 0, 0, 0, 0, 0, 0, 0, 0};
  TORCH_CHECK(grad.sizes() == like.sizes() && grad.scalar_type() == like.scalar_type(), "frkd.", op, ": ", name,
              " must have shape ", like.sizes(), " and dtype ", like.scalar_type(), ", got ", grad.sizes(), " ",
              grad.scalar_type());
  return map4(grad, like, op, name);
}

// B×H×W uint8/int32/int64 labels matching the map m.
inline Labels labels_of(const at::Tensor& labels, const Map4& m, const at::Tensor& ref, const char* op) {
  TORCH_CHECK(labels.dim() == 3 && labels.size(0) == m.B && labels.size(1) == m.H && labels.size(2) == m.W, "frkd.",
              op, ": labels must be B×H×W = [", m.B, ", ", m.H, ", ", m.W, "], got ", labels.sizes());
  check_on(labels, ref, op, "labels");
  const at::ScalarType dt = labels.scalar_type();
  TORCH_CHECK(dt == at::kByte || dt == at::kInt || dt == at::kLong, "frkd.", op,
              ": labels must be uint8, int32 or int64, got ", dt);
  const Label code = dt == at::kByte ? Label::U8 : dt == at::kInt ? Label::I32 : Label::I64;
  return Labels{labels.data_ptr(), code, labels.stride(0), labels.stride(1), labels.stride(2)};
}

// A contiguous array of dtype dt and the given sizes on ref's device (statistics, out-arguments).
inline void check_array(const at::Tensor& t, at::ScalarType dt, std::vector<int64_t> sizes, const at::Tensor& ref,
                        const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == dt && t.sizes() == at::IntArrayRef(sizes) && t.is_contiguous(), "frkd.", op, ": ",
              name, " must be a contiguous ", dt, " tensor of shape ", at::IntArrayRef(sizes), ", got ",
              t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (non-contiguous)");
  check_on(t, ref, op, name);
}

// The statistics dtype: float64 when the caller's statistics are, else float32; float64 features
// require float64 statistics.
inline at::ScalarType stat_type(const at::Tensor& stats, const at::Tensor& feat, const char* op, const char* name) {
  const at::ScalarType dt = stats.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "frkd.", op, ": ", name, " must be float32 or float64, got ", dt);
  TORCH_CHECK(dt == at::kDouble || feat.scalar_type() != at::kDouble, "frkd.", op, ": ", name,
              " must be float64 when the features are float64, got ", dt);
  return dt;
}

inline int64_t num_classes(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() > dim && t.size(dim) >= 1 && t.size(dim) <= std::numeric_limits<int32_t>::max(), "frkd.", op,
              ": ", name, " must have between 1 and 2^31-1 classes in dimension ", dim, ", got ", t.sizes());
  return t.size(dim);
}

inline at::Tensor workspace(size_t bytes, const at::Tensor& ref) {
  return at::empty({static_cast<int64_t>(bytes)}, ref.options().dtype(at::kByte));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace frkd::cuda
