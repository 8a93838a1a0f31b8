"""TE 2.x quantized tensor classes: Megatron-Core imports QuantizedTensor unguarded for isinstance checks; no parameter here is one."""

from transformer_engine._absent import module_getattr as _mg

__getattr__ = _mg(__name__)
