"""The ``cuda`` backend: CUDA C++ kernels (``csrc/cuda``) behind the private ops ``frkd::_cuda_*``.

Same functions and signatures as ``reference.py`` (see ``_compiled.py`` for how outputs and
operands are prepared). Class sums use atomics unless ``torch.are_deterministic_algorithms_enabled()``,
which selects an atomic-free path with a fixed reduction order.
"""
from ._compiled import CompiledOps

OPS = CompiledOps("cuda", "_cuda_", "CUDA", deterministic_flag=True)
OPS.export(globals())
