"""Expected torch_dist content, computed independently of megabridge.

Takes the TP1·PP1·EP1 tensors of qwen35_reference (full Megatron tensors, checked
against the HF checkpoint) and applies, in Python, the key rules of Megatron-Core's
sharded_state_dict for Qwen3.5 (spec megatron-checkpoint-format.md §4): GDN
in_proj / conv1d split into components, experts stacked on a leading axis, the
vision decoder stacked on a layer axis, the MTP layer under `transformer_layer`,
routed experts under `mlp.experts.experts.` (TEGroupedMLP's own prefix).
"""

import re

import numpy as np

from qwen35_reference import Layout, Reference


def expected_keys(hf_dir, mtp=None):
    """{key: numpy array (global tensor)} and the expected ShardedObject keys.
    mtp=False: the checkpoint was converted without its MTP layer."""
    ref = Reference(hf_dir, Layout(), mtp=mtp)
    local = ref.shard(0, 0, 0)
    t = ref.t
    kd = t["linear_num_key_heads"] * t["linear_key_head_dim"]
    vd = t["linear_num_value_heads"] * t["linear_value_head_dim"]
    nv = t["linear_num_value_heads"]
    out, experts, vision = {}, {}, {}
    for name, v in local.items():
        key = v["global_name"].replace(".mtp_model_layer.", ".transformer_layer.")
        data = v["data"]
        # TEGroupedMLP sits at `mlp.experts` and checkpoints its grouped linears
        # as `experts.linear_fc{1,2}` under its own prefix: `experts` twice.
        m = re.match(r"^(.*\.mlp\.experts\.)(linear_fc[12]\.weight)(\d+)$", key)
        if m:
            experts.setdefault(m.group(1) + "experts." + m.group(2), {})[int(m.group(3))] = data
            continue
        m = re.match(r"^vision_model\.decoder\.layers\.(\d+)\.(.*)$", key)
        if m:
            vision.setdefault("vision_model.decoder.layers." + m.group(2), {})[int(m.group(1))] = data
            continue
        if key.endswith("self_attention.in_proj.weight"):
            parts = np.split(data, np.cumsum([kd, kd, vd, vd, nv])[:5])
            for suffix, p in zip(["query", "key", "value", "z", "beta", "alpha"], parts):
                out[f"{key}.{suffix}"] = p
            continue
        if key.endswith("self_attention.conv1d.weight"):
            for suffix, p in zip(["query", "key", "value"], np.split(data, [kd, 2 * kd])):
                out[f"{key}.{suffix}"] = p
            continue
        out[key] = data
    for key, d in list(experts.items()) + list(vision.items()):
        out[key] = np.stack([d[i] for i in sorted(d)])
    return out, ref


TE_MODULES = ["self_attention.in_proj", "self_attention.out_proj", "self_attention.out_norm",
              "self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.q_layernorm",
              "self_attention.k_layernorm", "mlp.linear_fc1", "mlp.linear_fc2", "pre_mlp_layernorm",
              "mlp.shared_experts.linear_fc1", "mlp.shared_experts.linear_fc2", "mlp.experts.experts.linear_fc1",
              "mlp.experts.experts.linear_fc2", "final_layernorm",
              "eh_proj", "enorm", "hnorm", "merger.linear_fc1", "merger.linear_fc2", "merger.patch_norm"]


def expected_objects(keys, ref):
    """The `_extra_state` ShardedObjects: one per TE module (per expert for grouped experts)."""
    objs = set()
    depth = ref.v["depth"]
    experts = ref.t.get("num_experts", 0)
    for key, arr in keys.items():
        if not key.endswith(".weight") and not re.search(r"\.weight\.(query|value|key|z|beta|alpha)$", key):
            continue
        module = re.sub(r"\.weight(\.\w+)?$", "", key)
        if not any(module.endswith("." + m) or module == m for m in TE_MODULES):
            continue
        if ".mlp.experts.experts.linear_fc" in module:
            objs.update(f"{module}._extra_state/shard_{e}_{experts}" for e in range(experts))
        elif module.startswith("vision_model.decoder.layers."):
            objs.update(f"{module}._extra_state/shard_{j}_{depth}" for j in range(depth))
        else:
            objs.add(f"{module}._extra_state/shard_0_1")
    return objs
