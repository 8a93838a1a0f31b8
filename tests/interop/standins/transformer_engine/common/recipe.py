"""Recipe classes Megatron-Core subclasses or isinstance-checks at import; FP8 is never used."""


class Recipe:
    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)


class DelayedScaling(Recipe):
    pass


class Float8CurrentScaling(Recipe):
    pass


class MXFP8BlockScaling(Recipe):
    pass


class Float8BlockScaling(Recipe):
    pass


class NVFP4BlockScaling(Recipe):
    pass


class Format:
    E4M3 = "E4M3"
    HYBRID = "HYBRID"


from transformer_engine._absent import module_getattr as _mg  # noqa: E402

__getattr__ = _mg(__name__)
