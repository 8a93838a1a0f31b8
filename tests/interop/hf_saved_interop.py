#!/usr/bin/env python3
"""The consumer of an export is transformers: load both with from_pretrained.

ORIGINAL is a checkpoint as transformers (or Qwen) wrote it, EXPORTED what
megabridge exported after importing it. Both are loaded with transformers'
own from_pretrained (dtype="auto": the config's bfloat16, as a user loads
them; and dtype=float32, which keeps F32 tensors such as Qwen3.6's GDN norm
unrounded). Required, for each dtype:

* no missing, unexpected or mismatched keys when loading the export;
* every parameter and buffer equal bit for bit to the original's;
* logits on a fixed input (text plus one 4x4-patch image, so that the vision
  tower runs) equal bit for bit.

usage: hf_saved_interop.py ORIGINAL EXPORTED
"""

import json
import sys

import torch
import transformers
from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

CLASSES = {"Qwen3_5ForConditionalGeneration": Qwen3_5ForConditionalGeneration,
           "Qwen3_5MoeForConditionalGeneration": Qwen3_5MoeForConditionalGeneration}


def fixed_input(cfg):
    """Text tokens, a vision block and one 4x4-patch image (4 merged image tokens)."""
    image, vs, ve = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    ids = torch.tensor([[17, 3, 99, vs] + [image] * 4 + [ve, 41, 7, 120, 5]])
    g = torch.Generator().manual_seed(7)
    v = cfg.vision_config
    pixels = torch.randn(16, v.in_channels * v.temporal_patch_size * v.patch_size ** 2, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "image_grid_thw": torch.tensor([[1, 4, 4]]), "mm_token_type_ids": (ids == image).to(torch.int32)}


def bits(t):
    """The bytes of a tensor: bitwise equality, NaN payloads and -0.0 included."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def load(cls, path, dtype):
    model, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True)
    model.eval()
    return model, {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}


def main():
    orig, exported = sys.argv[1:3]
    arch = json.load(open(f"{orig}/config.json"))["architectures"][0]
    cls = CLASSES[arch]
    errors = []
    for dtype in ("auto", torch.float32):
        a, _ = load(cls, orig, dtype)
        b, info = load(cls, exported, dtype)
        for k, v in info.items():
            if v:
                errors.append(f"dtype={dtype}: loading the export reports {k}: {sorted(v)[:5]}")
        sa, sb = a.state_dict(), b.state_dict()
        if set(sa) != set(sb):
            errors.append(f"dtype={dtype}: parameter names differ: {sorted(set(sa) ^ set(sb))[:5]}")
        for name in sorted(set(sa) & set(sb)):
            x, y = sa[name], sb[name]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(bits(x), bits(y)):
                errors.append(f"dtype={dtype}: {name} differs ({x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)})")
        with torch.no_grad():
            la = a(**fixed_input(a.config)).logits
            lb = b(**fixed_input(b.config)).logits
        same = la.dtype == lb.dtype and la.shape == lb.shape and torch.equal(bits(la), bits(lb))
        if not same:
            errors.append(f"dtype={dtype}: logits differ (max |diff| {(la.float() - lb.float()).abs().max().item()})")
        if not torch.isfinite(la).all():
            errors.append(f"dtype={dtype}: the original's logits are not finite; the input is not a test")
        print(f"  dtype={dtype}: {len(sa)} tensors, logits {tuple(la.shape)} {la.dtype}, bitwise equal: {same}")
    if errors:
        print(f"FAIL: {exported} vs {orig}")
        for e in errors[:30]:
            print("  " + e)
        return 1
    print(f"OK: {exported} loads with transformers {transformers.__version__} from_pretrained; parameters and "
          f"logits equal bit for bit to {orig}'s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
