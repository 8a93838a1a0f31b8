// N-dimensional boxes: the row ranges of our 2-D view expressed as boxes of
// the N-D tensor (for HDF5 hyperslabs and torch_dist chunks), and box
// intersection.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "core/shape.hpp"

namespace mb {

struct Box {
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> sizes;
  uint64_t volume() const {
    uint64_t v = 1;
    for (auto s : sizes) v *= s;
    return v;
  }
  bool operator==(const Box&) const = default;
};

// Rows [r0, r1) x columns [c0, c1) of the 2-D view of a tensor of shape
// `dims` (rows = all dims but the last; a 1-D tensor is [n, 1]) as a minimal
// list of N-D boxes, in row-major order.
std::vector<Box> rows_to_boxes(const Shape& dims, uint64_t r0, uint64_t r1, uint64_t c0, uint64_t c1);

std::optional<Box> intersect(const Box& a, const Box& b);

// Row-major linear index of `point` in a box of extent `sizes`.
uint64_t linear_index(const std::vector<uint64_t>& point, const std::vector<uint64_t>& sizes);

// Where `box` (inside `outer`, same rank) is one run of outer's elements in
// row-major order: the linear indices [first, last) of that run; nullopt
// where its elements are not consecutive. A box is a run when every dim after
// its last partial one spans `outer` whole and every dim before it is one
// element wide.
std::optional<std::pair<uint64_t, uint64_t>> linear_run(const Box& box, const Box& outer);

}  // namespace mb
