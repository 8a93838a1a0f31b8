#!/usr/bin/env python3
"""Byte comparison of two HF checkpoints, independent of megabridge.

Same tensor names, dtypes, shapes and bytes; same file map (index weight_map);
same config.json; the non-weight files carried over unchanged.

usage: compare_hf.py ORIGINAL EXPORTED [--any-file-map]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen35_reference import read_hf  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--any-file-map", action="store_true", help="do not require the same shard files")
    ap.add_argument("--no-side-files", action="store_true",
                    help="do not require the tokenizer and other non-weight files")
    a = ap.parse_args()
    errors = []
    cfg_a, ta = read_hf(a.a)
    cfg_b, tb = read_hf(a.b)
    if cfg_a != cfg_b:
        errors.append("config.json differs")
    if set(ta) != set(tb):
        errors.append(f"tensor names differ: only in A {sorted(set(ta) - set(tb))[:5]}, "
                      f"only in B {sorted(set(tb) - set(ta))[:5]}")
    for name in sorted(set(ta) & set(tb)):
        (da, xa), (db, xb) = ta[name], tb[name]
        if da != db or xa.shape != xb.shape:
            errors.append(f"{name}: {da} {xa.shape} vs {db} {xb.shape}")
        elif xa.tobytes() != xb.tobytes():
            errors.append(f"{name}: bytes differ")
    if not a.any_file_map:
        wa = json.load(open(os.path.join(a.a, "model.safetensors.index.json")))["weight_map"]
        wb = json.load(open(os.path.join(a.b, "model.safetensors.index.json")))["weight_map"]
        if wa != wb:
            errors.append("the index weight_map (file per tensor) differs")
    for f in [] if a.no_side_files else sorted(os.listdir(a.a)):
        if f.endswith(".safetensors") or f in ("model.safetensors.index.json", "config.json"):
            continue
        pb = os.path.join(a.b, f)
        if not os.path.exists(pb):
            errors.append(f"{f} was not carried over")
        elif open(os.path.join(a.a, f), "rb").read() != open(pb, "rb").read():
            errors.append(f"{f} differs")
    if errors:
        print(f"FAIL: {a.a} vs {a.b}")
        for e in errors[:30]:
            print("  " + e)
        return 1
    print(f"OK: {len(ta)} tensors byte-identical, same config"
          + ("" if a.any_file_map else ", same file map") + ("" if a.no_side_files else ", same side files"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
