#!/usr/bin/env python3
"""Checks a megabridge HDF5 import against the independent reference.

Every shard file, every dataset and every attribute is compared with what
qwen35_reference.py computes from the HF tensors, bit for bit. The files are
read with h5py, a generic reader: bf16 datasets must come back as bf16 values
(h5py widens them to float32) and never be misread as float16. The manifest's
file list, tensor counts and xxh3 checksums are checked too.

usage: check_import.py HF_DIR OUT_DIR --tp N --pp N --ep N --etp N [--first N] [--last N] [--dtype D] [--no-mtp]
"""

import argparse
import json
import os
import sys

import h5py
import numpy as np
import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen35_reference import DTYPES, TORCH_NAMES, Layout, Reference  # noqa: E402
from region_checksum import region_file_checksum  # noqa: E402

RAW = {2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}


def raw_bits(dset):
    """The stored bytes of a dataset, read with its own file type (no conversion)."""
    ftype = dset.id.get_type()
    arr = np.empty(dset.shape, dtype=RAW[ftype.get_size()])
    dset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, arr, mtype=ftype)
    return arr


def region_checksum(path):
    """The file checksum of scheme "xxh3-64-hdf5-regions" (docs/formats.md),
    computed independently: h5py for the datasets' offsets and storage sizes,
    xxhash over the file's bytes for every region."""
    regions = []
    with h5py.File(path, "r") as f:
        for name in f:
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset):
                continue
            off, size = obj.id.get_offset(), obj.id.get_storage_size()
            if off is not None and size > 0:
                regions.append((off, size))
    with open(path, "rb") as fh:
        return region_file_checksum(fh.read(), regions)


def file_checksum(path, scheme):
    if scheme == "xxh3-64":
        with open(path, "rb") as fh:
            return xxhash.xxh3_64_hexdigest(fh.read())
    if scheme == "xxh3-64-hdf5-regions":
        return region_checksum(path)
    raise ValueError(f"{path}: unknown checksum scheme {scheme!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf")
    ap.add_argument("out")
    for k in ("tp", "pp", "ep", "etp"):
        ap.add_argument(f"--{k}", type=int, default=1)
    ap.add_argument("--first", type=int)
    ap.add_argument("--last", type=int)
    ap.add_argument("--dtype", default=None, help="BF16/F16/F32 if the import cast")
    ap.add_argument("--no-mtp", action="store_true",
                    help="the import left the MTP layer out (config.json declares it, the checkpoint has none)")
    a = ap.parse_args()
    layout = Layout(a.tp, a.pp, a.ep, a.etp, a.first, a.last)
    ref = Reference(a.hf, layout, a.dtype, mtp=False if a.no_mtp else None)
    errors = []
    checked = 0

    manifest = json.load(open(os.path.join(a.out, "manifest.json")))
    expected_files = {name for _, name in ref.all_shards()}
    on_disk = {f for f in os.listdir(a.out) if f.endswith(".h5")}
    if on_disk != expected_files:
        errors.append(f"shard files: missing {sorted(expected_files - on_disk)}, extra {sorted(on_disk - expected_files)}")
    listed = {f["path"]: f for f in manifest["files"]}
    if set(listed) != expected_files:
        errors.append(f"manifest lists {sorted(listed)}, expected {sorted(expected_files)}")
    if manifest["tensor_count"] != sum(f["tensor_count"] for f in manifest["files"]):
        errors.append("manifest tensor_count does not add up")

    for (t, p, e), fname in ref.all_shards():
        path = os.path.join(a.out, fname)
        if not os.path.exists(path):
            continue
        scheme = listed.get(fname, {}).get("checksum", manifest.get("checksum", "xxh3-64"))
        digest = file_checksum(path, scheme)
        if fname in listed and listed[fname]["xxh3"] != digest:
            errors.append(f"{fname}: manifest xxh3 {listed[fname]['xxh3']} != file {digest}")
        want = ref.shard(t, p, e)
        with h5py.File(path, "r") as f:
            coords = {k: int(f.attrs[k]) for k in ("tp_rank", "pp_rank", "ep_rank", "tp_size", "pp_size",
                                                   "ep_size", "etp_size", "etp_rank")}
            exp = dict(tp_rank=t, pp_rank=p, ep_rank=e, tp_size=a.tp, pp_size=a.pp, ep_size=a.ep,
                       etp_size=a.etp, etp_rank=t % a.etp)
            if coords != exp:
                errors.append(f"{fname}: file attributes {coords} != {exp}")
            have = set(f.keys())
            if have != set(want):
                errors.append(f"{fname}: missing datasets {sorted(set(want) - have)[:5]}, "
                              f"extra {sorted(have - set(want))[:5]}")
            if fname in listed and listed[fname]["tensor_count"] != len(have):
                errors.append(f"{fname}: manifest says {listed[fname]['tensor_count']} tensors, file has {len(have)}")
            for name in sorted(have & set(want)):
                w = want[name]
                d = f[name]
                checked += 1
                where = f"{fname}:{name}"
                if d.attrs["global_name"] != w["global_name"]:
                    errors.append(f"{where}: global_name {d.attrs['global_name']} != {w['global_name']}")
                if list(d.attrs["global_shape"]) != list(w["global_shape"]):
                    errors.append(f"{where}: global_shape {list(d.attrs['global_shape'])} != {w['global_shape']}")
                if d.attrs["dtype"] != TORCH_NAMES[w["dtype"]]:
                    errors.append(f"{where}: dtype attribute {d.attrs['dtype']} != {TORCH_NAMES[w['dtype']]}")
                if d.shape != w["data"].shape:
                    errors.append(f"{where}: shape {d.shape} != {w['data'].shape}")
                    continue
                bits = raw_bits(d)
                wbits = w["data"].view(RAW[w["data"].dtype.itemsize])
                if not np.array_equal(bits, wbits):
                    diff = np.argwhere(bits != wbits)
                    errors.append(f"{where}: {len(diff)} elements differ, first at {tuple(diff[0])}")
                    continue
                # A generic reader must see the values, not a float16 reinterpretation.
                values = d[()]
                if values.dtype == np.float16:
                    errors.append(f"{where}: h5py reads {w['dtype']} data as float16")
                elif not np.array_equal(values.astype(np.float64), w["data"].astype(np.float64)):
                    errors.append(f"{where}: h5py reads different values than stored")
                mh = {tt["name"]: tt["xxh3"] for tt in listed.get(fname, {}).get("tensors", [])}
                if mh.get(name) != xxhash.xxh3_64_hexdigest(wbits.tobytes()):
                    errors.append(f"{where}: manifest checksum {mh.get(name)} does not match the data")

    if errors:
        print(f"FAIL: {len(errors)} problem(s) in {a.out}")
        for e in errors[:50]:
            print("  " + e)
        return 1
    print(f"OK: {len(expected_files)} shard files, {checked} tensors match the reference bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
