// Writing a rank's shards side by side. A rank that writes several shards
// (one rank converting to TP2, to TP2·ETP2 or to EP2) used to write them one
// after the other, so every tensor split along its columns (linear_proj,
// linear_fc2, the experts' fc2) had each row of its source read once per
// shard, a column window each time, and every tensor that EP replicates (all
// but the experts) was read once per expert rank: a 1-rank TP1 -> TP2·ETP2
// reshard read 1.41x its input, a 1-rank reshard to EP2 1.29x. Here the
// shards of a batch are open together and converted tensor by tensor: the
// k-th tensor of every shard, one after the other. Where those tensors are
// column windows of the same source rows, one job reads each row once, whole,
// and the writer hands each shard its columns; where two shards hold the same
// tensor (or the same window of it), one job reads it once and the writer
// hands it to both (docs/design.md, "A rank's shards side by side").
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "layout/import_plan.hpp"
#include "transforms/segment.hpp"

namespace mb {

// One conversion: tensor `parts[i].second` of shard `parts[i].first` (indexes
// into ImportPlan::shards), for every part. With one part, `segments` are its
// tensor's; with several, one destination of `rows` x `cols` in which part i
// takes the columns from `part_col[i]` on: parts that are the same tensor
// (the same segments) share their columns, the others lie side by side, their
// segments moved there and merged where they continue each other, so that a
// source row is read once.
struct ConversionStep {
  std::vector<std::pair<size_t, size_t>> parts;
  std::vector<uint64_t> part_col;
  std::vector<Segment> segments;
  uint64_t rows = 0, cols = 0;
};

// How many shards a rank keeps open at once: each open shard holds two direct
// write buffers (io.chunk_bytes each), and all of them together take at most
// a quarter of the conversion buffer (at least one shard, at most 8).
size_t shards_open_at_once(uint64_t buffer_bytes, size_t shards_of_rank);

// `shards` (the ones to write, in plan order) cut into batches of at most
// `open_at_once`, each written side by side. A batch holds shards of one
// pipeline stage: its TP, ETP and EP siblings, whose tensors are windows of
// the same source tensors or (EP's replicated ones) the same tensors. Shards
// of other stages read other layers, so writing them together would join
// nothing, and it would commit them later: a batch's shards are all committed
// at its end, which is what --resume keeps after an interruption.
std::vector<std::vector<size_t>> shard_batches(const ImportPlan& plan,
                                               const std::vector<size_t>& shards,
                                               size_t open_at_once);

// The most shards `rank` will have open at once (its largest batch): what
// its direct write buffers take out of the conversion buffer.
size_t largest_batch(const ImportPlan& plan, int rank, uint64_t buffer_bytes);

// The steps that write one batch: the k-th tensor of each shard before the
// (k+1)-th of any, so that each file gets its datasets in the plan's order.
// Tensors at the same position are joined into one step when they share rows,
// dtypes and element op, and either are the same tensor (shared columns) or
// their joined segments read each source tensor through one merged segment
// (column windows of the same rows); else each distinct one is a step of its
// own (with the parts that share it), in batch order.
std::vector<ConversionStep> side_by_side_steps(const ImportPlan& plan,
                                               const std::vector<size_t>& batch);

// Every step of `rank`, all its shards written (no resume), batch after batch:
// what a source that checks checksums as it reads plans its reads from.
std::vector<ConversionStep> rank_steps(const ImportPlan& plan, int rank, uint64_t buffer_bytes);

// The same for every rank of the plan: (rank, step), rank after rank.
std::vector<std::pair<int, ConversionStep>> every_rank_steps(const ImportPlan& plan,
                                                             uint64_t buffer_bytes);

}  // namespace mb
