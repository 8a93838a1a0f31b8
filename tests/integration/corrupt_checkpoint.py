#!/usr/bin/env python3
"""Makes a corrupted copy of a HF checkpoint for the bad-input tests.

usage: corrupt_checkpoint.py SRC DST CASE

Cases edit one shard file, the index or config.json of the copy:
  truncated, header_too_long, malformed_json, overlap, out_of_bounds, unknown_dtype,
  wrong_shape, missing_tensor, path_traversal, unsupported_arch
Prints the file and tensor the converter's error must name.
"""

import json
import os
import shutil
import struct
import sys


def shard_of(dst, tensor):
    idx = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
    return os.path.join(dst, idx["weight_map"][tensor]), idx


def read(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write(path, header, body, raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + body)


def main():
    src, dst, case = sys.argv[1:4]
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    victim = "model.language_model.layers.3.self_attn.k_proj.weight"
    path, idx = shard_of(dst, victim)
    header, body = read(path)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    if case == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:-100])
        print(os.path.basename(path), names[-1])
    elif case == "header_too_long":
        data = bytearray(open(path, "rb").read())
        data[0:8] = struct.pack("<Q", len(data) + 1000)
        open(path, "wb").write(bytes(data))
        print(os.path.basename(path), "header length")
    elif case == "malformed_json":
        raw = json.dumps(header, separators=(",", ":")).encode().replace(b'"dtype"', b'"dtype"::', 1)
        write(path, None, body, raw_header=raw)
        print(os.path.basename(path), "malformed")
    elif case == "overlap":
        a, b = names[0], names[1]
        header[b]["data_offsets"][0] -= 2
        header[b]["data_offsets"][1] -= 2
        write(path, header, body)
        print(os.path.basename(path), b)
    elif case == "out_of_bounds":
        # The last tensor claims 64 bytes more than the file holds (its shape
        # grown to match, so that only the bounds are wrong).
        last = names[-1]
        header[last]["data_offsets"][1] += 64
        size = {"BF16": 2, "F32": 4}[header[last]["dtype"]]
        span = header[last]["data_offsets"][1] - header[last]["data_offsets"][0]
        header[last]["shape"] = [span // size]
        write(path, header, body)
        print(os.path.basename(path), last)
    elif case == "unknown_dtype":
        header[victim]["dtype"] = "Q7"
        write(path, header, body)
        print(os.path.basename(path), victim)
    elif case == "wrong_shape":
        s = header[victim]["shape"]
        header[victim]["shape"] = [s[1], s[0]]  # same byte count, transposed
        write(path, header, body)
        print(os.path.basename(path), victim)
    elif case == "missing_tensor":
        # Drop it from its file (rewriting the data section) and from the index.
        meta = header.pop(victim)
        b, e = meta["data_offsets"]
        body = body[:b] + body[e:]
        for k in names:
            if k != victim and header[k]["data_offsets"][0] >= e:
                header[k]["data_offsets"] = [x - (e - b) for x in header[k]["data_offsets"]]
        write(path, header, body)
        del idx["weight_map"][victim]
        json.dump(idx, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
        print(os.path.basename(dst), victim)  # a missing tensor is named with the checkpoint
    elif case == "path_traversal":
        idx["weight_map"][victim] = "../" + os.path.basename(path)
        json.dump(idx, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
        print("model.safetensors.index.json", victim)
    elif case == "unsupported_arch":
        cfg = json.load(open(os.path.join(dst, "config.json")))
        cfg["architectures"] = ["Qwen3NextForCausalLM"]
        json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
        print("config.json", "Qwen3NextForCausalLM")
    else:
        raise SystemExit(f"unknown case {case}")


if __name__ == "__main__":
    main()
