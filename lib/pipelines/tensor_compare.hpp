// Element comparison for verify: bit-exact, or within |a - b| <= atol + rtol·|b|,
// keeping what a report needs (count, max abs diff, first differing index).
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
  // "12 elements differ, max abs diff 0.0039, first at [3, 17] (a 0.1234, b 0.1273)"
  std::string describe(const Shape& shape) const;

 private:
  DType at_, bt_;
  double atol_, rtol_;
  bool exact_;
  uint64_t differing_ = 0;
  double max_abs_ = 0;
  uint64_t first_ = 0;
  double first_a_ = 0, first_b_ = 0;
};

}  // namespace mb
