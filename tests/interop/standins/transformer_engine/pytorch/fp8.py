import contextlib


class FP8GlobalStateManager:
    @staticmethod
    def is_fp8_enabled():
        return False

    @staticmethod
    def get_fp8_recipe():
        return None

    @staticmethod
    def is_fp8_available():
        return False, "transformer_engine stand-in"


@contextlib.contextmanager
def fp8_autocast(*args, **kwargs):
    yield


@contextlib.contextmanager
def fp8_model_init(*args, **kwargs):
    yield


autocast = fp8_autocast
quantized_model_init = fp8_model_init


from transformer_engine._absent import module_getattr as _mg  # noqa: E402

__getattr__ = _mg(__name__)
