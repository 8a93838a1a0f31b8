#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.hpp"

using namespace mb;

TEST(DType, NamesRoundTrip) {
  for (const char* n : {"BF16", "F16", "F32", "F64", "I64", "U8", "BOOL", "F8_E4M3"}) {
    auto t = dtype_from_name(n);
    ASSERT_TRUE(t.has_value()) << n;
    EXPECT_EQ(dtype_name(*t), n);
  }
  EXPECT_FALSE(dtype_from_name("BF17").has_value());
  EXPECT_EQ(*dtype_from_user("bfloat16"), DType::BF16);
  EXPECT_EQ(*dtype_from_user("fp32"), DType::F32);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_torch_name(DType::BF16), "bfloat16");
}

TEST(DType, Bf16HandChecked) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
  // 1 + 2^-8 is exactly halfway between 1 and the next bf16 (1 + 2^-7): ties to even -> 1.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd mantissa) and 1+2^-6: rounds up to even.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above the halfway point rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  const uint16_t nan = f32_to_bf16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(bf16_to_f32(nan)));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
}

TEST(DType, F16HandChecked) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);       // largest finite
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);       // rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half of it: ties to even -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

#if defined(__FLT16_MAX__)
// An independent reference: the compiler's own _Float16 (GCC >= 12 on x86-64,
// converted by libgcc's soft-float or F16C, round-to-nearest-even).
TEST(DType, F16MatchesTheCompilersFloat16) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    _Float16 x;
    std::memcpy(&x, &bits, 2);
    const float ours = f16_to_f32(bits), ref = static_cast<float>(x);
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(ours)) << std::hex << h;
    } else {
      EXPECT_EQ(ours, ref) << std::hex << h;
      EXPECT_EQ(std::signbit(ours), std::signbit(ref)) << std::hex << h;
    }
  }
  // Narrowing: 2^32 / 65521 (prime) bit patterns spread over every exponent,
  // plus the neighbours of every half-way point near the subnormal range.
  uint64_t checked = 0;
  auto check = [&](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) return;
    const _Float16 r = static_cast<_Float16>(f);
    uint16_t ref;
    std::memcpy(&ref, &r, 2);
    ASSERT_EQ(f32_to_f16(f), ref) << std::hex << "f32 bits " << u;
    ++checked;
  };
  for (uint64_t u = 0; u <= 0xffffffffull; u += 65521) check(static_cast<uint32_t>(u));
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    // Half-way between half h and h+1, and one ulp (of float) either side.
    const float lo = f16_to_f32(static_cast<uint16_t>(h)), hi = f16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = lo + (hi - lo) / 2;
    uint32_t m;
    std::memcpy(&m, &mid, 4);
    for (uint32_t v : {m - 1, m, m + 1}) {
      check(v);
      check(v | 0x80000000u);
    }
  }
  EXPECT_GT(checked, 250000u);
}
#else
TEST(DType, F16MatchesTheCompilersFloat16) { GTEST_SKIP() << "this compiler has no _Float16"; }
#endif

TEST(DType, ConvertWidensExactly) {
  const uint16_t bf[3] = {0x3f80, 0xc049, 0x0001};
  float out[3];
  convert_elements(DType::BF16, bf, DType::F32, out, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], bf16_to_f32(bf[i]));
  uint16_t back[3];
  convert_elements(DType::F32, out, DType::BF16, back, 3);
  EXPECT_EQ(std::memcmp(bf, back, sizeof bf), 0);
}

TEST(DType, ConvertRejectsIntegers) {
  int32_t x = 1;
  float y;
  EXPECT_THROW(convert_elements(DType::I32, &x, DType::F32, &y, 1), std::exception);
}
