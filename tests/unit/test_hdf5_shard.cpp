#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "formats/hdf5/hdf5_shard.hpp"
#include "test_util.hpp"

using namespace mb;

TEST(Hdf5Shard, Bf16AndNdRowBlocksRoundTrip) {
  TempDir dir;
  const auto path = dir.path / "s.h5";
  ShardFileInfo info;
  info.tp_rank = 1;
  info.tp_size = 2;
  // [3, 2, 5] bf16: 6 rows of 5 columns in the 2-D view, written in blocks
  // that cross the first dimension's boundaries.
  std::vector<uint16_t> a(30);
  std::iota(a.begin(), a.end(), 0x3f00);
  std::vector<float> b = {1.5f, -2.0f, 3.25f};
  {
    Hdf5ShardWriter w(path, info);
    w.begin_dataset({"x.weight", "global.x.weight", {3, 2, 5}, {6, 2, 5}, DType::BF16, {}});
    w.write_rows(0, 1, a.data());
    w.write_rows(1, 4, a.data() + 5);
    w.write_rows(5, 1, a.data() + 25);
    w.end_dataset("00000000deadbeef");
    w.begin_dataset({"A_log", "g.A_log", {3}, {6}, DType::F32, {}});
    w.write_rows(0, 3, b.data());
    w.end_dataset("0000000000000001");
    w.close();
  }
  Hdf5ShardReader r(path);
  EXPECT_EQ(r.file_info().tp_rank, 1u);
  EXPECT_EQ(r.file_info().tp_size, 2u);
  ASSERT_EQ(r.datasets().size(), 2u);
  const ShardDatasetInfo* x = r.find("x.weight");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->global_name, "global.x.weight");
  EXPECT_EQ(x->shape, (Shape{3, 2, 5}));
  EXPECT_EQ(x->global_shape, (Shape{6, 2, 5}));
  EXPECT_EQ(x->dtype, DType::BF16);
  EXPECT_EQ(x->xxh3, "00000000deadbeef");
  std::vector<uint16_t> back(30, 0);
  r.read("x.weight", 0, 6, 0, 5, back.data(), 10);
  EXPECT_EQ(back, a);
  // A rectangle crossing dim-0 boundaries, into a wider strided buffer.
  std::vector<uint16_t> rect(3 * 4, 0);
  r.read("x.weight", 1, 3, 2, 2, rect.data(), 8);
  EXPECT_EQ(rect[0], a[1 * 5 + 2]);
  EXPECT_EQ(rect[1], a[1 * 5 + 3]);
  EXPECT_EQ(rect[4], a[2 * 5 + 2]);
  EXPECT_EQ(rect[9], a[3 * 5 + 3]);
  std::vector<float> fb(3);
  r.read("A_log", 0, 3, 0, 1, fb.data(), 4);
  EXPECT_EQ(fb, b);
}

TEST(Hdf5Shard, MissingFileIsAClearError) {
  try {
    Hdf5ShardReader r("/nonexistent/mp_rank_00_000_000.h5");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("mp_rank_00_000_000.h5"), std::string::npos);
  }
}
