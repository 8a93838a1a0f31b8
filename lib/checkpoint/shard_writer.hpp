// Writes one model-parallel rank's HDF5 shard from any row source (HF
// safetensors for import, other shards for reshard): under a temporary name,
// fsynced, then renamed, with its checksums reported for the manifest.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "core/direct_io.hpp"
#include "layout/import_plan.hpp"
#include "engine/copy_engine.hpp"
#include "checkpoint/manifest.hpp"

namespace mb {

// `on_tensor` is called after each tensor (progress). The data is written
// with `io` (direct where it says so, one buffer of io.chunk_bytes), and the
// file checksum (scheme kHdf5RegionChecksum) is taken from the tensors'
// checksums as written plus the metadata read back: the data is not re-read.
ShardResult write_hdf5_shard(const ParallelLayout& layout, const std::string& architecture,
                             const ShardPlan& shard, const std::filesystem::path& dir,
                             CopyEngine& engine, RowSource& source, const IoConfig& io,
                             const std::function<void()>& on_tensor = {});

// Collects every rank's shard results on rank 0 (empty elsewhere), plus the
// largest peak RSS of any rank.
struct GatheredResults {
  std::vector<ShardResult> results;
  uint64_t max_rss = 0;
};
class MpiContext;
GatheredResults gather_shard_results(const std::vector<ShardResult>& mine, MpiContext& mpi);

uint64_t peak_rss_bytes();
std::string human_bytes(double bytes);

}  // namespace mb
