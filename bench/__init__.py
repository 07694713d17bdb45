"""frkd benchmarks: every op, the IFV term and the FRKD feature loss, per provider and mode.

Entry points: ``python -m bench`` or ``python bench/run.py`` (``--help`` lists the flags).
Providers are the live frkd backends (``triton``, ``cuda``, ``cpu``, ``torch``) and three peers:
``eager`` (the pure-PyTorch reference called directly), ``compile`` (``torch.compile`` of it)
and ``cirkd_loop`` (a CIRKD-style per-class loop, IFV term only). Not a test suite.
"""
