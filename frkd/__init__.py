"""frkd: a trainer for feature-refine knowledge distillation in semantic segmentation.

Entry points: ``python -m frkd.train`` and ``python -m frkd.evaluate``. The distillation
primitives come from ``frkd_kernels``.
"""
