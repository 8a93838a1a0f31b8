from . import recipe  # noqa: F401


from transformer_engine._absent import module_getattr as _mg  # noqa: E402

__getattr__ = _mg(__name__)
