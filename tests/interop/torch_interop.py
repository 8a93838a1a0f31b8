#!/usr/bin/env python3
"""Interop with real PyTorch and Megatron-Core (ctest label `interop`).

  load  HF_DIR MB_TORCH_DIST      megabridge's torch_dist output, loaded with
                                  torch.distributed.checkpoint (no process group)
                                  and with Megatron-Core's dist_checkpointing,
                                  compared with values computed independently from HF
  write HF_DIR OUT_DIR WRITER     writes a torch_dist checkpoint of the same keys and
                                  shapes with real PyTorch DCP (WRITER=torch) or
                                  Megatron-Core dist_checkpointing (WRITER=mcore),
                                  chunked differently from megabridge (each tensor in
                                  up to 3 row chunks), for megabridge export to read
"""

import os
import sys

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from dist_reference import expected_keys, expected_objects  # noqa: E402

TORCH = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def to_torch(arr):
    if str(arr.dtype) == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(arr).copy())


def same(t, arr):
    a = t.contiguous().view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32).numpy().tobytes()
    return a == np.ascontiguousarray(arr).tobytes()


def init_single_process_group():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)


def load(hf, ckpt):
    want, ref = expected_keys(hf)
    iter_dir = os.path.join(ckpt, "iter_0000000")
    # 1. Plain PyTorch DCP, no process group.
    sd = {k: torch.empty(v.shape, dtype=TORCH[str(v.dtype)]) for k, v in want.items()}
    dcp.load(sd, checkpoint_id=iter_dir, no_dist=True)
    bad = [k for k, v in want.items() if not same(sd[k], v)]
    assert not bad, f"torch.distributed.checkpoint: {len(bad)} keys differ, e.g. {bad[:3]}"
    md = dcp.FileSystemReader(iter_dir).read_metadata()
    objs = {k for k, v in md.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata"}
    assert objs == expected_objects(want, ref), "object keys differ"
    print(f"ok: torch.distributed.checkpoint loaded {len(want)} tensors, all equal to the reference")

    # 2. Megatron-Core's loader, with ShardedTensors / ShardedObjects as a model
    #    would request them (whole tensors, one rank).
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
    init_single_process_group()
    common = dist_checkpointing.load_common_state_dict(iter_dir)
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0, common
    sharded = {k: ShardedTensor.from_rank_offsets(k, torch.empty(v.shape, dtype=TORCH[str(v.dtype)]))
               for k, v in want.items()}
    for o in sorted(objs):
        key, shard = o.split("/shard_")
        off, shape = shard.split("_")
        sharded[o] = ShardedObject(key, None, tuple(int(x) for x in shape.split(".")),
                                   tuple(int(x) for x in off.split(".")), replica_id=0)
    loaded = dist_checkpointing.load(sharded, iter_dir)
    bad = [k for k, v in want.items() if not same(loaded[k], v)]
    assert not bad, f"megatron.core.dist_checkpointing: {len(bad)} keys differ, e.g. {bad[:3]}"
    empty = [o for o in objs if not (isinstance(loaded[o], torch.Tensor) and loaded[o].numel() == 0)]
    assert not empty, f"_extra_state payloads are not empty tensors: {empty[:3]}"
    print(f"ok: megatron.core {dist_checkpointing.__name__} loaded {len(want)} tensors and "
          f"{len(objs)} _extra_state objects, all as expected")


def pieces(key, t):
    """Up to 3 row chunks: a different tiling than megabridge writes."""
    n = t.shape[0]
    k = 3 if n >= 3 else 1
    bounds = [n * i // k for i in range(k + 1)]
    return [(bounds[i], t[bounds[i]:bounds[i + 1]]) for i in range(k) if bounds[i + 1] > bounds[i]]


def write(hf, out, writer):
    want, _ = expected_keys(hf)
    iter_dir = os.path.join(out, "iter_0000000")
    os.makedirs(iter_dir, exist_ok=True)
    if writer == "torch":
        dcp.save({k: to_torch(v) for k, v in want.items()}, checkpoint_id=iter_dir, no_dist=True)
    else:
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.mapping import ShardedTensor
        init_single_process_group()
        if not torch.cuda.is_available():
            # Megatron-Core's save path calls torch.cuda.synchronize() and puts
            # its failure flag on torch.cuda.current_device() unconditionally; on
            # a CPU-only machine there is nothing to sync and gloo wants the CPU.
            torch.cuda.synchronize = lambda *args, **kwargs: None
            torch.cuda.current_device = lambda: "cpu"
        sharded = {}
        for k, v in want.items():
            t = to_torch(v)
            for start, chunk in pieces(k, t):
                offsets = [0] * t.dim()
                offsets[0] = start
                sharded[f"{k}@{start}"] = ShardedTensor(
                    key=k, data=chunk.contiguous(), dtype=chunk.dtype, local_shape=tuple(chunk.shape),
                    global_shape=tuple(t.shape), global_offset=tuple(offsets), axis_fragmentations=None)
        dist_checkpointing.save(sharded, iter_dir)
    open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w").write("0")
    print(f"ok: {writer} wrote {len(want)} keys to {iter_dir}")


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
