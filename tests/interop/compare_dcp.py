#!/usr/bin/env python3
"""Two torch_dist checkpoints, tensor by tensor, with plain torch.distributed.checkpoint:
same tensor keys, shapes, dtypes and bytes (BytesIO objects: keys only). Used to compare
megabridge's import with Megatron-Bridge's own import_ckpt (docs/torch-dist.md).

usage: compare_dcp.py A/iter_0000000 B/iter_0000000
"""
import sys

import torch
import torch.distributed.checkpoint as dcp


def meta(d):
    return dcp.FileSystemReader(d).read_metadata().state_dict_metadata


def tensors(d, m):
    sd = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in m.items()
          if type(v).__name__ == "TensorStorageMetadata"}
    dcp.load(sd, checkpoint_id=d, no_dist=True)
    return sd


def main():
    a, b = sys.argv[1], sys.argv[2]
    ma, mb = meta(a), meta(b)
    print(f"only in {a}: {sorted(set(ma) - set(mb))}")
    print(f"only in {b}: {sorted(set(mb) - set(ma))}")
    ta, tb = tensors(a, ma), tensors(b, mb)
    common = sorted(set(ta) & set(tb))
    bad = [k for k in common if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape
           or ta[k].contiguous().view(torch.uint8).numpy().tobytes()
           != tb[k].contiguous().view(torch.uint8).numpy().tobytes()]
    print(f"{len(common)} tensors in both; differing in dtype, shape or bytes: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
