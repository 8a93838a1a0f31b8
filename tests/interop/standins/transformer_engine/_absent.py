"""Everything of TransformerEngine this stand-in does not model: importable, unusable.

Megatron-Core imports many TE names at module level (FP8 tensors, fused kernels,
optimizers) and keeps them for paths the checkpoint never takes. Any other name of a
module of this stand-in resolves to a placeholder class whose use raises, so an
unexpected code path fails loudly instead of doing something plausible. Submodules that
this stand-in does not have raise ImportError, as with a TE build without that feature.
"""

import importlib
import os

_ROOT = os.path.dirname(os.path.abspath(__file__))


class _Meta(type):
    """Attributes of a placeholder (te.pytorch.ops.X, Fn.apply) are placeholders too."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls.__qualname__}.{name}")


def placeholder(qualname):
    def _refuse(*args, **kwargs):
        raise NotImplementedError(f"transformer_engine stand-in: {qualname} is not modelled")

    return _Meta(qualname.rsplit(".", 1)[-1], (), {"__init__": _refuse, "__qualname__": qualname,
                                                    "__module__": qualname.rsplit(".", 1)[0]})


def module_getattr(modname):
    cache = {}

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        # A real file of this stand-in (`from transformer_engine import common` asks the
        # package for the attribute before importing the submodule).
        sub = os.path.join(_ROOT, *modname.split(".")[1:], name)
        if os.path.exists(sub + ".py") or os.path.exists(os.path.join(sub, "__init__.py")):
            return importlib.import_module(f"{modname}.{name}")
        if name not in cache:
            cache[name] = placeholder(f"{modname}.{name}")
        return cache[name]

    return __getattr__
