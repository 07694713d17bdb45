"""frkd: a trainer for feature-refine knowledge distillation in semantic segmentation.

Entry points: ``python -m frkd.train`` (teacher phase, then distillation; also under torchrun)
and ``python -m frkd.evaluate --checkpoint PATH``. The distillation primitives come from
``frkd_kernels``.

Modules: ``cli`` (flags, per-dataset defaults), ``engine`` (training loop), ``inference``
(whole/sliding-window prediction, evaluation), ``metrics`` (confusion matrix, mIoU),
``checkpoint`` (atomic files, RNG state), ``sampling`` (resumable data order), ``distributed``,
``run_log`` (metrics.jsonl, summary.json), ``plots``; ``models``, ``data``, ``losses``.
"""
