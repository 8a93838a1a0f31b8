// The only arithmetic in the conversion: the GDN output-norm offset (Megatron
// stores w - 1, HF stores w) and dtype casts. The CPU code here is the
// reference that the CUDA kernels must match bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/dtype.hpp"

namespace mb {

enum class ElementOp : uint8_t {
  None,
  MinusOne,  // HF -> Megatron for linear_attn.norm.weight (spec §3.7)
  PlusOne,   // its inverse, Megatron -> HF
};

ElementOp inverse(ElementOp op);
std::string_view op_name(ElementOp op);
ElementOp op_from_name(std::string_view name);

// dst[i] = cast<to>(op(cast<float>(src[i]))). The offset is computed in fp32
// (fp64 when either side is F64), then rounded once to `to` (nearest-even).
// With op None and from == to it is a plain copy.
void transform_elements(ElementOp op, DType from, const void* src, DType to, void* dst, size_t n);

// Counts elements for which applying `op` and then its inverse in fp32 does
// not give back the same bits: x - 1 is exact for |x| in [0.5, 2^24], but
// loses low bits for small |x|. Used to warn when the round trip of a
// Megatron norm would not be bit-exact.
uint64_t count_not_invertible(ElementOp op, DType dtype, const void* src, size_t n);

}  // namespace mb
