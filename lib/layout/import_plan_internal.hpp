// Internal to lib/layout: the pieces of build_import_plan() (import_plan.cpp)
// that live in their own files. Not for use outside the import plan.
#pragma once

#include <string>
#include <vector>

#include "layout/import_plan.hpp"

namespace mb {

// import_plan_canonical.cpp: whether one local copy of HF elements is the
// canonical one (the copy export reads and torch_dist stores).
bool is_canonical_copy(const ShardCoord& coord, const ParallelLayout& l, Split split, bool expert,
                       bool replica, const std::vector<Segment>& segments);

// import_plan_tiling.cpp: strict accounting. Checks that the canonical copies
// of every consumed HF tensor tile it exactly (throws otherwise) and reports
// the HF tensors nothing consumes: an error when strict, else a warning.
// Returns those unconsumed tensors' names, in catalog order.
std::vector<std::string> account_hf_elements(const ImportPlan& p, bool strict);

}  // namespace mb
