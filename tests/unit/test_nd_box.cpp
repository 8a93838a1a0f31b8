// linear_run against brute force: every box inside a small 3-D extent (and a
// 2-D and a 1-D one), its elements' row-major indices computed one by one.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/nd_box.hpp"

using namespace mb;

namespace {
// Every box (offsets and sizes >= 1) inside `outer`, each checked.
void check_all_boxes(const Box& outer) {
  const size_t nd = outer.sizes.size();
  size_t runs = 0, not_runs = 0;
  std::vector<uint64_t> off(nd, 0), size(nd, 1);
  // An odometer over (offset, size) per dim.
  auto step = [&]() {
    for (size_t d = nd; d-- > 0;) {
      if (off[d] + size[d] < outer.sizes[d]) {
        ++size[d];
        return true;
      }
      size[d] = 1;
      if (++off[d] < outer.sizes[d]) return true;
      off[d] = 0;
    }
    return false;
  };
  do {
    Box box;
    for (size_t d = 0; d < nd; ++d) {
      box.offsets.push_back(outer.offsets[d] + off[d]);
      box.sizes.push_back(size[d]);
    }
    // Each element's index, by its own odometer, row-major within outer.
    std::vector<uint64_t> idx, p(off);
    for (;;) {
      uint64_t i = 0;
      for (size_t d = 0; d < nd; ++d) i = i * outer.sizes[d] + p[d];
      idx.push_back(i);
      size_t d = nd;
      while (d-- > 0) {
        if (++p[d] < off[d] + size[d]) break;
        p[d] = off[d];
      }
      if (d == SIZE_MAX) break;
    }
    std::sort(idx.begin(), idx.end());
    const bool consecutive = idx.back() - idx.front() + 1 == idx.size();
    const auto run = linear_run(box, outer);
    ASSERT_EQ(run.has_value(), consecutive) << "box at " << off[0] << " size " << size[0];
    if (run) {
      EXPECT_EQ(run->first, idx.front());
      EXPECT_EQ(run->second, idx.back() + 1);
      ++runs;
    } else {
      ++not_runs;
    }
  } while (step());
  // Both answers occur (for more than one dim), so the check can fail either way.
  EXPECT_GT(runs, 0u);
  if (nd > 1) EXPECT_GT(not_runs, 0u);
}
}  // namespace

TEST(NdBox, LinearRunMatchesElementByElementIndices) {
  check_all_boxes(Box{{2, 0, 5}, {3, 4, 5}});
  check_all_boxes(Box{{0, 7}, {4, 6}});
  check_all_boxes(Box{{3}, {9}});
}
