// The canonical-copy policy of the import plan.
#include "layout/import_plan_internal.hpp"

namespace mb {

// One copy of each HF element is canonical: export reads it, replicas are
// only checked, and torch_dist stores only it. Replicated tensors: TP rank
// 0; expert tensors: the TP rank that equals the ETP rank; non-expert
// tensors: one EP rank, taken in turn by HF tensor (its first source's
// index in the sorted catalog), so that the EP ranks share the writing of
// the non-expert tensors instead of EP rank 0 writing them all.
bool is_canonical_copy(const ShardCoord& coord, const ParallelLayout& l, Split split, bool expert,
                       bool replica, const std::vector<Segment>& segments) {
  const uint64_t ep_owner = segments.empty() ? 0 : segments.front().src % l.ep;
  if (replica) return false;
  if (expert) return coord.tp < l.etp;
  return coord.ep == ep_owner && (split != Split::Replicated || coord.tp == 0);
}

}  // namespace mb
