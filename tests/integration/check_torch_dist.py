#!/usr/bin/env python3
"""Checks a megabridge torch_dist checkpoint with Python's standard library only.

* .metadata is parsed by pickle with stand-in classes for torch's (no torch needed),
* every chunk item is opened with zipfile (which checks CRCs), its data.pkl parsed,
* the chunks of every key are assembled and compared bit for bit with the tensors
  dist_reference.py computes independently from the HF checkpoint,
* the set of keys, global shapes, dtypes and _extra_state objects must be exactly
  the expected one; chunks must tile every key; metadata.json, common.pt and the
  tracker file must be what Megatron-Core reads.

usage: check_torch_dist.py HF_DIR OUT_DIR [--no-mtp]
  --no-mtp: the import left the MTP layer out (config.json declares it, the checkpoint has none)
"""

import io
import json
import os
import pickle
import pickletools
import struct
import sys
import zipfile

import numpy as np
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dist_reference import expected_keys, expected_objects  # noqa: E402
from qwen35_reference import DTYPES  # noqa: E402
from region_checksum import region_file_checksum  # noqa: E402

TORCH_DTYPES = {"bfloat16": "BF16", "float32": "F32", "float16": "F16", "uint8": "U8"}
STORAGES = {"BFloat16Storage": "BF16", "FloatStorage": "F32", "HalfStorage": "F16", "ByteStorage": "U8"}


class Obj:
    """A stand-in for any checkpoint class: records what pickle sets on it."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state
        if isinstance(state, dict):
            self.__dict__.update(state)


def stand_in(module, name):
    if module == "torch" and name == "Size":
        return tuple
    if module == "torch" and name in TORCH_DTYPES:
        return TORCH_DTYPES[name]
    if module == "torch" and name in STORAGES:
        return STORAGES[name]
    if module == "torch" and name == "strided":
        return "strided"
    if module == "collections" and name == "OrderedDict":
        return dict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
        return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, tuple(size), tuple(stride))
    if module.startswith("torch.distributed"):
        return type(name, (Obj,), {})
    raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return stand_in(module, name)

    def persistent_load(self, pid):
        return pid  # ('storage', dtype, key, location, numel)


def load_item(blob):
    z = zipfile.ZipFile(io.BytesIO(blob))
    names = z.namelist()
    root = names[0].split("/")[0]
    assert all(n.startswith(root + "/") for n in names), names
    for n in names:
        z.getinfo(n)
        z.read(n)  # zipfile verifies every record's CRC-32
    obj = Unpickler(io.BytesIO(z.read(f"{root}/data.pkl"))).load()
    byteorder = z.read(f"{root}/byteorder").decode() if f"{root}/byteorder" in names else "little"
    assert byteorder == "little", byteorder
    return z, root, obj


def tensor_of(z, root, obj):
    kind, pid, offset, size, stride = obj
    _, dtype, key, _, numel = pid
    raw = np.frombuffer(z.read(f"{root}/data/{key}"), dtype=DTYPES[dtype])
    assert raw.size == numel, (raw.size, numel)
    n = int(np.prod(size)) if size else 1
    return dtype, raw[offset:offset + n].reshape(size)


def data_region(blob, base):
    """(offset, length) in the file of the storage bytes (data/<key>) of the
    torch.save archive `blob` found at `base`, from the zip's own records."""
    z = zipfile.ZipFile(io.BytesIO(blob))
    [name] = [n for n in z.namelist() if "/data/" in n]
    zi = z.getinfo(name)
    h = zi.header_offset
    assert blob[h:h + 4] == b"PK\x03\x04", name
    n, e = struct.unpack("<HH", blob[h + 26:h + 30])
    return base + h + 30 + n + e, zi.file_size


def check_manifest_checksums(out, iter_dir, md, errors):
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    by_file = {}
    for k, info in md.storage_data.items():
        by_file.setdefault(info.relative_path, []).append((k, info))
    for f in manifest["files"]:
        scheme = f.get("checksum", manifest.get("checksum", "xxh3-64"))
        if scheme != "xxh3-64-distcp-regions":
            errors.append(f"{f['path']}: checksum scheme {scheme}, expected xxh3-64-distcp-regions")
            continue
        data = open(os.path.join(out, f["path"]), "rb").read()
        regions, own = [], {}
        for k, info in by_file.get(os.path.basename(f["path"]), []):
            if k.offset is None:
                continue  # a ShardedObject: between the data regions
            off, n = data_region(data[info.offset:info.offset + info.length], info.offset)
            regions.append((off, n))
            own[k.fqn + "@" + ",".join(str(o) for o in k.offset)] = xxhash.xxh3_64_hexdigest(data[off:off + n])
        got = region_file_checksum(data, regions)
        if got != f["xxh3"]:
            errors.append(f"{f['path']}: region checksum {got}, manifest {f['xxh3']}")
        listed = {t["name"]: t["xxh3"] for t in f.get("tensors", [])}
        if listed != own:
            bad = sorted(n for n in set(listed) | set(own) if listed.get(n) != own.get(n))
            errors.append(f"{f['path']}: per-chunk checksums differ from the bytes for {bad[:3]}")


