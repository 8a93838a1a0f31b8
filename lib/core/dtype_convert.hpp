// Bit-exact element conversions, usable from host and device (CUDA) code.
//
// This header is the ONE implementation of the bf16 / fp16 <-> fp32
// conversions: dtype.cpp (convert_elements), elementwise.cpp
// (transform_elements) and the CUDA kernels all call it, so the GPU path
// cannot drift from the CPU reference.
//
// Beyond the four scalar conversions it spells out, in plain integer code,
// what the CPU path does to NaNs on x86-64 when it widens fp32 to fp64,
// narrows back, or adds ±1 (the CPU quiets a signalling NaN and keeps its
// payload; a GPU's native arithmetic would give a canonical NaN instead), and
// transform_element<From, To>(), the per-element semantics of
// transform_elements(). The unit tests check all of it on the CPU against
// the CPU functions; the GPU tests check the kernels that use it.
#pragma once

#include <cstdint>

#include "core/host_device.hpp"

namespace mb {

// ---- bit casts -------------------------------------------------------------

MB_HOST_DEVICE inline uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}

MB_HOST_DEVICE inline float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

MB_HOST_DEVICE inline uint64_t f64_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  __builtin_memcpy(&u, &d, 8);
  return u;
#endif
}

MB_HOST_DEVICE inline double f64_from_bits(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  __builtin_memcpy(&d, &u, 8);
  return d;
#endif
}

// ---- bf16 / fp16 <-> fp32 --------------------------------------------------
// Narrowing rounds to nearest, ties to even, and keeps NaN a (quiet) NaN,
// which is what torch's .to() does.

MB_HOST_DEVICE inline float bf16_to_f32(uint16_t b) {
  return f32_from_bits(static_cast<uint32_t>(b) << 16);
}

MB_HOST_DEVICE inline uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

MB_HOST_DEVICE inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
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
  return f32_from_bits(u);
}

MB_HOST_DEVICE inline uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in fp16: scale into integer units of 2^-24
    // and round half to even.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // exponent shift to 2^-24 units, plus 13 mantissa bits
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  abs += rounding;
  return static_cast<uint16_t>(sign | ((abs - (112u << 23)) >> 13));
}

