#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "transforms/elementwise.hpp"

using namespace mb;

TEST(Elementwise, MinusOneInFp32HandChecked) {
  const float in[4] = {1.0f, 1.5f, 0.75f, 2.0f};
  float out[4];
  transform_elements(ElementOp::MinusOne, DType::F32, in, DType::F32, out, 4);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.5f);
  EXPECT_EQ(out[2], -0.25f);
  EXPECT_EQ(out[3], 1.0f);
}

TEST(Elementwise, MinusOneThenPlusOneIsIdentityNearOne) {
  // The GDN norm weights live around 1, where x - 1 is exact (Sterbenz).
  std::vector<float> x;
  for (float v = 0.5f; v < 2.0f; v = std::nextafter(v, 3.0f) + 1e-4f) x.push_back(v);
  std::vector<float> meg(x.size()), back(x.size());
  transform_elements(ElementOp::MinusOne, DType::F32, x.data(), DType::F32, meg.data(), x.size());
  transform_elements(ElementOp::PlusOne, DType::F32, meg.data(), DType::F32, back.data(), x.size());
  EXPECT_EQ(std::memcmp(x.data(), back.data(), x.size() * 4), 0);
  EXPECT_EQ(count_not_invertible(ElementOp::MinusOne, DType::F32, x.data(), x.size()), 0u);
}

TEST(Elementwise, DetectsValuesThatDoNotRoundTrip) {
  // 0.1f - 1 rounds to the coarser grid of 0.9, so +1 does not give 0.1f back.
  const float x[3] = {0.1f, 1.25f, 1e-9f};
  EXPECT_EQ(count_not_invertible(ElementOp::MinusOne, DType::F32, x, 3), 2u);
}

TEST(Elementwise, OffsetOnBf16RoundsOnceFromFp32) {
  // bf16 1.0078125 (0x3f81) - 1 = 0.0078125 = 2^-7 exactly.
  const uint16_t in[1] = {0x3f81};
  uint16_t out[1];
  transform_elements(ElementOp::MinusOne, DType::BF16, in, DType::BF16, out, 1);
  EXPECT_EQ(bf16_to_f32(out[0]), 0.0078125f);
  float wide[1];
  transform_elements(ElementOp::MinusOne, DType::BF16, in, DType::F32, wide, 1);
  EXPECT_EQ(wide[0], 0.0078125f);
}

TEST(Elementwise, NoneIsACopyOrCast) {
  const uint16_t in[2] = {0x3f80, 0x4000};
  uint16_t same[2];
  transform_elements(ElementOp::None, DType::BF16, in, DType::BF16, same, 2);
  EXPECT_EQ(std::memcmp(in, same, 4), 0);
  float wide[2];
  transform_elements(ElementOp::None, DType::BF16, in, DType::F32, wide, 2);
  EXPECT_EQ(wide[0], 1.0f);
  EXPECT_EQ(wide[1], 2.0f);
}

TEST(Elementwise, InverseAndNames) {
  EXPECT_EQ(inverse(ElementOp::MinusOne), ElementOp::PlusOne);
  EXPECT_EQ(inverse(ElementOp::PlusOne), ElementOp::MinusOne);
  EXPECT_EQ(inverse(ElementOp::None), ElementOp::None);
  for (auto op : {ElementOp::None, ElementOp::MinusOne, ElementOp::PlusOne})
    EXPECT_EQ(op_from_name(op_name(op)), op);
}
