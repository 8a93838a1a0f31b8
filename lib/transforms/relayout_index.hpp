// The Qwen3.5 re-layouts (spec qwen35-mapping.md §3) in closed form: for one
// destination row, which source tensor and which source row it copies.
//
// relayout.hpp describes the same transforms as RowMaps (ordered lists of
// source row runs), which is what the planner and the CPU copy engine use.
// The functions here answer the per-row question directly, in O(1), so a GPU
// thread can compute where its element comes from; they are host/device
// inline functions with no dependencies. tests/unit/test_relayout_index.cpp
// checks every one against the RowMap of relayout.hpp over many geometries.
//
// Conventions: every tensor is viewed as 2-D (rows x cols, cols = last dim).
// "Full" rows index the whole Megatron tensor (all TP ranks concatenated);
// "local" rows index the tensor of TP (or ETP) rank `part` of `n_parts`.
// The source tensor numbers follow the RowRun order of relayout.hpp.
#pragma once

#include <cstdint>

#include "core/host_device.hpp"

namespace mb {

// Row `row` of source tensor `tensor`.
struct RowOrigin {
  uint32_t tensor = 0;
  uint64_t row = 0;
};

// Row `row`, column `col` of a source tensor's 2-D view.
struct ElemOrigin {
  uint64_t row = 0;
  uint64_t col = 0;
};

// A contiguous TP chunk: local row of part `part` of a tensor of `rows` rows
// split into `n_parts` equal chunks.
MB_HOST_DEVICE inline uint64_t chunk_to_full(uint64_t rows, uint64_t n_parts, uint64_t part,
                                             uint64_t local_row) {
  return part * (rows / n_parts) + local_row;
}

// §3.2 QKVG. Full Megatron row `r` of W = per KV group c, slots σ of hd rows:
// σ < hpg: query head c·hpg+σ; hpg ≤ σ < 2hpg: its gate; 2hpg: k; 2hpg+1: v.
// Sources: 0 = q_proj ([2·nh·hd] rows: per head hd query rows then hd gate rows),
// 1 = k_proj, 2 = v_proj ([ng·hd] rows each).
MB_HOST_DEVICE inline RowOrigin qkvg_origin(uint64_t r, uint64_t heads, uint64_t kv_heads,
                                            uint64_t head_dim) {
  const uint64_t hpg = heads / kv_heads;
  const uint64_t group_rows = (2 * hpg + 2) * head_dim;
  const uint64_t c = r / group_rows;
  const uint64_t in_group = r % group_rows;
  const uint64_t slot = in_group / head_dim, d = in_group % head_dim;
  if (slot < hpg) return {0, (c * hpg + slot) * 2 * head_dim + d};
  if (slot < 2 * hpg) return {0, (c * hpg + slot - hpg) * 2 * head_dim + head_dim + d};
  if (slot == 2 * hpg) return {1, c * head_dim + d};
  return {2, c * head_dim + d};
}

// Rows of the full QKVG tensor: (2·nh + 2·ng)·hd.
MB_HOST_DEVICE inline uint64_t qkvg_rows(uint64_t heads, uint64_t kv_heads, uint64_t head_dim) {
  return (2 * heads + 2 * kv_heads) * head_dim;
}

// Local row of TP rank `part`: plain contiguous chunking of W (also when ng < T).
MB_HOST_DEVICE inline RowOrigin qkvg_local_origin(uint64_t local_row, uint64_t heads,
                                                  uint64_t kv_heads, uint64_t head_dim,
                                                  uint64_t n_parts, uint64_t part) {
  return qkvg_origin(chunk_to_full(qkvg_rows(heads, kv_heads, head_dim), n_parts, part, local_row),
                     heads, kv_heads, head_dim);
}

// §3.3 GDN in_proj. Local tensor of TP rank t of T = cat(chunk_t(Q), chunk_t(K),
// chunk_t(V), chunk_t(Z), chunk_t(B), chunk_t(A)). Sources: 0 = in_proj_qkv
// ([Q (Kd) ; K (Kd) ; V (Vd)]), 1 = in_proj_z (Vd), 2 = in_proj_b (nv), 3 = in_proj_a (nv).
MB_HOST_DEVICE inline RowOrigin gdn_in_proj_origin(uint64_t local_row, uint64_t key_dim,
                                                   uint64_t value_dim, uint64_t value_heads,
                                                   uint64_t n_parts, uint64_t part) {
  const uint64_t kq = key_dim / n_parts, vq = value_dim / n_parts, nq = value_heads / n_parts;
  uint64_t j = local_row;
  if (j < kq) return {0, part * kq + j};
  j -= kq;
  if (j < kq) return {0, key_dim + part * kq + j};
  j -= kq;
  if (j < vq) return {0, 2 * key_dim + part * vq + j};
  j -= vq;
  if (j < vq) return {1, part * vq + j};
  j -= vq;
  if (j < nq) return {2, part * nq + j};
  j -= nq;
  return {3, part * nq + j};
}

MB_HOST_DEVICE inline uint64_t gdn_in_proj_local_rows(uint64_t key_dim, uint64_t value_dim,
                                                      uint64_t value_heads, uint64_t n_parts) {
  return (2 * key_dim + 2 * value_dim + 2 * value_heads) / n_parts;
}

// §3.4 GDN conv1d. Local tensor = cat(chunk_t(convQ), chunk_t(convK), chunk_t(convV))
// of the one source (channels [Q (Kd) ; K (Kd) ; V (Vd)]).
MB_HOST_DEVICE inline RowOrigin gdn_conv_origin(uint64_t local_row, uint64_t key_dim,
                                                uint64_t value_dim, uint64_t n_parts,
                                                uint64_t part) {
  const uint64_t kq = key_dim / n_parts, vq = value_dim / n_parts;
  const uint64_t j = local_row;
  if (j < kq) return {0, part * kq + j};
  if (j < 2 * kq) return {0, key_dim + part * kq + (j - kq)};
  return {0, 2 * key_dim + part * vq + (j - 2 * kq)};
}

// §3.5 GLU (SwiGLU linear_fc1). Local tensor of rank t of N = cat(chunk_t(gate),
// chunk_t(up)). Sources: 0 = gate, 1 = up ([ffn] rows each).
MB_HOST_DEVICE inline RowOrigin glu_origin(uint64_t local_row, uint64_t ffn, uint64_t n_parts,
                                           uint64_t part) {
  const uint64_t q = ffn / n_parts;
  if (local_row < q) return {0, part * q + local_row};
  return {1, part * q + (local_row - q)};
}

// §3.6 vision QKV. Full Megatron row r = per head h [q_h ; k_h ; v_h] (hd rows
// each) takes row σ·Hv + h·hd + d of the HF [Q ; K ; V] tensor (source 0).
MB_HOST_DEVICE inline RowOrigin vision_qkv_origin(uint64_t r, uint64_t heads, uint64_t head_dim) {
  const uint64_t h = r / (3 * head_dim);
  const uint64_t slot = (r / head_dim) % 3, d = r % head_dim;
  return {0, slot * heads * head_dim + h * head_dim + d};
}

MB_HOST_DEVICE inline RowOrigin vision_qkv_local_origin(uint64_t local_row, uint64_t heads,
                                                        uint64_t head_dim, uint64_t n_parts,
                                                        uint64_t part) {
  return vision_qkv_origin(chunk_to_full(3 * heads * head_dim, n_parts, part, local_row), heads,
                           head_dim);
}

// §3.8 fused experts. gate_up_proj [E, 2I, H] is viewed as [E·2I, H]; expert g's
// slab is rows [g·2I, (g+1)·2I): gate = its first I rows, up = the next I. The
// local linear_fc1 of expert g on ETP rank s of N is GLU over N: returns the
// row of the [E·2I, H] view for local row j.
MB_HOST_DEVICE inline uint64_t expert_fc1_slab_row(uint64_t expert, uint64_t local_row,
                                                   uint64_t ffn, uint64_t n_parts, uint64_t part) {
  const RowOrigin o = glu_origin(local_row, ffn, n_parts, part);
  return expert * 2 * ffn + o.tensor * ffn + o.row;
}

// down_proj [E, H, I] viewed as [E·H, I]; linear_fc2 of expert g on ETP rank s
// of N is [H, I/N] (ROW split: columns [s·I/N, (s+1)·I/N)).
MB_HOST_DEVICE inline ElemOrigin expert_fc2_slab_origin(uint64_t expert, uint64_t local_row,
                                                        uint64_t local_col, uint64_t hidden,
                                                        uint64_t ffn, uint64_t n_parts,
                                                        uint64_t part) {
  return {expert * hidden + local_row, part * (ffn / n_parts) + local_col};
}

}  // namespace mb
