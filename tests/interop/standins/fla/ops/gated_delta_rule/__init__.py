def chunk_gated_delta_rule(*args, **kwargs):
    raise NotImplementedError("fla stand-in: no kernels (checkpoint structure only)")
