// Schemas of the CUDA backend's private ops (frkd::_cuda_*), compiled only in CUDA builds. Their
// CUDA kernels are registered by bind_*.cpp; frkd_kernels/cuda_backend.py allocates the outputs
// and passes them as out-arguments, with small operands already in the statistics dtype.
// `deterministic` (torch.are_deterministic_algorithms_enabled()) selects atomic-free reductions.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(frkd, m) {
  m.def("_cuda_prototype_pool(Tensor feat, Tensor labels, int ignore_index, bool deterministic, "
        "Tensor(a!) protos, Tensor(b!) counts) -> ()");
  m.def("_cuda_prototype_pool_backward(Tensor grad_protos, Tensor labels, Tensor counts, int ignore_index, "
        "Tensor(a!) grad_feat) -> ()");
  m.def("_cuda_class_distance_maps(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index, "
        "float eps, Tensor(a!) intra, Tensor(b!) inter, Tensor(c!) inter_class) -> ()");
  m.def("_cuda_class_distance_maps_backward(Tensor grad_intra, Tensor grad_inter, Tensor feat, Tensor labels, "
        "Tensor protos, Tensor inter_class, int ignore_index, float eps, bool need_feat, bool need_protos, "
        "bool deterministic, Tensor(a!) grad_feat, Tensor(b!) grad_protos) -> ()");
  m.def("_cuda_masked_feature_mse(Tensor student, Tensor teacher, Tensor weight, Tensor(a!) loss) -> ()");
  m.def("_cuda_masked_feature_mse_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor weight, "
        "bool need_student, bool need_teacher, Tensor(a!) grad_student, Tensor(b!) grad_teacher) -> ()");
  m.def("_cuda_teacher_entropy(Tensor logits, float temperature, Tensor(a!) entropy, Tensor(b!) pred) -> ()");
}
