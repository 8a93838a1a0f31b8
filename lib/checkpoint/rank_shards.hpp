// One rank's HDF5 shards of a plan, written into a staged output, each marked
// done as it is committed; with resume, the shards an interrupted run of the
// same job committed are kept when their bytes still match. Shared by import
// and reshard (both write the shards of an ImportPlan). The shards are written
// side by side, `open_at_once` at a time (shards_open_at_once, side_by_side.hpp).
#pragma once

#include <functional>
#include <vector>

#include "core/direct_io.hpp"
#include "layout/import_plan.hpp"
#include "engine/copy_engine.hpp"
#include "checkpoint/manifest.hpp"

namespace mb {

class StagedOutput;

struct RankShardCallbacks {
  std::function<void(uint64_t)> kept_bytes;  // a kept shard's bytes (progress)
  std::function<void()> after_tensor;        // after every tensor written (progress, test hooks)
};

std::vector<ShardResult> write_rank_shards(const ImportPlan& plan, int rank,
                                           const StagedOutput& out, bool resume, CopyEngine& engine,
                                           RowSource& source, const IoConfig& io,
                                           size_t open_at_once, const RankShardCallbacks& on);

}  // namespace mb
