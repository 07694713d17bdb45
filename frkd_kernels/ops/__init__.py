"""The frkd ops, one module per op (a vertical slice: schema, checks, reference, compiled-kernel
call, routing, fake and autograd). Importing this package defines ``torch.ops.frkd.*``.
The op contract is docs/ops.md; the shared rules and registration helpers are ``_library``."""
from . import class_distance_maps, masked_feature_mse, prototype_pool, relation_kl, teacher_entropy  # noqa: F401
