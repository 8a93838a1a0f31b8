// Tensor shapes, and the 2-D view every re-layout works in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mb {

using Shape = std::vector<uint64_t>;

inline uint64_t numel(const Shape& s) {
  uint64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// Every transform in this project permutes, slices or concatenates along one
// axis of a row-major tensor. We view an N-D tensor as 2-D: columns are the last
// dimension and rows are the product of all the others. A 1-D tensor [n] is
// viewed as [n, 1] so that splitting it along dim 0 is a row split, and a
// scalar as [1, 1].
inline uint64_t rows_2d(const Shape& s) {
  if (s.empty()) return 1;
  if (s.size() == 1) return s[0];
  uint64_t r = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) r *= s[i];
  return r;
}
inline uint64_t cols_2d(const Shape& s) {
  if (s.size() <= 1) return 1;
  return s.back();
}

inline std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace mb
