"""Fused MoE router kernels: imported unguarded by Megatron-Core for TE >= 2.7; never called (moe_router_fusion off)."""

from transformer_engine._absent import module_getattr as _mg

__getattr__ = _mg(__name__)
