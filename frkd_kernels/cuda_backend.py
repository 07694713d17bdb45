"""The ``cuda`` backend: CUDA C++ kernels (``csrc/cuda``) behind the private ops ``frkd::_cuda_*``.

See ``_compiled.CompiledBackend`` for the backend functions. Class sums use atomics unless
``torch.are_deterministic_algorithms_enabled()``, which selects an atomic-free path with a fixed
reduction order.
"""
from ._compiled import CompiledBackend

BACKEND = CompiledBackend("cuda")
