// The Qwen3.5 re-layouts (spec qwen35-mapping.md §3), each expressed as the
// ordered list of source row runs that forms one TP rank's local tensor.
//
// Every HF -> Megatron transform of this model is a row permutation,
// concatenation or slice of 2-D views; only the split of row-parallel layers
// cuts columns. So a transform is a function from (geometry, rank) to a
// RowMap, and the inverse is the same map read backwards (segment.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "transforms/segment.hpp"

namespace mb {

// `rows` consecutive rows of source tensor `src`, starting at `row0`.
struct RowRun {
  uint32_t src = 0;
  uint64_t row0 = 0;
  uint64_t rows = 0;
  bool operator==(const RowRun&) const = default;
};
using RowMap = std::vector<RowRun>;

uint64_t total_rows(const RowMap& m);
// Rows [r·n/N, (r+1)·n/N) of the concatenation: the contiguous TP chunk.
RowMap chunk_rows(const RowMap& full, uint64_t n_parts, uint64_t part);
// Sub-range [begin, begin+count) of a run.
RowRun sub_run(const RowRun& run, uint64_t begin, uint64_t count);
// Turns a row map into segments copying columns [col0, col0+cols) of each
// source row to destination columns [0, cols).
std::vector<Segment> row_map_segments(const RowMap& m, uint64_t col0, uint64_t cols);

// §3.2 QKVG: gated attention. q holds per head [query(hd); gate(hd)]; the full
// Megatron tensor is, per KV group, [Q heads | gate heads | K | V], hd rows each.
RowMap qkvg_full(const RowRun& q, const RowRun& k, const RowRun& v, uint64_t heads,
                 uint64_t kv_heads, uint64_t head_dim);

// §3.3 GDN-IN: TP rank `part` of N holds cat(chunk(Q), chunk(K), chunk(V),
// chunk(Z), chunk(B), chunk(A)), where Q, K, V are the three blocks of in_proj_qkv.
RowMap gdn_in_proj_local(const RowRun& qkv, const RowRun& z, const RowRun& b, const RowRun& a,
                         uint64_t key_dim, uint64_t value_dim, uint64_t n_parts, uint64_t part);

// §3.4 GDN-CONV: rank `part` holds cat(chunk(convQ), chunk(convK), chunk(convV)).
RowMap gdn_conv_local(const RowRun& conv, uint64_t key_dim, uint64_t value_dim, uint64_t n_parts,
                      uint64_t part);

// §3.5 GLU: rank `part` holds cat(chunk(gate), chunk(up)).
RowMap glu_local(const RowRun& gate, const RowRun& up, uint64_t n_parts, uint64_t part);

// §3.6 VQKV: vision [Q; K; V] (head-major blocks) to per-head [q_h; k_h; v_h].
RowMap vision_qkv_full(const RowRun& qkv, uint64_t heads, uint64_t head_dim);

}  // namespace mb
