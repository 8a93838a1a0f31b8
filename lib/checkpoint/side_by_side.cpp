#include "checkpoint/side_by_side.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "core/direct_io.hpp"

namespace mb {

size_t shards_open_at_once(uint64_t buffer_bytes, size_t shards_of_rank) {
  const uint64_t per_shard = 2 * direct_io_chunk_bytes(buffer_bytes);
  const uint64_t fit = buffer_bytes / 4 / std::max<uint64_t>(per_shard, 1);
  return std::clamp<size_t>(std::min<uint64_t>(fit, shards_of_rank), 1, 8);
}

std::vector<std::vector<size_t>> shard_batches(const ImportPlan& plan,
                                               const std::vector<size_t>& shards,
                                               size_t open_at_once) {
  std::vector<std::vector<size_t>> out;
  std::map<uint64_t, size_t> filling;  // pipeline stage -> its open batch
  const size_t n = std::max<size_t>(open_at_once, 1);
  for (size_t si : shards) {
    const uint64_t pp = plan.shards.at(si).coord.pp;
    auto it = filling.find(pp);
    if (it == filling.end() || out[it->second].size() >= n) {
      filling[pp] = out.size();
      out.push_back({si});
    } else {
      out[it->second].push_back(si);
    }
  }
  return out;
}

namespace {

using Part = std::pair<size_t, size_t>;  // (shard, tensor index)

const LocalTensor& tensor_of(const ImportPlan& plan, const Part& p) {
  return plan.shards[p.first].tensors[p.second];
}

// Parts that are the same tensor (the same segments and width) in one step,
// sharing its columns.
ConversionStep shared(const ImportPlan& plan, const std::vector<Part>& parts) {
  const LocalTensor& t = tensor_of(plan, parts.front());
  return {parts, std::vector<uint64_t>(parts.size(), 0), t.segments, t.rows(), t.cols()};
}

// The distinct tensors (each with the parts that share it) side by side, if
// that reads every source tensor of theirs through one merged segment; else
// nothing.
std::optional<ConversionStep> side_by_side(const ImportPlan& plan,
                                           const std::vector<std::vector<Part>>& distinct) {
  ConversionStep step;
  std::vector<Segment> all;
  for (const auto& sharing : distinct) {
    const LocalTensor& t = tensor_of(plan, sharing.front());
    for (Segment g : t.segments) {
      g.dst_col += step.cols;
      all.push_back(g);
    }
    for (const Part& p : sharing) {
      step.parts.push_back(p);
      step.part_col.push_back(step.cols);
    }
    step.rows = t.rows();
    step.cols += t.cols();
  }
  step.segments = coalesce(merge_column_neighbours(all));
  if (step.segments.size() >= all.size()) return std::nullopt;  // nothing read once more
  std::set<uint32_t> sources;
  for (const Segment& g : step.segments)
    if (!sources.insert(g.src).second) return std::nullopt;  // one source read in pieces
  return step;
}

// The steps of one group of k-th tensors (same rows, dtypes and op), in batch
// order: one step if the distinct tensors join side by side, else one step
// per distinct tensor.
std::vector<ConversionStep> group_steps(const ImportPlan& plan, const std::vector<Part>& group) {
  std::vector<std::vector<Part>> distinct;
  for (const Part& p : group) {
    const LocalTensor& t = tensor_of(plan, p);
    auto same = std::find_if(distinct.begin(), distinct.end(), [&](const std::vector<Part>& d) {
      const LocalTensor& u = tensor_of(plan, d.front());
      return u.cols() == t.cols() && u.segments == t.segments;
    });
    if (same == distinct.end())
      distinct.push_back({p});
    else
      same->push_back(p);
  }
  if (distinct.size() > 1)
    if (auto j = side_by_side(plan, distinct)) return {std::move(*j)};
  std::vector<ConversionStep> out;
  for (const auto& sharing : distinct) out.push_back(shared(plan, sharing));
  return out;
}

}  // namespace

std::vector<ConversionStep> side_by_side_steps(const ImportPlan& plan,
                                               const std::vector<size_t>& batch) {
  std::vector<ConversionStep> steps;
  size_t most = 0;
  for (size_t si : batch) most = std::max(most, plan.shards[si].tensors.size());
  for (size_t k = 0; k < most; ++k) {
    // The batch's k-th tensors, grouped by what a joined job must share, each
    // group in batch order; groups in the order of their first member.
    std::vector<std::vector<Part>> groups;
    std::vector<std::tuple<uint64_t, DType, DType, ElementOp>> keys;
    for (size_t si : batch) {
      if (k >= plan.shards[si].tensors.size()) continue;
      const LocalTensor& t = plan.shards[si].tensors[k];
      const auto key = std::make_tuple(t.rows(), t.source_dtype, t.dtype, t.op);
      const auto it = std::find(keys.begin(), keys.end(), key);
      if (it == keys.end()) {
        keys.push_back(key);
        groups.push_back({{si, k}});
      } else {
        groups[static_cast<size_t>(it - keys.begin())].push_back({si, k});
      }
    }
    for (const auto& g : groups)
      for (auto& st : group_steps(plan, g)) steps.push_back(std::move(st));
  }
  return steps;
}

size_t largest_batch(const ImportPlan& plan, int rank, uint64_t buffer_bytes) {
  const std::vector<size_t> mine = plan.shards_of_rank(rank);
  size_t most = 1;
  for (const auto& b : shard_batches(plan, mine, shards_open_at_once(buffer_bytes, mine.size())))
    most = std::max(most, b.size());
  return most;
}

std::vector<ConversionStep> rank_steps(const ImportPlan& plan, int rank, uint64_t buffer_bytes) {
  const std::vector<size_t> mine = plan.shards_of_rank(rank);
  std::vector<ConversionStep> out;
  for (const auto& batch :
       shard_batches(plan, mine, shards_open_at_once(buffer_bytes, mine.size())))
    for (auto& s : side_by_side_steps(plan, batch)) out.push_back(std::move(s));
  return out;
}

std::vector<std::pair<int, ConversionStep>> every_rank_steps(const ImportPlan& plan,
                                                             uint64_t buffer_bytes) {
  std::vector<std::pair<int, ConversionStep>> out;
  for (int r = 0; r < plan.world_size; ++r)
    for (auto& s : rank_steps(plan, r, buffer_bytes)) out.emplace_back(r, std::move(s));
  return out;
}

}  // namespace mb
