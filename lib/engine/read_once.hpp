// Read-once import (HDF5 shards): every HF byte is read from storage by
// exactly one rank, its owner, and forwarded to the ranks whose shards need
// it (replicated norms, routers and embeddings, the TP slices of a tensor,
// expert slabs). All ranks walk the HF tensors in the same order (by file and
// offset, so owners read each file front to back); within each block of rows
// the owner sends every consumer exactly the rectangles it needs, once even
// when several of its shards hold copies. Consumers write what they receive
// straight into their datasets, so memory stays within the buffer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "checkpoint/manifest.hpp"
#include "core/direct_io.hpp"
#include "layout/import_plan.hpp"

namespace mb {

class MpiContext;
class Forwarder;
class Progress;

struct ReadOnceStats {
  uint64_t storage_bytes = 0;   // read from the HF files by this rank
  uint64_t sent_bytes = 0;      // forwarded to other ranks
  uint64_t received_bytes = 0;  // forwarded from other ranks
};

std::vector<ShardResult> run_read_once_hdf5(const ImportPlan& plan, MpiContext& mpi, Forwarder& fwd,
                                            const std::filesystem::path& staging,
                                            uint64_t buffer_bytes, const IoConfig& io,
                                            Progress& progress, ReadOnceStats& stats,
                                            bool allow_overflow = false);

// Bytes all ranks read from storage in each mode.
uint64_t direct_mode_read_bytes(const ImportPlan& plan);
uint64_t read_once_read_bytes(const ImportPlan& plan);

}  // namespace mb
