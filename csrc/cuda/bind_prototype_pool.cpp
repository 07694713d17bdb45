// Torch binding of prototype_pool's CUDA kernels (prototype_pool.cu).
#include <torch/library.h>

#include "cuda/tensor_views.h"

namespace frkd::cuda {
namespace {

void prototype_pool_cuda(const at::Tensor& feat, const at::Tensor& labels, int64_t ignore_index, bool deterministic,
                         at::Tensor& protos, at::Tensor& counts) {
  const char* op = "_cuda_prototype_pool";
  const Map4 f = map4(feat, feat, op, "feat");
  const Labels l = labels_of(labels, f, feat, op);
  const int64_t K = num_classes(protos, 1, op, "protos");
  const at::ScalarType dt = feat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_array(protos, dt, {f.B, K, f.C}, feat, op, "protos");
  check_array(counts, dt, {f.B, K}, feat, op, "counts");
  const c10::cuda::CUDAGuard guard(feat.device());
  const at::Tensor ws = workspace(prototype_pool_workspace(f, K, deterministic), feat);
  prototype_pool(f, l, K, ignore_index, deterministic, protos.data_ptr(), counts.data_ptr(), ws.data_ptr(),
                 current_stream());
}

void prototype_pool_backward_cuda(const at::Tensor& grad_protos, const at::Tensor& labels, const at::Tensor& counts,
                                  int64_t ignore_index, at::Tensor& grad_feat) {
  const char* op = "_cuda_prototype_pool_backward";
  const Map4 g = map4(grad_feat, grad_feat, op, "grad_feat");
  const Labels l = labels_of(labels, g, grad_feat, op);
  const int64_t K = num_classes(counts, 1, op, "counts");
  const at::ScalarType dt = stat_type(counts, grad_feat, op, "counts");
  check_array(counts, dt, {g.B, K}, grad_feat, op, "counts");
  check_array(grad_protos, dt, {g.B, K, g.C}, grad_feat, op, "grad_protos");
  const c10::cuda::CUDAGuard guard(grad_feat.device());
  prototype_pool_backward(grad_protos.data_ptr(), counts.data_ptr(), dt == at::kDouble, l, K, ignore_index, g,
                          current_stream());
}

}  // namespace
}  // namespace frkd::cuda

TORCH_LIBRARY_IMPL(frkd, CUDA, m) {
  m.impl("_cuda_prototype_pool", &frkd::cuda::prototype_pool_cuda);
  m.impl("_cuda_prototype_pool_backward", &frkd::cuda::prototype_pool_backward_cuda);
}
