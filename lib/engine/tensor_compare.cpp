#include "engine/tensor_compare.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.hpp"

namespace mb {

TensorCompare::TensorCompare(DType a, DType b, double atol, double rtol)
    : at_(a), bt_(b), atol_(atol), rtol_(rtol), exact_(atol == 0 && rtol == 0) {
  MB_CHECK(!(exact_ && a != b), "internal: bit-exact comparison of {} with {}", dtype_name(a),
           dtype_name(b));
}

void TensorCompare::add(const void* a, const void* b, uint64_t n, uint64_t first_element) {
  const size_t as = dtype_size(at_), bs = dtype_size(bt_);
  if (exact_ && std::memcmp(a, b, n * as) == 0) return;
  const bool floats = dtype_is_castable(at_) && dtype_is_castable(bt_);
  std::vector<double> av, bv;
  if (floats) {
    av.resize(n);
    bv.resize(n);
    convert_elements(at_, a, DType::F64, av.data(), n);
    convert_elements(bt_, b, DType::F64, bv.data(), n);
  }
  const auto* ap = static_cast<const unsigned char*>(a);
  const auto* bp = static_cast<const unsigned char*>(b);
  for (uint64_t i = 0; i < n; ++i) {
    bool differs;
    double x = 0, y = 0;
    if (floats) {
      x = av[i];
      y = bv[i];
      if (exact_)
        differs = std::memcmp(ap + i * as, bp + i * bs, as) != 0;
      else if (!std::isfinite(x) || !std::isfinite(y))
        differs = !(x == y || (std::isnan(x) && std::isnan(y)));  // non-finite: only itself
      else
        differs = !(std::fabs(x - y) <= atol_ + rtol_ * std::fabs(y));
    } else {
      differs = std::memcmp(ap + i * as, bp + i * bs, as) != 0;
    }
    if (!differs) continue;
    if (differing_ == 0) {
      first_ = first_element + i;
      first_a_ = x;
      first_b_ = y;
    }
    ++differing_;
    if (!floats) continue;
    if (std::isnan(x) || std::isnan(y))
      ++nan_pairs_;
    else if (std::isinf(x) || std::isinf(y))
      ++inf_pairs_;
    else
      max_abs_ = std::max(max_abs_, std::fabs(x - y));
  }
}

std::string TensorCompare::describe(const Shape& shape) const {
  // Flat index -> multi-index in the tensor's own shape.
  std::vector<uint64_t> idx(shape.size(), 0);
  uint64_t rest = first_;
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] ? rest % shape[d] : 0;
    rest = shape[d] ? rest / shape[d] : 0;
  }
  std::string max = fmt::format("{:.6g}", max_abs_);
  if (nan_pairs_ + inf_pairs_ > 0) {
    std::vector<std::string> kinds;
    if (nan_pairs_)
      kinds.push_back(
          fmt::format("{} pair{} NaN against a value", nan_pairs_, nan_pairs_ == 1 ? "" : "s"));
    if (inf_pairs_)
      kinds.push_back(fmt::format("{} pair{} Inf against another value", inf_pairs_,
                                  inf_pairs_ == 1 ? "" : "s"));
    const bool all = nan_pairs_ + inf_pairs_ == differing_;
    max = fmt::format("{} ({}{})", nan_pairs_ ? "nan" : "inf", fmt::join(kinds, ", "),
                      all ? "" : fmt::format("; finite pairs differ by at most {:.6g}", max_abs_));
  }
  return fmt::format(
      "{} of {} elements differ, max abs diff {}, first at [{}] (A {:.8g}, B {:.8g})", differing_,
      numel(shape), max, fmt::join(idx, ", "), first_a_, first_b_);
}

}  // namespace mb
