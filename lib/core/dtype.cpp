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

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in fp16: scale into integer units of 2^-24
    // and round half to even.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    uint32_t e = abs >> 23;
    uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // exponent shift to 2^-24 units, plus 13 mantissa bits
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  abs += rounding;
  return static_cast<uint16_t>(sign | ((abs - (112u << 23)) >> 13));
}

namespace {
double load_f64(DType t, const unsigned char* p) {
  switch (t) {
    case DType::F64: {
      double d;
      std::memcpy(&d, p, 8);
      return d;
    }
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_to_f32(h);
    }
    default: throw Error("dtype {} cannot be converted", dtype_name(t));
  }
}

// Exact for every source except F64, which is rounded once to fp32.
float load_f32(DType t, const unsigned char* p) { return static_cast<float>(load_f64(t, p)); }

void store(DType t, unsigned char* p, double v, float vf) {
  switch (t) {
    case DType::F64: std::memcpy(p, &v, 8); break;
    case DType::F32: std::memcpy(p, &vf, 4); break;
    case DType::BF16: {
      uint16_t h = f32_to_bf16(vf);
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::F16: {
      uint16_t h = f32_to_f16(vf);
      std::memcpy(p, &h, 2);
      break;
    }
    default: throw Error("dtype {} cannot be converted", dtype_name(t));
  }
}
}  // namespace

void convert_elements(DType from, const void* src, DType to, void* dst, size_t n) {
  MB_CHECK(dtype_is_castable(from) && dtype_is_castable(to), "cannot convert {} to {}",
           dtype_name(from), dtype_name(to));
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  const size_t ss = dtype_size(from), ds = dtype_size(to);
  if (from == to) {
    std::memmove(dst, src, n * ss);
    return;
  }
  // Fast paths for the conversions that matter for Qwen3.5 checkpoints.
  if (from == DType::BF16 && to == DType::F32) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, s + 2 * i, 2);
      float f = bf16_to_f32(h);
      std::memcpy(d + 4 * i, &f, 4);
    }
    return;
  }
  if (from == DType::F32 && to == DType::BF16) {
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s + 4 * i, 4);
      uint16_t h = f32_to_bf16(f);
      std::memcpy(d + 2 * i, &h, 2);
    }
    return;
  }
  // Narrowing F64 to a 16-bit type through fp32 would round twice, so only
  // F64 <-> F32 is allowed on that side.
  const bool via_double = from == DType::F64 || to == DType::F64;
  for (size_t i = 0; i < n; ++i) {
    if (via_double) {
      double v = load_f64(from, s + ss * i);
      MB_CHECK(to == DType::F64 || to == DType::F32,
               "converting F64 to {} is not supported (it would round twice)", dtype_name(to));
      store(to, d + ds * i, v, static_cast<float>(v));
    } else {
      float v = load_f32(from, s + ss * i);
      store(to, d + ds * i, v, v);
    }
  }
}

}  // namespace mb
