"""An independent reference for the Qwen3.5 HF -> Megatron-Core conversion.

Written from the spec (../shared/spec/qwen35-mapping.md §2-§6) with numpy
reshapes, the way Megatron-Bridge expresses the transforms, and deliberately
sharing no code or row-run logic with the C++ planner. The integration tests
compare every tensor megabridge writes against what this module computes.
"""

import json
import os
import struct

import ml_dtypes
import numpy as np

# safetensors dtype -> numpy dtype holding the same bits.
DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
}
TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def read_safetensors(path):
    """Returns {name: (dtype string, numpy array)} for one file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])
        out[name] = (meta["dtype"], arr)
    return out


def read_hf(hf_dir):
    """All tensors of a HF checkpoint directory, plus its config."""
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = [f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(os.path.join(hf_dir, f)))
    return cfg, tensors


class Layout:
    def __init__(self, tp=1, pp=1, ep=1, etp=1, first=None, last=None):
        self.tp, self.pp, self.ep, self.etp = tp, pp, ep, etp
        self.first, self.last = first, last

    def stages(self, num_layers):
        """Global layer ranges per pipeline stage (Megatron-Core's uneven split rule)."""
        counts = [None] * self.pp
        fixed = 0
        if self.first is not None:
            counts[0] = self.first
            fixed += self.first
        if self.last is not None:
            counts[-1] = self.last
            fixed += self.last
        rest = [i for i, c in enumerate(counts) if c is None]
        for i in rest:
            counts[i] = (num_layers - fixed) // len(rest)
        assert sum(counts) == num_layers
        starts = np.cumsum([0] + counts)
        return [(int(starts[i]), int(starts[i + 1])) for i in range(self.pp)]


def split(x, n, i, axis=0):
    return np.split(x, n, axis=axis)[i]


def norm_minus_one(x, dst_dtype):
    y = x.astype(np.float32) - np.float32(1.0)
    return y.astype(dst_dtype)


class Reference:
    """Expected Megatron tensors per shard, computed from the HF tensors."""

    def __init__(self, hf_dir, layout, cast=None, mtp=None):
        """mtp: whether the MTP layer is converted; None: as config.json declares.
        A checkpoint saved by transformers declares it but holds no mtp.* tensor,
        and is converted without it (the caller says so; nothing is inferred here)."""
        self.cfg, self.hf = read_hf(hf_dir)
        self.t = self.cfg["text_config"]
        self.v = self.cfg["vision_config"]
        self.moe = self.cfg["architectures"][0] == "Qwen3_5MoeForConditionalGeneration"
        self.tied = self.cfg.get("tie_word_embeddings", self.t.get("tie_word_embeddings", False))
        self.layout = layout
        self.cast = cast  # safetensors dtype string, or None to keep
        lt = self.t.get("layer_types")
        n = self.t["num_hidden_layers"]
        if lt is None:
            every = self.t.get("full_attention_interval", 4)
            lt = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)]
        self.layer_types = lt
        self.mtp = self.t.get("mtp_num_hidden_layers", 0) > 0 if mtp is None else mtp

    # -- helpers ---------------------------------------------------------------------------
    def get(self, name):
        return self.hf[name]

    def out_dtype(self, src_dtype):
        if self.cast and src_dtype in TORCH_NAMES:
            return self.cast
        return src_dtype

    def emit(self, out, local, global_name, arr, src_dtype, global_shape, op=None):
        dt = self.out_dtype(src_dtype)
        if op == "minus_one":
            arr = norm_minus_one(arr, DTYPES[dt])
        elif dt != src_dtype:
            arr = arr.astype(np.float32).astype(DTYPES[dt])
        out[local] = dict(global_name=global_name, data=np.ascontiguousarray(arr), dtype=dt,
                          global_shape=list(global_shape))

    # -- the transforms, in the spec's reshape form -----------------------------------------
    def qkvg(self, q, k, v, T, t):
        nh, ng, hd = self.t["num_attention_heads"], self.t["num_key_value_heads"], self.t["head_dim"]
        H = q.shape[1]
        hpg = nh // ng
        qg = q.reshape(nh, 2, hd, H)
        query, gate = qg[:, 0], qg[:, 1]
        blocks = []
        for c in range(ng):
            blocks += [query[c * hpg:(c + 1) * hpg].reshape(-1, H),
                       gate[c * hpg:(c + 1) * hpg].reshape(-1, H),
                       k.reshape(ng, hd, H)[c], v.reshape(ng, hd, H)[c]]
        full = np.concatenate(blocks)
        return split(full, T, t), full.shape

    def gdn_in(self, qkv, z, b, a, T, t):
        kd = self.t["linear_num_key_heads"] * self.t["linear_key_head_dim"]
        q, k, v = np.split(qkv, [kd, 2 * kd])
        local = np.concatenate([split(c, T, t) for c in (q, k, v, z, b, a)])
        return local, (local.shape[0] * T, local.shape[1])

    def gdn_conv(self, conv, T, t):
        kd = self.t["linear_num_key_heads"] * self.t["linear_key_head_dim"]
        q, k, v = np.split(conv, [kd, 2 * kd])
        local = np.concatenate([split(c, T, t) for c in (q, k, v)])
        return local, conv.shape

    def glu(self, gate, up, N, s):
        local = np.concatenate([split(gate, N, s), split(up, N, s)])
        return local, (2 * gate.shape[0], gate.shape[1])

    def vision_qkv(self, x, T, t):
        nh = self.v["num_heads"]
        hv = self.v["hidden_size"]
        rest = x.shape[1:]
        full = x.reshape((3, nh, hv // nh) + rest).swapaxes(0, 1).reshape((3 * hv,) + rest)
        return split(full, T, t), full.shape

    # -- blocks ------------------------------------------------------------------------------
    def attention(self, out, mp, gp, hp, t):
        T = self.layout.tp
        dt, ln = self.get(hp + "input_layernorm.weight")
        self.emit(out, mp + "self_attention.linear_qkv.layer_norm_weight",
                  gp + "self_attention.linear_qkv.layer_norm_weight", ln, dt, ln.shape)
        q, k, v = (self.get(hp + f"self_attn.{x}_proj.weight")[1] for x in "qkv")
        arr, gs = self.qkvg(q, k, v, T, t)
        self.emit(out, mp + "self_attention.linear_qkv.weight", gp + "self_attention.linear_qkv.weight",
                  arr, dt, gs)
        for hf, meg in (("q_norm", "q_layernorm"), ("k_norm", "k_layernorm")):
            d, x = self.get(hp + f"self_attn.{hf}.weight")
            self.emit(out, mp + f"self_attention.{meg}.weight", gp + f"self_attention.{meg}.weight",
                      x, d, x.shape)
        d, o = self.get(hp + "self_attn.o_proj.weight")
        self.emit(out, mp + "self_attention.linear_proj.weight", gp + "self_attention.linear_proj.weight",
                  split(o, T, t, axis=1), d, o.shape)

    def gdn(self, out, mp, gp, hp, t):
        T = self.layout.tp
        d, ln = self.get(hp + "input_layernorm.weight")
        self.emit(out, mp + "self_attention.in_proj.layer_norm_weight",
                  gp + "self_attention.in_proj.layer_norm_weight", ln, d, ln.shape)
        la = hp + "linear_attn."
        d, qkv = self.get(la + "in_proj_qkv.weight")
        arr, gs = self.gdn_in(qkv, self.get(la + "in_proj_z.weight")[1], self.get(la + "in_proj_b.weight")[1],
                              self.get(la + "in_proj_a.weight")[1], T, t)
        self.emit(out, mp + "self_attention.in_proj.weight", gp + "self_attention.in_proj.weight", arr, d, gs)
        d, conv = self.get(la + "conv1d.weight")
        arr, gs = self.gdn_conv(conv, T, t)
        self.emit(out, mp + "self_attention.conv1d.weight", gp + "self_attention.conv1d.weight", arr, d, gs)
        for name in ("A_log", "dt_bias"):
            d, x = self.get(la + name)
            self.emit(out, mp + f"self_attention.{name}", gp + f"self_attention.{name}", split(x, T, t), d, x.shape)
        d, x = self.get(la + "norm.weight")
        self.emit(out, mp + "self_attention.out_norm.weight", gp + "self_attention.out_norm.weight", x, d,
                  x.shape, op="minus_one")
        d, x = self.get(la + "out_proj.weight")
        self.emit(out, mp + "self_attention.out_proj.weight", gp + "self_attention.out_proj.weight",
                  split(x, T, t, axis=1), d, x.shape)

    def mlp(self, out, mp, gp, hp, t, e):
        T, EP, ETP = self.layout.tp, self.layout.ep, self.layout.etp
        d, ln = self.get(hp + "post_attention_layernorm.weight")
        if not self.moe:
            self.emit(out, mp + "mlp.linear_fc1.layer_norm_weight", gp + "mlp.linear_fc1.layer_norm_weight",
                      ln, d, ln.shape)
            g, u = self.get(hp + "mlp.gate_proj.weight")[1], self.get(hp + "mlp.up_proj.weight")[1]
            arr, gs = self.glu(g, u, T, t)
            self.emit(out, mp + "mlp.linear_fc1.weight", gp + "mlp.linear_fc1.weight", arr, d, gs)
            d, x = self.get(hp + "mlp.down_proj.weight")
            self.emit(out, mp + "mlp.linear_fc2.weight", gp + "mlp.linear_fc2.weight", split(x, T, t, axis=1),
                      d, x.shape)
            return
        self.emit(out, mp + "pre_mlp_layernorm.weight", gp + "pre_mlp_layernorm.weight", ln, d, ln.shape)
        d, x = self.get(hp + "mlp.gate.weight")
        self.emit(out, mp + "mlp.router.weight", gp + "mlp.router.weight", x, d, x.shape)
        g, u = self.get(hp + "mlp.shared_expert.gate_proj.weight")[1], self.get(hp + "mlp.shared_expert.up_proj.weight")[1]
        arr, gs = self.glu(g, u, T, t)
        self.emit(out, mp + "mlp.shared_experts.linear_fc1.weight", gp + "mlp.shared_experts.linear_fc1.weight",
                  arr, d, gs)
        d, x = self.get(hp + "mlp.shared_expert.down_proj.weight")
        self.emit(out, mp + "mlp.shared_experts.linear_fc2.weight", gp + "mlp.shared_experts.linear_fc2.weight",
                  split(x, T, t, axis=1), d, x.shape)
        d, x = self.get(hp + "mlp.shared_expert_gate.weight")
        self.emit(out, mp + "mlp.shared_experts.gate_weight", gp + "mlp.shared_experts.gate_weight", x, d, x.shape)
        E = self.t["num_experts"]
        epr = E // EP
        s = t % ETP
        fused = (hp + "mlp.experts.gate_up_proj") in self.hf
        for n in range(epr):
            g_id = e * epr + n
            if fused:
                d, gu = self.get(hp + "mlp.experts.gate_up_proj")
                gate, up = np.split(gu[g_id], 2)
                down = self.get(hp + "mlp.experts.down_proj")[1][g_id]
            else:
                d, gate = self.get(hp + f"mlp.experts.{g_id}.gate_proj.weight")
                up = self.get(hp + f"mlp.experts.{g_id}.up_proj.weight")[1]
                down = self.get(hp + f"mlp.experts.{g_id}.down_proj.weight")[1]
            arr, gs = self.glu(gate, up, ETP, s)
            self.emit(out, mp + f"mlp.experts.linear_fc1.weight{n}", gp + f"mlp.experts.linear_fc1.weight{g_id}",
                      arr, d, gs)
            self.emit(out, mp + f"mlp.experts.linear_fc2.weight{n}", gp + f"mlp.experts.linear_fc2.weight{g_id}",
                      split(down, ETP, s, axis=1), d, down.shape)

    def vision(self, out, t):
        T = self.layout.tp
        hv = "model.visual."
        for name in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed.weight"):
            d, x = self.get(hv + name)
            self.emit(out, "vision_model." + name, "vision_model." + name, x, d, x.shape)
        for hf, meg in (("norm", "patch_norm"),):
            for p in ("weight", "bias"):
                d, x = self.get(hv + f"merger.{hf}.{p}")
                self.emit(out, f"vision_model.merger.{meg}.{p}", f"vision_model.merger.{meg}.{p}", x, d, x.shape)
        for p in ("weight", "bias"):
            d, x = self.get(hv + f"merger.linear_fc1.{p}")
            self.emit(out, f"vision_model.merger.linear_fc1.{p}", f"vision_model.merger.linear_fc1.{p}",
                      split(x, T, t), d, x.shape)
        d, x = self.get(hv + "merger.linear_fc2.weight")
        self.emit(out, "vision_model.merger.linear_fc2.weight", "vision_model.merger.linear_fc2.weight",
                  split(x, T, t, axis=1), d, x.shape)
        d, x = self.get(hv + "merger.linear_fc2.bias")
        self.emit(out, "vision_model.merger.linear_fc2.bias", "vision_model.merger.linear_fc2.bias", x, d, x.shape)
        for j in range(self.v["depth"]):
            b = hv + f"blocks.{j}."
            m = f"vision_model.decoder.layers.{j}."
            pairs = [("norm1.weight", "self_attention.linear_qkv.layer_norm_weight"),
                     ("norm1.bias", "self_attention.linear_qkv.layer_norm_bias"),
                     ("norm2.weight", "mlp.linear_fc1.layer_norm_weight"),
                     ("norm2.bias", "mlp.linear_fc1.layer_norm_bias"),
                     ("attn.proj.bias", "self_attention.linear_proj.bias"),
                     ("mlp.linear_fc2.bias", "mlp.linear_fc2.bias")]
            for hf, meg in pairs:
                d, x = self.get(b + hf)
                self.emit(out, m + meg, m + meg, x, d, x.shape)
            for p in ("weight", "bias"):
                d, x = self.get(b + f"attn.qkv.{p}")
                arr, gs = self.vision_qkv(x, T, t)
                self.emit(out, m + f"self_attention.linear_qkv.{p}", m + f"self_attention.linear_qkv.{p}", arr, d, gs)
                d, x = self.get(b + f"mlp.linear_fc1.{p}")
                self.emit(out, m + f"mlp.linear_fc1.{p}", m + f"mlp.linear_fc1.{p}", split(x, T, t), d, x.shape)
            for hf, meg in (("attn.proj.weight", "self_attention.linear_proj.weight"),
                            ("mlp.linear_fc2.weight", "mlp.linear_fc2.weight")):
                d, x = self.get(b + hf)
                self.emit(out, m + meg, m + meg, split(x, T, t, axis=1), d, x.shape)

    def shard(self, t, p, e):
        """{local name: dict(global_name, data, dtype, global_shape)} for rank (t, p, e)."""
        L = self.t["num_hidden_layers"]
        T, P = self.layout.tp, self.layout.pp
        out = {}
        first, last = p == 0, p == P - 1
        mtp = self.mtp
        d, emb = self.get("model.language_model.embed_tokens.weight")
        if first or (last and mtp):
            self.emit(out, "language_model.embedding.word_embeddings.weight",
                      "language_model.embedding.word_embeddings.weight", split(emb, T, t), d, emb.shape)
        b, end = self.layout.stages(L)[p]
        for g in range(b, end):
            mp = f"language_model.decoder.layers.{g - b}."
            gp = f"language_model.decoder.layers.{g}."
            hp = f"model.language_model.layers.{g}."
            if self.layer_types[g] == "full_attention":
                self.attention(out, mp, gp, hp, t)
            else:
                self.gdn(out, mp, gp, hp, t)
            self.mlp(out, mp, gp, hp, t, e)
        if last:
            d, x = self.get("model.language_model.norm.weight")
            self.emit(out, "language_model.decoder.final_layernorm.weight",
                      "language_model.decoder.final_layernorm.weight", x, d, x.shape)
            if not self.tied:
                d, x = self.get("lm_head.weight")
                self.emit(out, "language_model.output_layer.weight", "language_model.output_layer.weight",
                          split(x, T, t), d, x.shape)
            elif P > 1:
                self.emit(out, "language_model.output_layer.weight", "language_model.output_layer.weight",
                          split(emb, T, t), d, emb.shape)
            if mtp:
                mp = "language_model.mtp.layers.0."
                for hf, meg in (("pre_fc_norm_embedding", "enorm"), ("pre_fc_norm_hidden", "hnorm"),
                                ("norm", "final_layernorm")):
                    d, x = self.get(f"mtp.{hf}.weight")
                    self.emit(out, mp + f"{meg}.weight", mp + f"{meg}.weight", x, d, x.shape)
                d, x = self.get("mtp.fc.weight")
                self.emit(out, mp + "eh_proj.weight", mp + "eh_proj.weight", split(x, T, t), d, x.shape)
                inner = mp + "mtp_model_layer."
                self.attention(out, inner, inner, "mtp.layers.0.", t)
                self.mlp(out, inner, inner, "mtp.layers.0.", t, e)
        if first:
            self.vision(out, t)
        return out

    def all_shards(self):
        for p in range(self.layout.pp):
            for e in range(self.layout.ep):
                for t in range(self.layout.tp):
                    yield (t, p, e), f"mp_rank_{t:02d}_{p:03d}_{e:03d}.h5"
