// Torch binding of masked_feature_mse's CUDA kernels (masked_feature_mse.cu).
#include <torch/library.h>

#include "cuda/tensor_views.h"

namespace frkd::cuda {
namespace {

// The statistics dtype of the op: float64 when any input is float64 (checked against `stats`).
at::ScalarType mse_type(const at::Tensor& stats, const at::Tensor& student, const at::Tensor& teacher,
                        const char* op, const char* name) {
  const bool wide = student.scalar_type() == at::kDouble || teacher.scalar_type() == at::kDouble ||
                    stats.scalar_type() == at::kDouble;
  const at::ScalarType dt = wide ? at::kDouble : at::kFloat;
  TORCH_CHECK(stats.scalar_type() == dt, "frkd.", op, ": ", name, " must be ", dt, " for these inputs, got ",
              stats.scalar_type());
  return dt;
}

void check_pair(const Map4& s, const at::Tensor& teacher, const char* op) {
  TORCH_CHECK(teacher.dim() == 4 && teacher.size(0) == s.B && teacher.size(1) == s.C && teacher.size(2) == s.H &&
                  teacher.size(3) == s.W,
              "frkd.", op, ": teacher must have the student's shape [", s.B, ", ", s.C, ", ", s.H, ", ", s.W,
              "], got ", teacher.sizes());
}

void masked_feature_mse_cuda(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& weight,
                             at::Tensor& loss) {
  const char* op = "_cuda_masked_feature_mse";
  const Map4 s = map4(student, student, op, "student");
  check_pair(s, teacher, op);
  const Map4 t = map4(teacher, student, op, "teacher");
  const at::ScalarType dt = mse_type(loss, student, teacher, op, "loss");
  check_array(loss, dt, {}, student, op, "loss");
  check_array(weight, dt, {s.B, s.H, s.W}, student, op, "weight");
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor ws = workspace(masked_feature_mse_workspace(s), student);
  masked_feature_mse(s, t, weight.data_ptr(), dt == at::kDouble, loss.data_ptr(), ws.data_ptr(), current_stream());
}

void masked_feature_mse_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student,
                                      const at::Tensor& teacher, const at::Tensor& weight, bool need_student,
                                      bool need_teacher, at::Tensor& grad_student, at::Tensor& grad_teacher) {
  const char* op = "_cuda_masked_feature_mse_backward";
  const Map4 s = map4(student, student, op, "student");
  check_pair(s, teacher, op);
  const Map4 t = map4(teacher, student, op, "teacher");
  const at::ScalarType dt = mse_type(grad_loss, student, teacher, op, "grad_loss");
  check_array(grad_loss, dt, {}, student, op, "grad_loss");
  check_array(weight, dt, {s.B, s.H, s.W}, student, op, "weight");
  const Map4 gs = grad_map4(grad_student, need_student, student, op, "grad_student");
  const Map4 gt = grad_map4(grad_teacher, need_teacher, teacher, op, "grad_teacher");
  const c10::cuda::CUDAGuard guard(student.device());
  masked_feature_mse_backward(grad_loss.data_ptr(), s, t, weight.data_ptr(), dt == at::kDouble, gs, gt,
                              current_stream());
}

}  // namespace
}  // namespace frkd::cuda

TORCH_LIBRARY_IMPL(frkd, CUDA, m) {
  m.impl("_cuda_masked_feature_mse", &frkd::cuda::masked_feature_mse_cuda);
  m.impl("_cuda_masked_feature_mse_backward", &frkd::cuda::masked_feature_mse_backward_cuda);
}
