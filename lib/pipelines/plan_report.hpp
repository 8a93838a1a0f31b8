// `megabridge plan`: what each rank will read and write, without converting.
#pragma once

#include <string>
#include <vector>

#include "core/direct_io.hpp"
#include "layout/import_plan.hpp"

namespace mb {

// What a conversion in `mode` reads from storage, from its plan alone (the
// reads the sources make, direct_io.hpp): bytes read directly (each read's
// aligned cover), and bytes read through the page cache (narrow column
// windows; everything under --io buffered), which the ranks of one node
// share: counted once when all ranks share one node, once per rank when each
// rank has a node of its own.
struct StorageReads {
  uint64_t direct = 0;
  uint64_t page_cache_one_node = 0;
  uint64_t page_cache_node_per_rank = 0;
  uint64_t one_node() const { return direct + page_cache_one_node; }
  uint64_t node_per_rank() const { return direct + page_cache_node_per_rank; }
};

// Where the tensor a segment reads (Segment::src) lies in its file: row-major
// rows of `row_bytes`, elements of `elem_bytes`, the first at `offset`.
struct SourceGeometry {
  uint64_t offset = 0, row_bytes = 0, elem_bytes = 0;
};

// `sources`: indexed by Segment::src. `side_by_side_buffer`: the conversion
// buffer of HDF5 output, whose ranks write their shards side by side
// (side_by_side.hpp: a tensor several shards hold read once, column windows
// of the same rows joined into whole rows); 0 for shards written one at a
// time (torch_dist output).
StorageReads storage_reads(const ImportPlan& plan, const std::vector<SourceGeometry>& sources,
                           IoMode mode, uint64_t side_by_side_buffer, uint64_t align);

// An import's: the segments read the HF tensors of plan.catalog (4 KiB
// alignment assumed).
StorageReads import_storage_reads(const ImportPlan& plan, IoMode mode, uint64_t side_by_side_buffer,
                                  uint64_t align = 4096);

std::string plan_report(const ImportPlan& plan, bool per_shard, IoMode mode = IoMode::Auto,
                        bool read_once = false, uint64_t buffer_bytes = 256ull << 20);

}  // namespace mb
