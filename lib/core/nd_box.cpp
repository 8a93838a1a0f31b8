#include "core/nd_box.hpp"

#include <algorithm>

namespace mb {

std::vector<Box> rows_to_boxes(const Shape& dims, uint64_t r0, uint64_t r1, uint64_t c0, uint64_t c1) {
  std::vector<Box> out;
  const size_t nd = dims.size();
  if (nd <= 1) {  // [n] viewed as [n, 1]; a scalar as [1, 1]
    if (r0 < r1) out.push_back({{r0}, {r1 - r0}});
    if (nd == 0 && !out.empty()) out.back() = {{}, {}};
    return out;
  }
  const size_t lead = nd - 1;
  std::vector<uint64_t> stride(lead, 1);  // rows spanned by one step of dim k
  for (size_t k = lead; k-- > 1;) stride[k - 1] = stride[k] * dims[k];
  while (r0 < r1) {
    // The coarsest dim at which r0 is aligned and a whole step still fits.
    size_t k = lead - 1;
    for (size_t j = 0; j < lead; ++j)
      if (r0 % stride[j] == 0 && r0 + stride[j] <= r1) {
        k = j;
        break;
      }
    const uint64_t idx = (r0 / stride[k]) % dims[k];
    const uint64_t count = std::min<uint64_t>((r1 - r0) / stride[k], dims[k] - idx);
    Box b;
    b.offsets.assign(nd, 0);
    b.sizes.assign(nd, 1);
    for (size_t j = 0; j < lead; ++j) {
      if (j < k) {
        b.offsets[j] = (r0 / stride[j]) % dims[j];
      } else if (j == k) {
        b.offsets[j] = idx;
        b.sizes[j] = count;
      } else {
        b.sizes[j] = dims[j];
      }
    }
    b.offsets[nd - 1] = c0;
    b.sizes[nd - 1] = c1 - c0;
    out.push_back(std::move(b));
    r0 += count * stride[k];
  }
  return out;
}

std::optional<Box> intersect(const Box& a, const Box& b) {
  Box r;
  for (size_t d = 0; d < a.offsets.size(); ++d) {
    const uint64_t lo = std::max(a.offsets[d], b.offsets[d]);
    const uint64_t hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (lo >= hi) return std::nullopt;
    r.offsets.push_back(lo);
    r.sizes.push_back(hi - lo);
  }
  return r;
}

uint64_t linear_index(const std::vector<uint64_t>& point, const std::vector<uint64_t>& sizes) {
  uint64_t idx = 0;
  for (size_t d = 0; d < sizes.size(); ++d) idx = idx * sizes[d] + point[d];
  return idx;
}

std::optional<std::pair<uint64_t, uint64_t>> linear_run(const Box& box, const Box& outer) {
  const size_t nd = outer.sizes.size();
  size_t partial = 0;  // the last dim the box does not span whole
  for (size_t d = nd; d-- > 0;)
    if (box.sizes[d] != outer.sizes[d]) {
      partial = d;
      break;
    }
  for (size_t d = 0; d < partial; ++d)
    if (box.sizes[d] != 1) return std::nullopt;
  std::vector<uint64_t> at(nd);
  for (size_t d = 0; d < nd; ++d) at[d] = box.offsets[d] - outer.offsets[d];
  const uint64_t first = linear_index(at, outer.sizes);
  return std::pair<uint64_t, uint64_t>{first, first + box.volume()};
}

}  // namespace mb
