// frkd_kernels._C: a plain Python module whose import loads this library, which registers the
// CPU kernels (and, in CUDA builds, the CUDA kernels) of the private ops frkd::_cpu_* / _cuda_*.
// The ops' schemas are defined once, in Python (frkd_kernels/ops/<op>.py); this library only
// registers kernels for them. Outputs are out-arguments allocated by frkd_kernels/_compiled.py.
//
// The CPU kernels are compiled here as one translation unit: the torch headers are parsed once,
// which is most of the build time on a small machine.
#include <Python.h>

#include "cpu/class_distance_maps.cpp"
#include "cpu/masked_feature_mse.cpp"
#include "cpu/prototype_pool.cpp"
#include "cpu/relation_kl.cpp"
#include "cpu/teacher_entropy.cpp"

extern "C" {
// No Python bindings: the ops are reached through torch.ops.frkd.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