def main():
    hf, out = sys.argv[1:3]
    no_mtp = "--no-mtp" in sys.argv[3:]
    errors = []
    iter_dir = os.path.join(out, "iter_0000000")
    if open(os.path.join(out, "latest_checkpointed_iteration.txt")).read() != "0":
        errors.append("latest_checkpointed_iteration.txt is not '0'")
    meta = json.load(open(os.path.join(iter_dir, "metadata.json")))
    if meta != {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                "common_backend_version": 1}:
        errors.append(f"metadata.json is {meta}")
    z, root, common = load_item(open(os.path.join(iter_dir, "common.pt"), "rb").read())
    if common != {"checkpoint_version": 3.0, "iteration": 0,
                  "content_metadata": {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}}:
        errors.append(f"common.pt holds {common}")
    raw_md = open(os.path.join(iter_dir, ".metadata"), "rb").read()
    pickletools.dis(raw_md, out=io.StringIO())  # a well-formed pickle, opcode by opcode
    md = Unpickler(io.BytesIO(raw_md)).load()
    assert type(md).__name__ == "Metadata", type(md)
    storage = {(k.fqn, tuple(k.offset) if k.offset is not None else None): v for k, v in md.storage_data.items()}

    want, ref = expected_keys(hf, mtp=False if no_mtp else None)
    want_objects = expected_objects(want, ref)
    tensors = {k: v for k, v in md.state_dict_metadata.items() if type(v).__name__ == "TensorStorageMetadata"}
    objects = {k for k, v in md.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata"}
    if set(tensors) != set(want):
        errors.append(f"keys: missing {sorted(set(want) - set(tensors))[:5]}, extra {sorted(set(tensors) - set(want))[:5]}")
    if objects != want_objects:
        errors.append(f"objects: missing {sorted(want_objects - objects)[:5]}, extra {sorted(objects - want_objects)[:5]}")
    files = {}
    for key in sorted(set(tensors) & set(want)):
        tm = tensors[key]
        dtype = tm.properties.state[0]
        expect = want[key]
        exp_dtype = {"bfloat16": "BF16", "float32": "F32"}[str(expect.dtype)]
        if tuple(tm.size) != expect.shape or dtype != exp_dtype:
            errors.append(f"{key}: {dtype} {tuple(tm.size)}, expected {exp_dtype} {expect.shape}")
            continue
        assembled = np.zeros(expect.shape, dtype=expect.dtype)
        covered = np.zeros(expect.shape, dtype=np.int32)
        for c in tm.chunks:
            info = storage[(key, tuple(c.offsets))]
            path = os.path.join(iter_dir, info.relative_path)
            if path not in files:
                files[path] = open(path, "rb").read()
            zz, rr, obj = load_item(files[path][info.offset:info.offset + info.length])
            cdt, arr = tensor_of(zz, rr, obj)
            if tuple(arr.shape) != tuple(c.sizes) or cdt != dtype:
                errors.append(f"{key}: chunk at {tuple(c.offsets)} holds {cdt} {arr.shape}, metadata says {tuple(c.sizes)}")
                continue
            sl = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))
            assembled[sl] = arr
            covered[sl] += 1
        if not (covered == 1).all():
            errors.append(f"{key}: chunks do not tile it exactly (min {covered.min()}, max {covered.max()})")
        elif assembled.tobytes() != expect.tobytes():
            errors.append(f"{key}: values differ from the reference")
    for k in objects & want_objects:
        info = storage[(k, None)]
        path = os.path.join(iter_dir, info.relative_path)
        blob = open(path, "rb").read()[info.offset:info.offset + info.length]
        zz, rr, obj = load_item(blob)
        if not (isinstance(obj, list) and len(obj) == 1 and tensor_of(zz, rr, obj[0])[1].size == 0):
            errors.append(f"{k}: payload is not [empty uint8 tensor]")
    if os.path.exists(os.path.join(out, "manifest.json")):
        check_manifest_checksums(out, iter_dir, md, errors)
    if errors:
        print(f"FAIL: {len(errors)} problem(s) in {out}")
        for e in errors[:40]:
            print("  " + e)
        return 1
    print(f"OK: {len(want)} keys and {len(want_objects)} objects; every chunk matches the reference bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
