// Torch binding of teacher_entropy's CUDA kernel (teacher_entropy.cu).
#include <torch/library.h>

#include "cuda/tensor_views.h"

namespace frkd::cuda {
namespace {

void teacher_entropy_cuda(const at::Tensor& logits, double temperature, at::Tensor& entropy, at::Tensor& pred) {
  const char* op = "_cuda_teacher_entropy";
  const Map4 z = map4(logits, logits, op, "logits");
  num_classes(logits, 1, op, "logits");
  TORCH_CHECK(temperature > 0, "frkd.", op, ": temperature must be > 0, got ", temperature);
  const at::ScalarType dt = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_array(entropy, dt, {z.B, z.H, z.W}, logits, op, "entropy");
  check_array(pred, at::kLong, {z.B, z.H, z.W}, logits, op, "pred");
  const c10::cuda::CUDAGuard guard(logits.device());
  teacher_entropy(z, temperature, entropy.data_ptr(), pred.data_ptr<int64_t>(), current_stream());
}

}  // namespace
}  // namespace frkd::cuda

TORCH_LIBRARY_IMPL(frkd, CUDA, m) { m.impl("_cuda_teacher_entropy", &frkd::cuda::teacher_entropy_cuda); }