// ---- what the CPU does with NaNs (x86-64 SSE, also AArch64 default mode) ----
namespace conv {

MB_HOST_DEVICE inline bool f32_bits_is_nan(uint32_t u) {
  return (u & 0x7fffffffu) > 0x7f800000u;
}
MB_HOST_DEVICE inline bool f64_bits_is_nan(uint64_t u) {
  return (u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
}

// A NaN operand comes out of an fp32 operation quieted, payload kept.
MB_HOST_DEVICE inline uint32_t quiet_f32_bits(uint32_t u) {
  return f32_bits_is_nan(u) ? (u | 0x00400000u) : u;
}

// static_cast<double>(float), bit for bit: exact, subnormals normalised, a NaN
// quieted with its payload moved to the top of the fp64 mantissa.
MB_HOST_DEVICE inline uint64_t f32_bits_to_f64_bits(uint32_t u) {
  const uint64_t sign = static_cast<uint64_t>(u >> 31) << 63;
  const uint32_t e = (u >> 23) & 0xffu;
  const uint64_t m = u & 0x7fffffu;
  if (e == 0xffu) {
    if (m == 0) return sign | 0x7ff0000000000000ull;
    return sign | 0x7ff8000000000000ull | (m << 29);
  }
  if (e == 0) {
    if (m == 0) return sign;
    int p = 22;  // highest set bit of the subnormal's mantissa
    while (((m >> p) & 1u) == 0) --p;
    const uint64_t exp = static_cast<uint64_t>(p - 149 + 1023);
    return sign | (exp << 52) | ((m << (52 - p)) & 0xfffffffffffffull);
  }
  return sign | (static_cast<uint64_t>(e + 896u) << 52) | (m << 29);
}

MB_HOST_DEVICE inline double f32_to_f64(float f) {
  return f64_from_bits(f32_bits_to_f64_bits(f32_to_bits(f)));
}

// static_cast<float>(double): round to nearest even (native on both sides,
// IEEE), except a NaN, which keeps the top of its payload and is quieted.
MB_HOST_DEVICE inline uint32_t f64_nan_bits_to_f32_bits(uint64_t u) {
  return static_cast<uint32_t>(u >> 63) << 31 | 0x7fc00000u |
         static_cast<uint32_t>((u >> 29) & 0x7fffffu);
}

MB_HOST_DEVICE inline float f64_to_f32(double d) {
  const uint64_t u = f64_to_bits(d);
  if (f64_bits_is_nan(u)) return f32_from_bits(f64_nan_bits_to_f32_bits(u));
#if defined(__CUDA_ARCH__)
  return __double2float_rn(d);
#else
  return static_cast<float>(d);
#endif
}

// x + off (off = ±1 or 0) in fp32 / fp64, with the CPU's NaN result.
MB_HOST_DEVICE inline float add_f32(float x, float off) {
  const uint32_t u = f32_to_bits(x);
  if (f32_bits_is_nan(u)) return f32_from_bits(u | 0x00400000u);
#if defined(__CUDA_ARCH__)
  return __fadd_rn(x, off);
#else
  return x + off;
#endif
}

MB_HOST_DEVICE inline double add_f64(double x, double off) {
  const uint64_t u = f64_to_bits(x);
  if (f64_bits_is_nan(u)) return f64_from_bits(u | 0x0008000000000000ull);
#if defined(__CUDA_ARCH__)
  return __dadd_rn(x, off);
#else
  return x + off;
#endif
}

// ---- one element of transform_elements() -----------------------------------

// The castable element types, as template arguments.
enum Kind : int { kBF16 = 0, kF16 = 1, kF32 = 2, kF64 = 3 };

template <int K>
struct KindBits;
template <>
struct KindBits<kBF16> {
  using type = uint16_t;
};
template <>
struct KindBits<kF16> {
  using type = uint16_t;
};
template <>
struct KindBits<kF32> {
  using type = uint32_t;
};
template <>
struct KindBits<kF64> {
  using type = uint64_t;
};
template <int K>
using bits_t = typename KindBits<K>::type;

// The value as fp32, exactly (load_float in elementwise.cpp). Not for F64.
template <int K>
MB_HOST_DEVICE inline float load_f32(bits_t<K> x) {
  if constexpr (K == kBF16)
    return bf16_to_f32(x);
  else if constexpr (K == kF16)
    return f16_to_f32(x);
  else
    return f32_from_bits(static_cast<uint32_t>(x));
}

// The value as fp64 (load_f64 in dtype.cpp: the fp32 value widened).
template <int K>
MB_HOST_DEVICE inline double load_f64(bits_t<K> x) {
  if constexpr (K == kF64)
    return f64_from_bits(x);
  else
    return f32_to_f64(load_f32<K>(x));
}

template <int K>
MB_HOST_DEVICE inline bits_t<K> store_f32(float v) {
  if constexpr (K == kBF16)
    return f32_to_bf16(v);
  else if constexpr (K == kF16)
    return f32_to_f16(v);
  else
    return f32_to_bits(v);
}

// F64 and F32 only: narrowing F64 to a 16-bit type would round twice, which
// the CPU path refuses (the caller must not ask).
template <int K>
MB_HOST_DEVICE inline bits_t<K> store_f64(double v) {
  if constexpr (K == kF64)
    return f64_to_bits(v);
  else if constexpr (K == kF32)
    return f32_to_bits(f64_to_f32(v));
  else
    return store_f32<K>(f64_to_f32(v));  // unreachable for valid jobs
}

// dst = cast<To>(op(src)) exactly as transform_elements(op, From, src, To, dst, 1)
// computes it on the CPU, with `offset` -1 (MinusOne), +1 (PlusOne) or 0 (None).
// Combinations the CPU refuses (F64 <-> 16-bit) must be rejected by the caller.
template <int From, int To>
MB_HOST_DEVICE inline bits_t<To> transform_element(bits_t<From> x, int offset) {
  constexpr bool wide = From == kF64 || To == kF64;
  if (offset == 0) {
    // convert_elements(): memmove, the two fast paths, then the generic loop.
    if constexpr (From == To) {
      return x;
    } else if constexpr (From == kBF16 && To == kF32) {
      return f32_to_bits(bf16_to_f32(x));
    } else if constexpr (From == kF32 && To == kBF16) {
      return f32_to_bf16(f32_from_bits(x));
    } else if constexpr (wide) {
      return store_f64<To>(load_f64<From>(x));
    } else {
      // load_f32 there is static_cast<float>(load_f64(...)): a NaN comes back quieted.
      return store_f32<To>(f32_from_bits(quiet_f32_bits(f32_to_bits(load_f32<From>(x)))));
    }
  }
  if constexpr (wide) {
    return store_f64<To>(add_f64(load_f64<From>(x), static_cast<double>(offset)));
  } else {
    return store_f32<To>(add_f32(load_f32<From>(x), static_cast<float>(offset)));
  }
}

}  // namespace conv
}  // namespace mb
