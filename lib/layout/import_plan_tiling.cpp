// Strict accounting of the import plan: each HF element is produced by
// exactly one canonical copy, and every HF tensor is consumed.
#include <algorithm>

#include "core/error.hpp"
#include "core/log.hpp"
#include "layout/import_plan_internal.hpp"

namespace mb {
namespace {

struct Rect {
  uint64_t r0, r1, c0, c1;
};

// Checks that the canonical rectangles of one HF tensor tile it exactly.
void check_tiling(const HfTensor& t, std::vector<Rect>& rects, const std::string& first_user) {
  uint64_t area = 0;
  for (const auto& r : rects) {
    MB_CHECK(r.r1 <= t.rows() && r.c1 <= t.cols(),
             "internal: a copy of HF tensor '{}' reads rows [{}, {}) cols [{}, {}) of a {}x{} view",
             t.name, r.r0, r.r1, r.c0, r.c1, t.rows(), t.cols());
    area += (r.r1 - r.r0) * (r.c1 - r.c0);
  }
  std::sort(rects.begin(), rects.end(),
            [](const Rect& a, const Rect& b) { return a.r0 != b.r0 ? a.r0 < b.r0 : a.c0 < b.c0; });
  for (size_t i = 0; i < rects.size(); ++i)
    for (size_t k = i + 1; k < rects.size() && rects[k].r0 < rects[i].r1; ++k)
      MB_CHECK(rects[k].c0 >= rects[i].c1 || rects[k].c1 <= rects[i].c0,
               "internal: HF tensor '{}' elements [{}, {}) x [{}, {}) would be produced twice "
               "(first used by {})",
               t.name, rects[k].r0, std::min(rects[i].r1, rects[k].r1),
               std::max(rects[i].c0, rects[k].c0), std::min(rects[i].c1, rects[k].c1), first_user);
  MB_CHECK(area == t.rows() * t.cols(),
           "internal: the conversion covers {} of the {} elements of HF tensor '{}' (used by {})",
           area, t.rows() * t.cols(), t.name, first_user);
}

// The unconsumed HF tensors, listed (the first 20) with dtype, shape and file.
void report_unconsumed(const HfCatalog& catalog, const std::vector<std::string>& unconsumed,
                       bool strict) {
  std::string msg = fmt::format(
      "{} HF tensor{} in {} {} not consumed by the Qwen3.5 mapping:", unconsumed.size(),
      unconsumed.size() > 1 ? "s" : "", catalog.dir.string(), unconsumed.size() > 1 ? "are" : "is");
  for (size_t i = 0; i < unconsumed.size() && i < 20; ++i) {
    const HfTensor* t = catalog.find(unconsumed[i]);
    msg += fmt::format("\n  - {} ({} {}, in {})", t->name, dtype_name(t->dtype),
                       shape_str(t->shape), catalog.files[t->file]);
  }
  if (unconsumed.size() > 20) msg += fmt::format("\n  ... and {} more", unconsumed.size() - 20);
  if (strict) throw Error("{}\n(pass --not-strict to convert anyway without them)", msg);
  log::warn("{}\n(--not-strict: they are left out)", msg);
}

}  // namespace

std::vector<std::string> account_hf_elements(const ImportPlan& p, bool strict) {
  std::vector<std::vector<Rect>> rects(p.catalog.tensors.size());
  std::vector<const std::string*> user(p.catalog.tensors.size(), nullptr);
  for (const auto& s : p.shards)
    for (const auto& t : s.tensors) {
      if (!t.canonical) continue;
      for (const auto& g : t.segments) {
        rects[g.src].push_back({g.src_row, g.src_row + g.rows, g.src_col, g.src_col + g.cols});
        if (!user[g.src]) user[g.src] = &t.global_name;
      }
    }
  std::vector<std::string> unconsumed;
  for (size_t i = 0; i < p.catalog.tensors.size(); ++i) {
    if (rects[i].empty()) {
      unconsumed.push_back(p.catalog.tensors[i].name);
      continue;
    }
    check_tiling(p.catalog.tensors[i], rects[i], *user[i]);
  }
  if (!unconsumed.empty()) report_unconsumed(p.catalog, unconsumed, strict);
  return unconsumed;
}

}  // namespace mb
