#!/usr/bin/env python3
"""Checks what a conversion records about an MTP layer it left out.

The HF checkpoint declares MTP (text_config.mtp_num_hidden_layers > 0) but holds
no mtp.* tensor, as transformers' save_pretrained writes it. Read with json and
yaml only (no megabridge code), the output must say the model has no MTP, in
every place a consumer looks:

* manifest.json: model.mtp = {declared: N, converted: 0, note}, and model.hf_config
  the original config.json with text_config.mtp_num_hidden_layers 0;
* hf/config.json (what export writes): the same config;
* megatron_config.yaml (and iter_*/run_config.yaml when present): mtp_num_layers 0,
  which Megatron-Core builds without an MTP block (and without the last stage's
  embedding copy).

usage: check_mtp_dropped.py HF_DIR OUT_DIR
"""

import glob
import json
import os
import sys

import yaml


def main():
    hf, out = sys.argv[1:3]
    errors = []
    orig = json.load(open(os.path.join(hf, "config.json")))
    declared = orig["text_config"].get("mtp_num_hidden_layers", 0)
    if not declared:
        errors.append(f"{hf}/config.json declares no MTP layer: not an MTP-dropped case")
    want = json.loads(json.dumps(orig))
    want["text_config"]["mtp_num_hidden_layers"] = 0
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    mtp = manifest["model"].get("mtp", {})
    if mtp.get("declared") != declared or mtp.get("converted") != 0 or not mtp.get("note"):
        errors.append(f"manifest model.mtp is {mtp}, expected declared {declared}, converted 0 and a note")
    if manifest["model"]["hf_config"] != want:
        errors.append("manifest model.hf_config is not the original config with mtp_num_hidden_layers 0")
    if json.load(open(os.path.join(out, "hf", "config.json"))) != want:
        errors.append("hf/config.json is not the original config with mtp_num_hidden_layers 0")
    tensors = [t["name"] for t in manifest["source"]["tensors"]]
    if any(n.startswith("mtp.") for n in tensors):
        errors.append("manifest source lists mtp.* tensors")
    yamls = [os.path.join(out, "megatron_config.yaml")] + glob.glob(os.path.join(out, "iter_*", "run_config.yaml"))
    for y in yamls:
        doc = yaml.safe_load(open(y))
        # run_config.yaml nests megabridge's model configuration under `megabridge`
        # (its `model` block holds only what Megatron-Bridge's loader reads).
        doc = doc.get("megabridge", doc)
        lm = doc.get("language_model", doc.get("model", {}))
        value = lm.get("mtp_num_layers", "absent")
        if value != 0:
            errors.append(f"{y}: mtp_num_layers is {value!r}, expected 0")
    if errors:
        print(f"FAIL: {out}")
        for e in errors:
            print("  " + e)
        return 1
    print(f"OK: {out} records the model without MTP ({declared} declared, 0 converted) in the manifest, "
          f"hf/config.json and {len(yamls)} YAML file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
