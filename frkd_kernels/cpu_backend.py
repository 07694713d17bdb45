"""The ``cpu`` backend: C++ kernels (``csrc/cpu``) behind the private ops ``frkd::_cpu_*``.

Same functions and signatures as ``reference.py`` (see ``_compiled.py`` for how outputs and
operands are prepared). Sums are deterministic: fixed reduction order, no atomics.
"""
from ._compiled import CompiledOps

OPS = CompiledOps("cpu", "_cpu_", "CPU", deterministic_flag=False)
OPS.export(globals())
