// Megatron-Core's sharded_state_dict for the Qwen3.5 VL model, as it reaches a
// torch_dist checkpoint (spec megatron-checkpoint-format.md §4): global keys
// with global layer indices, the GDN in_proj / conv1d split into components,
// SwiGLU fc1 as [gate; up], experts with a leading expert axis, the vision
// decoder stacked along a layer axis, the MTP layer under `transformer_layer`,
// and one TransformerEngine `_extra_state` object per TE module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/shape.hpp"
#include "layout/import_plan.hpp"

namespace mb {

// Rows [row0, row0+rows) of a local tensor (all its columns) are the box
// (offsets, sizes) of checkpoint key `key`, in the same row-major order.
struct DistPiece {
  std::string key;
  Shape global_shape;
  std::vector<uint64_t> offsets;
  Shape sizes;
  uint64_t row0 = 0, rows = 0;
};

// The pieces of a local tensor of rank `coord` (every element in exactly one
// piece). The same for canonical copies and replicas; only canonical copies
// are written.
std::vector<DistPiece> dist_pieces(const LocalTensor& t, const ModelConfig& m,
                                   const ParallelLayout& l, const ShardCoord& coord);

// The `_extra_state` ShardedObject unique keys ("<module>._extra_state/shard_<offsets>_<shape>")
// that the writer of this local tensor emits: one per TE module, written with
// the module's main parameter by TP (or ETP) rank 0 of its canonical copies.
std::vector<std::string> dist_extra_states(const LocalTensor& t, const ModelConfig& m,
                                           const ParallelLayout& l, const ShardCoord& coord);

// Checkpoint key of a Megatron-Bridge global name, without the component
// suffix or the expert / layer axis (e.g. mtp_model_layer -> transformer_layer).
std::string dist_key_base(const std::string& global_name);

}  // namespace mb
