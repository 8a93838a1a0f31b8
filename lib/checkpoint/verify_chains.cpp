#include "checkpoint/verify_chains.hpp"

#include <algorithm>
#include <map>
#include <utility>

#include "core/error.hpp"

namespace mb {
namespace {
using Interval = std::pair<uint64_t, uint64_t>;  // [first, second)

// Sorted, disjoint, with touching intervals merged.
std::vector<Interval> merged(std::vector<Interval> v) {
  std::sort(v.begin(), v.end());
  std::vector<Interval> out;
  for (const Interval& i : v) {
    if (!out.empty() && i.first <= out.back().second)
      out.back().second = std::max(out.back().second, i.second);
    else
      out.push_back(i);
  }
  return out;
}

std::vector<ChainLink> chain_for(uint64_t rows,
                                 const std::map<int, std::vector<Interval>>& by_rank) {
  std::vector<ChainLink> links;
  if (by_rank.empty() || rows == 0) return links;
  uint64_t cur = 0;
  while (cur < rows) {
    // The rank whose read rows from `cur` reach furthest.
    int best = -1;
    uint64_t best_end = cur;
    for (const auto& [rank, ivs] : by_rank)
      for (const Interval& i : ivs) {
        if (i.first > cur || i.second <= cur) continue;
        const bool extends = !links.empty() && links.back().rank == rank;
        if (i.second > best_end || (i.second == best_end && extends))
          best = rank, best_end = i.second;
      }
    if (best < 0) {
      // Nobody reads row `cur`: the rows up to the next read row go to the
      // link before (or, first of all, to the rank of the next read).
      uint64_t next = rows;
      int next_rank = -1;
      for (const auto& [rank, ivs] : by_rank)
        for (const Interval& i : ivs)
          if (i.first > cur && i.first < next) next = i.first, next_rank = rank;
      if (links.empty()) {
        MB_CHECK(next_rank >= 0, "internal: a read source tensor without read rows");
        links.push_back({next_rank, cur, next});
      } else {
        links.back().row1 = next;
      }
      cur = next;
      continue;
    }
    if (!links.empty() && links.back().rank == best)
      links.back().row1 = best_end;
    else
      links.push_back({best, cur, best_end});
    cur = best_end;
  }
  return links;
}
}  // namespace

VerifyChains build_verify_chains(const std::vector<uint64_t>& source_rows,
                                 const std::vector<SourceReads>& reads) {
  std::vector<std::map<int, std::vector<Interval>>> by_source(source_rows.size());
  for (const SourceReads& r : reads)
    for (const Segment& g : *r.segments) {
      MB_CHECK(g.src < source_rows.size(), "internal: segment source {} of {}", g.src,
               source_rows.size());
      if (g.rows > 0 && g.cols > 0)
        by_source[g.src][r.rank].push_back({g.src_row, g.src_row + g.rows});
    }
  VerifyChains chains(source_rows.size());
  for (size_t id = 0; id < source_rows.size(); ++id)
    chains[id] = build_chain(source_rows[id], std::move(by_source[id]));
  return chains;
}

std::vector<ChainLink> build_chain(uint64_t extent, ReadRanges by_rank) {
  for (auto& [rank, ivs] : by_rank) ivs = merged(std::move(ivs));
  return chain_for(extent, by_rank);
}

}  // namespace mb
