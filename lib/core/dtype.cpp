#include "core/dtype.hpp"

#include <array>
#include <cmath>
#include <cstring>

#include "core/error.hpp"

namespace mb {
namespace {
struct Info {
  DType type;
  std::string_view name;
  std::string_view torch;
  size_t size;
  bool is_float;
};
constexpr std::array<Info, 15> kInfo = {{
    {DType::Bool, "BOOL", "bool", 1, false},
    {DType::U8, "U8", "uint8", 1, false},
    {DType::I8, "I8", "int8", 1, false},
    {DType::F8_E5M2, "F8_E5M2", "float8_e5m2", 1, true},
    {DType::F8_E4M3, "F8_E4M3", "float8_e4m3fn", 1, true},
    {DType::I16, "I16", "int16", 2, false},
    {DType::U16, "U16", "uint16", 2, false},
    {DType::F16, "F16", "float16", 2, true},
    {DType::BF16, "BF16", "bfloat16", 2, true},
    {DType::I32, "I32", "int32", 4, false},
    {DType::U32, "U32", "uint32", 4, false},
    {DType::F32, "F32", "float32", 4, true},
    {DType::F64, "F64", "float64", 8, true},
    {DType::I64, "I64", "int64", 8, false},
    {DType::U64, "U64", "uint64", 8, false},
}};
const Info& info(DType t) { return kInfo[static_cast<size_t>(t)]; }
}  // namespace

std::string_view dtype_name(DType t) { return info(t).name; }
std::string_view dtype_torch_name(DType t) { return info(t).torch; }
size_t dtype_size(DType t) { return info(t).size; }
bool dtype_is_float(DType t) { return info(t).is_float; }
bool dtype_is_castable(DType t) {
  return t == DType::F16 || t == DType::BF16 || t == DType::F32 || t == DType::F64;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.name == name) return i.type;
  return std::nullopt;
}

std::optional<DType> dtype_from_user(std::string_view name) {
  if (auto t = dtype_from_name(name)) return t;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "fp16" || name == "f16" || name == "float16" || name == "half") return DType::F16;
  if (name == "fp32" || name == "f32" || name == "float32" || name == "float") return DType::F32;
  if (name == "fp64" || name == "f64" || name == "float64" || name == "double") return DType::F64;
  return std::nullopt;
}

// f32_to_bf16, f16_to_f32 and f32_to_f16 live in dtype_convert.hpp (host and
// device), and so does the per-element conversion that convert_elements runs:
// conv::transform_element (offset 0). The CUDA op/cast kernel calls the same
// function, so the CPU and the GPU cannot disagree.

namespace {
int cast_kind(DType t) {
  switch (t) {
    case DType::BF16: return conv::kBF16;
    case DType::F16: return conv::kF16;
    case DType::F32: return conv::kF32;
    default: return conv::kF64;
  }
}

template <int From, int To>
void convert_run(const unsigned char* s, unsigned char* d, size_t n) {
  using In = conv::bits_t<From>;
  using Out = conv::bits_t<To>;
  for (size_t i = 0; i < n; ++i) {
    In x;
    std::memcpy(&x, s + sizeof(In) * i, sizeof(In));
    const Out y = conv::transform_element<From, To>(x, 0);
    std::memcpy(d + sizeof(Out) * i, &y, sizeof(Out));
  }
}

template <int From>
void convert_from(DType to, const unsigned char* s, unsigned char* d, size_t n) {
  switch (cast_kind(to)) {
    case conv::kBF16: convert_run<From, conv::kBF16>(s, d, n); break;
    case conv::kF16: convert_run<From, conv::kF16>(s, d, n); break;
    case conv::kF32: convert_run<From, conv::kF32>(s, d, n); break;
    default: convert_run<From, conv::kF64>(s, d, n); break;
  }
}
}  // namespace

void convert_elements(DType from, const void* src, DType to, void* dst, size_t n) {
  MB_CHECK(dtype_is_castable(from) && dtype_is_castable(to), "cannot convert {} to {}",
           dtype_name(from), dtype_name(to));
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  if (from == to) {
    std::memmove(dst, src, n * dtype_size(from));
    return;
  }
  // Narrowing F64 to a 16-bit type through fp32 would round twice, so only
  // F64 <-> F32 is allowed on that side. Every other pair goes through fp32
  // (fp64 when either side is F64), exact for every widening step; BF16 <->
  // F32, the conversions that matter for Qwen3.5, are direct.
  MB_CHECK(n == 0 || from != DType::F64 || to == DType::F32,
           "converting F64 to {} is not supported (it would round twice)", dtype_name(to));
  switch (cast_kind(from)) {
    case conv::kBF16: convert_from<conv::kBF16>(to, s, d, n); break;
    case conv::kF16: convert_from<conv::kF16>(to, s, d, n); break;
    case conv::kF32: convert_from<conv::kF32>(to, s, d, n); break;
    default: convert_from<conv::kF64>(to, s, d, n); break;
  }
}

}  // namespace mb
