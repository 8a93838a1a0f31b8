#include "transforms/cast_overflow.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace mb {
namespace {
double largest_finite(DType t) {
  switch (t) {
    case DType::F16:
      return 65504.0;
    case DType::BF16:
      return 3.3895313892515355e38;
    case DType::F32:
      return 3.4028234663852886e38;
    default:
      return 1.7976931348623157e308;
  }
}
constexpr size_t kChunk = 4096;  // elements widened to f64 at a time
}  // namespace

bool cast_can_overflow(DType from, DType to) {
  if (from == to || !dtype_is_castable(from) || !dtype_is_castable(to)) return false;
  return largest_finite(to) < largest_finite(from) ||
         // bf16 and f32 share an exponent range, but rounding f32 values just
         // under FLT_MAX to bf16 gives Inf.
         (from == DType::F32 && to == DType::BF16);
}

uint64_t count_infinite(DType t, const void* p, size_t n) {
  if (!dtype_is_castable(t)) return 0;
  const auto* b = static_cast<const unsigned char*>(p);
  const size_t es = dtype_size(t);
  std::vector<double> v(std::min(n, kChunk));
  uint64_t count = 0;
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t k = std::min(kChunk, n - i);
    convert_elements(t, b + i * es, DType::F64, v.data(), k);
    for (size_t j = 0; j < k; ++j) count += std::isinf(v[j]) ? 1 : 0;
  }
  return count;
}

uint64_t count_cast_overflow(DType from, const void* src, DType to, const void* dst, size_t n,
                             uint64_t* first, double* first_value) {
  if (!dtype_is_castable(from) || !dtype_is_castable(to)) return 0;
  const auto* s = static_cast<const unsigned char*>(src);
  const auto* d = static_cast<const unsigned char*>(dst);
  const size_t ss = dtype_size(from), ds = dtype_size(to);
  std::vector<double> a(std::min(n, kChunk)), b(std::min(n, kChunk));
  uint64_t count = 0;
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t k = std::min(kChunk, n - i);
    convert_elements(to, d + i * ds, DType::F64, b.data(), k);
    bool any = false;
    for (size_t j = 0; j < k && !any; ++j) any = std::isinf(b[j]);
    if (!any) continue;  // the common case: no need to widen the source
    convert_elements(from, s + i * ss, DType::F64, a.data(), k);
    for (size_t j = 0; j < k; ++j) {
      if (!std::isinf(b[j]) || std::isinf(a[j])) continue;
      if (count == 0) {
        if (first) *first = i + j;
        if (first_value) *first_value = a[j];
      }
      ++count;
    }
  }
  return count;
}

std::string cast_overflow_message(const std::string& what, DType from, DType to, uint64_t count,
                                  uint64_t first, double first_value, bool have_first) {
  const std::string example =
      have_first ? fmt::format("e.g. {:.8g} at element {}; ", first_value, first) : std::string();
  return fmt::format(
      "{}{} element(s) overflow to Inf when cast from {} to {} ({}the largest finite {} is "
      "{:.8g}): pass --allow-overflow to write them as Inf",
      what.empty() ? "" : what + ": ", count, dtype_name(from), dtype_name(to), example,
      dtype_name(to), largest_finite(to));
}

}  // namespace mb
