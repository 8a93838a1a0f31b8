// Element types as safetensors names them, and the exact conversions between
// the floating-point ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/dtype_convert.hpp"

namespace mb {

enum class DType : uint8_t {
  Bool, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64,
};

// "BF16", "F32", ... exactly as in the safetensors header.
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// Also accepts the spellings users type: bf16, bfloat16, fp16, float16, fp32, float32.
std::optional<DType> dtype_from_user(std::string_view name);
// torch spelling (bfloat16, float32, ...) as used in Megatron configs.
std::string_view dtype_torch_name(DType t);
size_t dtype_size(DType t);
bool dtype_is_float(DType t);
// Types that dtype conversion supports (F16, BF16, F32, F64).
bool dtype_is_castable(DType t);

// bf16 / fp16 <-> fp32 (bf16_to_f32, f32_to_bf16, f16_to_f32, f32_to_f16) are
// in dtype_convert.hpp, shared with the CUDA kernels. Narrowing rounds to
// nearest, ties to even, and keeps NaN a (quiet) NaN, which is what torch's
// .to() does.

// Converts n elements from `src` (type `from`) to `dst` (type `to`). Both must
// be castable types. The conversion goes through fp32 (fp64 when either side
// is F64), which is exact for every widening step.
void convert_elements(DType from, const void* src, DType to, void* dst, size_t n);

}  // namespace mb
