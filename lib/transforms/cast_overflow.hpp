// Narrowing casts that overflow: a finite value too large for the target
// type (bf16 99840 in fp16, whose largest finite value is 65504) rounds to
// Inf. That silently changes the model, so the engines count such elements
// and refuse the tensor unless the user allowed it (--allow-overflow).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.hpp"

namespace mb {

// Whether a cast from `from` to `to` can turn a finite value into Inf: any
// cast between different floating types except a widening one.
bool cast_can_overflow(DType from, DType to);

// Elements that are ±Inf in `dst` (type `to`) but not in `src` (type `from`);
// the first one's index and source value go to *first / *first_value.
uint64_t count_cast_overflow(DType from, const void* src, DType to, const void* dst, size_t n,
                             uint64_t* first = nullptr, double* first_value = nullptr);

// ±Inf elements among n of type `t` (0 for types that have none).
uint64_t count_infinite(DType t, const void* p, size_t n);

// The user-facing error: "<what>: 3 element(s) overflow to Inf when cast from
// BF16 to F16 (e.g. 99840 at element 17; the largest finite F16 is 65504):
// pass --allow-overflow to write them as Inf" (no "<what>: " when empty: the
// engines leave naming the tensor to their callers' context).
std::string cast_overflow_message(const std::string& what, DType from, DType to, uint64_t count,
                                  uint64_t first, double first_value, bool have_first);

}  // namespace mb
