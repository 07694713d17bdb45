// frkd_kernels._C: a plain Python module whose import loads this library, which registers the
// private C++ ops. Schemas of the CPU backend's ops (frkd::_cpu_*) are defined here; their CPU
// kernels live in csrc/cpu/. Outputs are out-arguments allocated by frkd_kernels/cpu_backend.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// No Python bindings: the ops are reached through torch.ops.frkd.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY_FRAGMENT(frkd, m) {
  m.def("_cpu_prototype_pool(Tensor feat, Tensor labels, int ignore_index, Tensor(a!) protos, "
        "Tensor(b!) counts) -> ()");
  m.def("_cpu_prototype_pool_backward(Tensor grad_protos, Tensor labels, Tensor counts, int ignore_index, "
        "Tensor(a!) grad_feat) -> ()");
  m.def("_cpu_class_distance_maps(Tensor feat, Tensor labels, Tensor protos, Tensor counts, int ignore_index, "
        "float eps, Tensor(a!) intra, Tensor(b!) inter, Tensor(c!) inter_class) -> ()");
  m.def("_cpu_class_distance_maps_backward(Tensor grad_intra, Tensor grad_inter, Tensor feat, Tensor labels, "
        "Tensor protos, Tensor inter_class, int ignore_index, float eps, bool need_feat, bool need_protos, "
        "Tensor(a!) grad_feat, Tensor(b!) grad_protos) -> ()");
  m.def("_cpu_masked_feature_mse(Tensor student, Tensor teacher, Tensor weight, Tensor(a!) loss) -> ()");
  m.def("_cpu_masked_feature_mse_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor weight, "
        "bool need_student, bool need_teacher, Tensor(a!) grad_student, Tensor(b!) grad_teacher) -> ()");
  m.def("_cpu_teacher_entropy(Tensor logits, float temperature, Tensor(a!) entropy, Tensor(b!) pred) -> ()");
}
