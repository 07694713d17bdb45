"""The ``cpu`` backend: C++ kernels (``csrc/cpu``) behind the private ops ``frkd::_cpu_*``.

See ``_compiled.CompiledBackend`` for the backend functions. Sums are deterministic: fixed
reduction order, no atomics.
"""
from ._compiled import CompiledBackend

BACKEND = CompiledBackend("cpu")
