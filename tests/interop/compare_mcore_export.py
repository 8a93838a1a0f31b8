#!/usr/bin/env python3
"""megabridge's export of a checkpoint that Megatron-Core saved from Megatron-Bridge's model,
against the original HF checkpoint (independent of megabridge: safetensors + torch).

Every tensor must come back bit for bit, except the two that Megatron-Bridge keeps in the
model's bf16 while HF stores fp32: `linear_attn.A_log` (HF -> bf16) and the GDN
`linear_attn.norm.weight` (Megatron-Bridge stores bf16(w - 1), zero-centred; back in HF it is
bf16(that + 1), RMSNorm2ZeroCenteredRMSNormMapping). These are expected as exactly that
rounding, stored as bf16.

usage: compare_mcore_export.py ORIGINAL_HF EXPORTED_HF
"""
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file


def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        out.update(load_file(f))
    return out


def expected(name, t):
    if name.endswith("linear_attn.A_log") and t.dtype == torch.float32:
        return t.to(torch.bfloat16)
    if name.endswith("linear_attn.norm.weight") and t.dtype == torch.float32:
        return ((t - 1).to(torch.bfloat16).float() + 1).to(torch.bfloat16)
    return t


def main():
    a, b = sys.argv[1], sys.argv[2]
    errors = []
    if json.load(open(os.path.join(a, "config.json"))) != json.load(open(os.path.join(b, "config.json"))):
        errors.append("config.json differs")
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        errors.append(f"names differ: only original {sorted(ta.keys() - tb.keys())[:5]}, "
                      f"only exported {sorted(tb.keys() - ta.keys())[:5]}")
    rounded = 0
    for name in sorted(ta.keys() & tb.keys()):
        want, got = expected(name, ta[name]), tb[name]
        rounded += want is not ta[name]
        if want.dtype != got.dtype or want.shape != got.shape:
            errors.append(f"{name}: {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
        elif want.contiguous().view(torch.uint8).numpy().tobytes() != got.contiguous().view(torch.uint8).numpy().tobytes():
            errors.append(f"{name}: bytes differ")
    if errors:
        print("\n".join(errors[:30]))
        sys.exit(f"FAILED: {len(errors)} differences")
    print(f"ok: {len(ta)} tensors equal to the original ({rounded} as Megatron-Bridge's bf16 rounding)")


if __name__ == "__main__":
    main()
