// Torch binding of class_distance_maps' CUDA kernels (class_distance_maps.cu).
#include <torch/library.h>

#include "cuda/tensor_views.h"

namespace frkd::cuda {
namespace {

void class_distance_maps_cuda(const at::Tensor& feat, const at::Tensor& labels, const at::Tensor& protos,
                              const at::Tensor& counts, int64_t ignore_index, double eps, at::Tensor& intra,
                              at::Tensor& inter, at::Tensor& inter_class) {
  const char* op = "_cuda_class_distance_maps";
  const Map4 f = map4(feat, feat, op, "feat");
  const Labels l = labels_of(labels, f, feat, op);
  const int64_t K = num_classes(protos, 1, op, "protos");
  const at::ScalarType dt = stat_type(protos, feat, op, "protos");
  check_array(protos, dt, {f.B, K, f.C}, feat, op, "protos");
  check_array(counts, dt, {f.B, K}, feat, op, "counts");
  check_array(intra, dt, {f.B, f.H, f.W}, feat, op, "intra");
  check_array(inter, dt, {f.B, f.H, f.W}, feat, op, "inter");
  check_array(inter_class, at::kInt, {f.B, f.H, f.W}, feat, op, "inter_class");
  const bool wide = dt == at::kDouble;
  const c10::cuda::CUDAGuard guard(feat.device());
  const at::Tensor ws = workspace(class_distance_maps_workspace(f, K, wide), feat);
  class_distance_maps(f, l, protos.data_ptr(), counts.data_ptr(), K, wide, ignore_index, eps, intra.data_ptr(),
                      inter.data_ptr(), inter_class.data_ptr<int32_t>(), ws.data_ptr(), current_stream());
}

void class_distance_maps_backward_cuda(const at::Tensor& grad_intra, const at::Tensor& grad_inter,
                                       const at::Tensor& feat, const at::Tensor& labels, const at::Tensor& protos,
                                       const at::Tensor& inter_class, int64_t ignore_index, double eps,
                                       bool need_feat, bool need_protos, bool deterministic, at::Tensor& grad_feat,
                                       at::Tensor& grad_protos) {
  const char* op = "_cuda_class_distance_maps_backward";
  const Map4 f = map4(feat, feat, op, "feat");
  const Labels l = labels_of(labels, f, feat, op);
  const int64_t K = num_classes(protos, 1, op, "protos");
  const at::ScalarType dt = stat_type(protos, feat, op, "protos");
  check_array(protos, dt, {f.B, K, f.C}, feat, op, "protos");
  check_array(grad_intra, dt, {f.B, f.H, f.W}, feat, op, "grad_intra");
  check_array(grad_inter, dt, {f.B, f.H, f.W}, feat, op, "grad_inter");
  check_array(inter_class, at::kInt, {f.B, f.H, f.W}, feat, op, "inter_class");
  const Map4 gf = grad_map4(grad_feat, need_feat, feat, op, "grad_feat");
  if (need_protos) check_array(grad_protos, dt, {f.B, K, f.C}, feat, op, "grad_protos");
  const bool wide = dt == at::kDouble;
  const c10::cuda::CUDAGuard guard(feat.device());
  const at::Tensor ws =
      workspace(class_distance_maps_backward_workspace(f, K, wide, need_protos, deterministic), feat);
  class_distance_maps_backward(grad_intra.data_ptr(), grad_inter.data_ptr(), f, l, protos.data_ptr(),
                               inter_class.data_ptr<int32_t>(), K, wide, ignore_index, eps, deterministic, gf,
                               need_protos ? grad_protos.data_ptr() : nullptr, ws.data_ptr(), current_stream());
}

}  // namespace
}  // namespace frkd::cuda

TORCH_LIBRARY_IMPL(frkd, CUDA, m) {
  m.impl("_cuda_class_distance_maps", &frkd::cuda::class_distance_maps_cuda);
  m.impl("_cuda_class_distance_maps_backward", &frkd::cuda::class_distance_maps_backward_cuda);
}
