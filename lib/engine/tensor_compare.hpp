// Element comparison for verify: bit-exact, or within |a - b| <= atol + rtol·|b|,
// keeping what a report needs (count, max abs diff, first differing index).
// With tolerances, a non-finite value equals only itself (NaN equals NaN,
// +Inf equals +Inf): NaN against a number, Inf against a finite value and
// Inf against -Inf always differ, whatever atol and rtol say (|Inf - x| <=
// rtol·Inf would otherwise hold), and the report says NaN or Inf.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.hpp"
#include "core/shape.hpp"

namespace mb {

class TensorCompare {
 public:
  TensorCompare(DType a_dtype, DType b_dtype, double atol, double rtol);

  // Compares n elements; `first_element` is their flat index in the tensor.
  void add(const void* a, const void* b, uint64_t n, uint64_t first_element);

  uint64_t differing() const { return differing_; }
  // Differing pairs in which one side is NaN or infinite.
  uint64_t differing_nonfinite() const { return nan_pairs_ + inf_pairs_; }
  // "12 of 4096 elements differ, max abs diff 0.0039, first at [3, 17] (A 0.1234, B 0.1273)";
  // with non-finite pairs, e.g. "..., max abs diff nan (1 pair NaN against a
  // value, 2 pairs Inf against another value; finite pairs differ by at most 0.0039), ...".
  std::string describe(const Shape& shape) const;

 private:
  DType at_, bt_;
  double atol_, rtol_;
  bool exact_;
  uint64_t differing_ = 0;
  double max_abs_ = 0;      // over differing pairs of finite values
  uint64_t nan_pairs_ = 0;  // differing pairs where one side is NaN
  uint64_t inf_pairs_ = 0;  // differing pairs where one side is ±Inf (and neither is NaN)
  uint64_t first_ = 0;
  double first_a_ = 0, first_b_ = 0;
};

}  // namespace mb
