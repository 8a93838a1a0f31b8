"""Stand-in for NVIDIA TransformerEngine on a CPU-only machine (interop tests only).

TransformerEngine ships on PyPI only as a CUDA build. Megatron-Core's TE wrappers
(megatron/core/extensions/transformer_engine.py: TELinear, TELayerNormColumnParallelLinear,
TEGroupedLinear, TENorm, ...) subclass TE's modules and checkpoint what those modules own.
This package supplies only that: the base classes' parameter names and per-rank shapes
(weight / bias / layer_norm_weight / weight{i} ...) and TE's `_extra_state` (an empty uint8
tensor, TE's payload without FP8), so that Megatron's own wrappers run their real __init__
and sharded_state_dict(). No forward pass exists: calling one raises.

It is not TransformerEngine and must never be on PYTHONPATH outside tests/interop.
"""

__version__ = "2.9.0"

from . import _absent  # noqa: E402

__getattr__ = _absent.module_getattr(__name__)

from . import common, pytorch  # noqa: E402,F401
