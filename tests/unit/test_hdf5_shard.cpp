#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <vector>

#include "core/hash.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"
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

// The data bytes are written by us (O_DIRECT in the page-aligned middles,
// the partial pages at the ends through the page cache, beside HDF5's
// metadata): sizes around the alignment threshold and the page size, rows
// that do not divide pages, blocks of varied height. Read back through HDF5,
// and the file checksum from the bytes as written must equal the one a
// verifier computes by reading everything.
TEST(Hdf5Shard, RawDirectWritesReadBackAndChecksumWithoutReadingData) {
  TempDir dir;
  const auto path = dir.path / "d.h5";
  struct Spec {
    std::string name;
    Shape shape;
  };
  // bf16 element counts: 3 KiB, 64 KiB - 2, 64 KiB + 6, ~2.3 MiB (odd rows), 5 MiB.
  const std::vector<Spec> specs = {{"a.norm", {1536}},
                                   {"b", {3, 10922}},
                                   {"c", {16387, 2}},
                                   {"d", {1187, 1021}},
                                   {"e", {2560, 1024}},
                                   {"f.norm", {7}}};
  std::vector<std::vector<uint16_t>> data;
  std::map<std::string, uint64_t> written;
  uint32_t seed = 12345;
  bool direct = false;
  std::vector<Hdf5DataRegion> recorded;
  {
    Hdf5ShardWriter w(path, ShardFileInfo{}, IoConfig{IoMode::Direct, 256 << 10});
    direct = w.direct();
    for (const auto& s : specs) {
      std::vector<uint16_t> v(rows_2d(s.shape) * cols_2d(s.shape));
      for (auto& x : v) x = static_cast<uint16_t>((seed = seed * 1664525u + 1013904223u) >> 16);
      w.begin_dataset({s.name, s.name, s.shape, s.shape, DType::BF16, {}});
      const uint64_t rows = rows_2d(s.shape), cols = cols_2d(s.shape);
      uint64_t r0 = 0, step = 1;
      while (r0 < rows) {
        const uint64_t n = std::min(step, rows - r0);
        w.write_rows(r0, n, v.data() + r0 * cols);
        r0 += n;
        step = step * 3 + 1;  // 1, 4, 13, 40, ...: block ends fall anywhere in a page
      }
      const uint64_t h = hash_bytes(v.data(), v.size() * 2);
      w.end_dataset(hash_hex(h));
      written[s.name] = h;
      data.push_back(std::move(v));
    }
    w.close();
    recorded = w.data_regions();
  }
  if (!direct) GTEST_LOG_(INFO) << "the test filesystem refused O_DIRECT: buffered path only";
  {
    Hdf5ShardReader r(path);
    for (size_t i = 0; i < specs.size(); ++i) {
      std::vector<uint16_t> back(data[i].size());
      const uint64_t cols = cols_2d(specs[i].shape);
      r.read(specs[i].name, 0, rows_2d(specs[i].shape), 0, cols, back.data(), cols * 2);
      EXPECT_EQ(back, data[i]) << specs[i].name;
    }
  }
  // Large datasets start on page boundaries.
  const auto regions = hdf5_data_regions(path);
  ASSERT_EQ(regions.size(), specs.size());
  for (const auto& r : regions)
    if (r.bytes >= kHdf5AlignThreshold) EXPECT_EQ(r.offset % 4096, 0u) << r.name;

  // The regions the writer recorded are the ones HDF5 reports for the
  // closed file, with the checksums it was given.
  // (HDF5 placed the small ones in the gaps: they come in another order.)
  std::vector<Hdf5DataRegion> by_offset = recorded;
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Hdf5DataRegion& a, const Hdf5DataRegion& b) { return a.offset < b.offset; });
  ASSERT_EQ(by_offset.size(), regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    EXPECT_EQ(by_offset[i].name, regions[i].name);
    EXPECT_EQ(by_offset[i].offset, regions[i].offset) << regions[i].name;
    EXPECT_EQ(by_offset[i].bytes, regions[i].bytes) << regions[i].name;
    EXPECT_EQ(by_offset[i].xxh3, regions[i].xxh3) << regions[i].name;
  }
  // The writer's checksum (from its recorded regions, in the order written)
  // is the one computed by finding the regions through HDF5, and the
  // verifier's, which reads every byte.
  const uint64_t as_written = hdf5_written_file_checksum(path, recorded).digest;
  EXPECT_EQ(hdf5_file_checksum(path, written).digest, as_written);
  std::vector<std::string> bad;
  EXPECT_EQ(file_checksum(path, kHdf5RegionChecksum, &bad), as_written);
  EXPECT_TRUE(bad.empty());

  // One flipped byte inside a dataset: the checksum changes and the verifier
  // names the dataset.
  const auto flip = [&](uint64_t at) {
    File f(path, File::Mode::ReadWrite);
    unsigned char c;
    f.pread_exact(&c, 1, at);
    c ^= 0x40;
    f.pwrite_exact(&c, 1, at);
  };
  const Hdf5DataRegion& d = regions[3];
  flip(d.offset + d.bytes / 2);
  EXPECT_NE(file_checksum(path, kHdf5RegionChecksum, &bad), as_written);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0], d.name);
  flip(d.offset + d.bytes / 2);
  EXPECT_EQ(file_checksum(path, kHdf5RegionChecksum), as_written);
  // One flipped byte between datasets (metadata or padding): changed too,
  // or the file no longer reads as HDF5 at all.
  size_t gap = 1;
  while (gap < regions.size() &&
         regions[gap].offset == regions[gap - 1].offset + regions[gap - 1].bytes)
    ++gap;
  ASSERT_LT(gap, regions.size());
  flip(regions[gap].offset - 1);
  bool changed = true;
  try {
    changed = file_checksum(path, kHdf5RegionChecksum) != as_written;
  } catch (const std::exception&) {
  }
  EXPECT_TRUE(changed);
}
