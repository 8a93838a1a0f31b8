#!/usr/bin/env python3
"""Megatron-Bridge's own AutoBridge.import_ckpt, on CPU: the directory it writes is the
reference for megabridge's checkpoint conventions (docs/torch-dist.md).

  torchrun --nproc-per-node 1 bridge_import_ckpt.py HF_DIR OUT [tp,pp,ep,etp]

import_ckpt = from_hf_pretrained -> to_megatron_model(load weights) -> save_megatron_model(
hf_tokenizer_path=HF_DIR, low_memory_save=True). The model is built as in oracle.py (same
CPU workarounds); the weights and the save are Megatron-Bridge's own calls.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402  (puts the stand-ins on sys.path)
import torch.distributed as dist  # noqa: E402

# megatron.bridge.training imports, at module level, the whole training stack (data loaders
# such as megatron-energon, loggers, ...). None of it runs when saving a checkpoint. Only
# while that package is imported, a module that is not installed becomes an empty module
# whose every attribute raises on use; the names are printed, so a save that needed one
# would fail loudly.
FAKED = []


class _MissingFinder:
    active = False

    def find_spec(self, name, path, target=None):
        import importlib.machinery
        if not self.active or name.split(".")[0] in ("transformer_engine", "fla", "torch"):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        import types
        from transformer_engine._absent import module_getattr
        FAKED.append(spec.name)
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = module_getattr(spec.name)
        return m

    def exec_module(self, module):
        pass


def import_training():
    finder = _MissingFinder()
    sys.meta_path.append(finder)  # last: only modules that are not installed
    finder.active = True
    try:
        import megatron.bridge.training.model_load_save  # noqa: F401
    finally:
        finder.active = False
    oracle.log(f"not installed, faked while importing megatron.bridge.training: {sorted(set(FAKED))}")


def main():
    hf, out = sys.argv[1], sys.argv[2]
    tp, pp, ep, etp = (int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "1,1,1,1").split(","))
    oracle.cpu_shims()
    # generate_state_dict asks for the CUDA RNG state even with save_rng=False (not saved)
    import torch
    torch.cuda.get_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    dist.init_process_group("gloo")
    oracle.patch_mcore_metadata()
    from megatron.bridge import AutoBridge
    import_training()
    bridge = AutoBridge.from_hf_pretrained(hf)
    model = oracle.build(bridge, tp, pp, ep, etp)
    bridge.load_hf_weights(model)
    kwargs = {}
    if hasattr(bridge._model_bridge, "get_hf_tokenizer_kwargs"):
        kwargs = bridge._model_bridge.get_hf_tokenizer_kwargs() or {}
    bridge.save_megatron_model(model, out, hf_tokenizer_path=hf, hf_tokenizer_kwargs=kwargs, low_memory_save=True)
    oracle.log(f"ok: Megatron-Bridge import_ckpt wrote {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
