"""Distillation losses for frkd (DESIGN §3): ``feature_terms`` in ``frkd.losses.frkd``."""
