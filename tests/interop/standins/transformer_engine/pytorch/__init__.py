"""transformer_engine.pytorch stand-in: the modules' parameters and `_extra_state`, no kernels."""

import torch

from . import distributed, fp8  # noqa: F401
from .fp8 import autocast, fp8_autocast, fp8_model_init, quantized_model_init  # noqa: F401


def _no_kernel(*args, **kwargs):
    raise NotImplementedError("transformer_engine stand-in: no kernels (checkpoint structure only)")


def _local(n, tp_size, split):
    if split:
        assert n % tp_size == 0, (n, tp_size)
        return n // tp_size
    return n


class TransformerEngineBaseModule(torch.nn.Module):
    """What Megatron-Core reads of TE's base module: `_extra_state` and the FP8 flags (off)."""

    def __init__(self):
        super().__init__()
        self.fp8 = False
        self.fp8_calibration = False
        self.fp8_meta = {"fp8_checkpoint": False, "recipe": None}

    def init_fp8_metadata(self, num_gemms=1):
        pass

    def get_extra_state(self):
        # TE >= 2 without FP8: an empty uint8 tensor.
        return torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state):
        pass

    def _decode_extra_state(self, state):
        return None

    def _encode_extra_state(self, state):
        return torch.empty(0, dtype=torch.uint8)

    def set_tensor_parallel_group(self, tp_group):
        self.tp_group = tp_group

    forward = _no_kernel


def _param(*shape, dtype=None):
    return torch.nn.Parameter(torch.empty(*shape, dtype=dtype or torch.get_default_dtype()))


class Linear(TransformerEngineBaseModule):
    def __init__(self, in_features, out_features, *, tp_size=1, parallel_mode=None, bias=True,
                 params_dtype=None, init_method=None, tp_group=None, **kwargs):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.parallel_mode, self.tp_size, self.tp_group = parallel_mode, tp_size, tp_group
        self.use_bias = bias
        out = _local(out_features, tp_size, parallel_mode == "column")
        inp = _local(in_features, tp_size, parallel_mode == "row")
        self.weight = _param(out, inp, dtype=params_dtype)
        if bias:
            self.bias = _param(out, dtype=params_dtype)
        else:
            self.bias = None


class LayerNormLinear(TransformerEngineBaseModule):
    def __init__(self, in_features, out_features, *, tp_size=1, parallel_mode=None, bias=True,
                 normalization="LayerNorm", params_dtype=None, init_method=None, tp_group=None, **kwargs):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.parallel_mode, self.tp_size, self.tp_group = parallel_mode, tp_size, tp_group
        self.use_bias = bias
        self.normalization = normalization
        out = _local(out_features, tp_size, parallel_mode == "column")
        self.layer_norm_weight = _param(in_features, dtype=params_dtype)
        if normalization == "LayerNorm":
            self.layer_norm_bias = _param(in_features, dtype=params_dtype)
        self.weight = _param(out, in_features, dtype=params_dtype)
        if bias:
            self.bias = _param(out, dtype=params_dtype)
        else:
            self.bias = None


class GroupedLinear(TransformerEngineBaseModule):
    def __init__(self, num_gemms, in_features, out_features, *, tp_size=1, parallel_mode=None, bias=True,
                 params_dtype=None, init_method=None, tp_group=None, **kwargs):
        super().__init__()
        self.num_gemms = num_gemms
        self.in_features, self.out_features = in_features, out_features
        self.parallel_mode, self.tp_size, self.tp_group = parallel_mode, tp_size, tp_group
        self.use_bias = bias
        out = _local(out_features, tp_size, parallel_mode == "column")
        inp = _local(in_features, tp_size, parallel_mode == "row")
        for i in range(num_gemms):
            setattr(self, f"weight{i}", _param(out, inp, dtype=params_dtype))
            if bias:
                setattr(self, f"bias{i}", _param(out, dtype=params_dtype))


class LayerNorm(TransformerEngineBaseModule):
    def __init__(self, normalized_shape, eps=1e-5, params_dtype=None, **kwargs):
        super().__init__()
        self.weight = _param(normalized_shape, dtype=params_dtype)
        self.bias = _param(normalized_shape, dtype=params_dtype)


class RMSNorm(TransformerEngineBaseModule):
    def __init__(self, normalized_shape, eps=1e-5, params_dtype=None, **kwargs):
        super().__init__()
        self.weight = _param(normalized_shape, dtype=params_dtype)


class DotProductAttention(TransformerEngineBaseModule):
    def __init__(self, *args, **kwargs):
        super().__init__()


from transformer_engine._absent import module_getattr as _mg  # noqa: E402

__getattr__ = _mg(__name__)
