// Rank assignment of the import plan: which MPI rank writes which shard.
#include <algorithm>
#include <numeric>

#include "core/error.hpp"
#include "layout/import_plan.hpp"

namespace mb {

void assign_shards_to_ranks(std::vector<ShardPlan>& shards, int world_size, bool canonical_only) {
  MB_CHECK(world_size >= 1, "internal: world size {}", world_size);
  auto weight = [&](size_t i) {
    return canonical_only ? shards[i].canonical_bytes() : shards[i].bytes_written();
  };
  std::vector<size_t> order(shards.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return weight(a) > weight(b); });
  std::vector<uint64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<size_t> count(static_cast<size_t>(world_size), 0);
  for (size_t i : order) {
    size_t best = 0;
    for (size_t r = 1; r < load.size(); ++r)
      if (load[r] < load[best] || (load[r] == load[best] && count[r] < count[best])) best = r;
    shards[i].rank = static_cast<int>(best);
    load[best] += weight(i);
    ++count[best];
  }
}

}  // namespace mb
