"""frkd: a trainer for feature-refine knowledge distillation in semantic segmentation.

Entry points: ``python -m frkd.train`` (teacher phase, then distillation; also under torchrun)
and ``python -m frkd.evaluate --checkpoint PATH``. The distillation primitives come from
``frkd_kernels``.

Modules: ``config`` (the typed run config, per-dataset defaults, validation), ``pipeline``
(``run(config)``: data -> models -> loss -> engine), ``cli`` (flags -> config), ``benchmark``
(the synthetic benchmark as configs), ``engine`` (training loop), ``inference``
(whole/sliding-window prediction, evaluation), ``metrics`` (confusion matrix, mIoU),
``checkpoint`` (atomic files, RNG state), ``sampling`` (resumable data order), ``distributed``,
``run_log`` (metrics.jsonl, summary.json), ``plots``; ``models``, ``data``, ``losses``.
"""
