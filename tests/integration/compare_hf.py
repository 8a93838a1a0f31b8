#!/usr/bin/env python3
"""Byte comparison of two HF checkpoints, independent of megabridge.

Same tensor names, dtypes, shapes and bytes; same file map (index weight_map,
or the same single file and no index when the original had none); same
config.json; the non-weight files carried over unchanged.

usage: compare_hf.py ORIGINAL EXPORTED [--any-file-map] [--no-side-files] [--mtp-dropped]

--mtp-dropped: the original declares an MTP layer but holds no mtp.* tensor (as
transformers saves it); the export's config.json must be the original's with
text_config.mtp_num_hidden_layers 0, and nothing else changed.
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
    ap.add_argument("--mtp-dropped", action="store_true",
                    help="expect the export's config to declare no MTP layer (see above)")
    a = ap.parse_args()
    errors = []
    cfg_a, ta = read_hf(a.a)
    cfg_b, tb = read_hf(a.b)
    if a.mtp_dropped:
        if any(n.startswith("mtp.") for n in ta):
            errors.append("--mtp-dropped, but the original holds mtp.* tensors")
        if not cfg_a["text_config"].get("mtp_num_hidden_layers"):
            errors.append("--mtp-dropped, but the original config declares no MTP layer")
        cfg_a = json.loads(json.dumps(cfg_a))
        cfg_a["text_config"]["mtp_num_hidden_layers"] = 0
    if cfg_a != cfg_b:
        errors.append("config.json differs" + (" (expected the original's with mtp_num_hidden_layers 0)"
                                               if a.mtp_dropped else ""))
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
        ia, ib = (os.path.join(d, "model.safetensors.index.json") for d in (a.a, a.b))
        if os.path.exists(ia) != os.path.exists(ib):
            errors.append(f"model.safetensors.index.json: in the original {os.path.exists(ia)}, "
                          f"in the export {os.path.exists(ib)}")
        elif os.path.exists(ia):
            if json.load(open(ia))["weight_map"] != json.load(open(ib))["weight_map"]:
                errors.append("the index weight_map (file per tensor) differs")
        else:
            fa, fb = ({f for f in os.listdir(d) if f.endswith(".safetensors")} for d in (a.a, a.b))
            if fa != fb:
                errors.append(f"safetensors files differ: {sorted(fa)} vs {sorted(fb)}")
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
