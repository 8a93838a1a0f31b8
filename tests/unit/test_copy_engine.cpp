#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "core/hash.hpp"
#include "engine/copy_engine.hpp"

using namespace mb;

namespace {
// Sources in memory, 2-D, uint16 elements.
class MemSource : public RowSource {
 public:
  std::vector<std::vector<uint16_t>> data;
  std::vector<uint64_t> cols;
  uint64_t read_bytes = 0, calls = 0;
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t n, void* dst,
            uint64_t stride) override {
    for (uint64_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * stride, &data[id][(row0 + r) * cols[id] + col0], n * 2);
    read_bytes += rows * n * 2;
    ++calls;
  }
  uint64_t bytes_read() const override { return read_bytes; }
};

class MemSink : public RowSink {
 public:
  std::vector<unsigned char> out;
  uint64_t row_bytes = 0, next_row = 0, blocks = 0, other_thread_writes = 0;
  std::thread::id caller = std::this_thread::get_id();
  void write(uint64_t row0, uint64_t rows, const void* d) override {
    EXPECT_EQ(row0, next_row);  // blocks arrive in order
    if (std::this_thread::get_id() != caller) ++other_thread_writes;
    out.insert(out.end(), static_cast<const unsigned char*>(d),
               static_cast<const unsigned char*>(d) + rows * row_bytes);
    next_row += rows;
    ++blocks;
  }
};
}  // namespace

TEST(CopyEngine, StreamsInBlocksWithinTheBuffer) {
  // Destination 1000 x 8 (bf16) gathered from the column halves of two sources.
  MemSource src;
  src.data = {std::vector<uint16_t>(1000 * 4), std::vector<uint16_t>(1000 * 4)};
  std::iota(src.data[0].begin(), src.data[0].end(), 0);
  std::iota(src.data[1].begin(), src.data[1].end(), 20000);
  src.cols = {4, 4};
  std::vector<Segment> segs{{0, 0, 0, 0, 0, 1000, 4}, {1, 0, 0, 0, 4, 1000, 4}};
  MemSink sink;
  sink.row_bytes = 16;
  CopyEngine engine(4096);  // two slots of 2048 bytes: 128 rows per block
  CopyJob job{"t", &segs, 1000, 8, DType::BF16, DType::BF16, ElementOp::None};
  const CopyResult r = engine.run(job, src, sink);
  EXPECT_EQ(sink.blocks, 8u);
  EXPECT_LE(engine.peak_staging_bytes(), 4096u);
  ASSERT_EQ(sink.out.size(), 16000u);
  const auto* o = reinterpret_cast<const uint16_t*>(sink.out.data());
  EXPECT_EQ(o[0], 0);
  EXPECT_EQ(o[4], 20000);
  EXPECT_EQ(o[999 * 8 + 3], 999 * 4 + 3);
  EXPECT_EQ(o[999 * 8 + 7], 20000 + 999 * 4 + 3);
  EXPECT_EQ(r.xxh3, hash_bytes(sink.out.data(), sink.out.size()));
  EXPECT_EQ(src.read_bytes, 16000u);  // nothing read twice
}

TEST(CopyEngine, WritesLargeBlocksOnAHelperThreadInOrder) {
  // 6 MiB of bf16 rows through a 4 MiB buffer: two slots of 2 MiB, so three
  // blocks, each (>= 1 MiB) handed to a helper thread while the next is read;
  // the sink sees them in order and the thread id differs from ours.
  const uint64_t rows = 3072, cols = 1024;
  MemSource src;
  src.data = {std::vector<uint16_t>(rows * cols)};
  std::iota(src.data[0].begin(), src.data[0].end(), 0);
  src.cols = {cols};
  std::vector<Segment> segs{{0, 0, 0, 0, 0, rows, cols}};
  MemSink sink;
  sink.row_bytes = cols * 2;
  CopyEngine engine(4u << 20);
  const CopyResult r = engine.run({"big", &segs, rows, cols, DType::BF16, DType::BF16, ElementOp::None}, src, sink);
  EXPECT_EQ(sink.blocks, 3u);
  EXPECT_EQ(sink.out.size(), rows * cols * 2);
  EXPECT_EQ(sink.other_thread_writes, 2u);  // all but the last, written inline
  EXPECT_EQ(std::memcmp(sink.out.data(), src.data[0].data(), sink.out.size()), 0);
  EXPECT_EQ(r.xxh3, hash_bytes(sink.out.data(), sink.out.size()));
  EXPECT_LE(engine.peak_staging_bytes(), 4u << 20);
}

TEST(CopyEngine, SplitsATensorThatFitsOneSlotSoWritesOverlapReads) {
  // 4 MiB (one torch_dist expert item) through a 256 MiB buffer: 4 blocks of
  // 1 MiB, all but the last written by the helper thread.
  const uint64_t rows = 1024, cols = 2048;
  MemSource src;
  src.data = {std::vector<uint16_t>(rows * cols)};
  std::iota(src.data[0].begin(), src.data[0].end(), 7);
  src.cols = {cols};
  std::vector<Segment> segs{{0, 0, 0, 0, 0, rows, cols}};
  MemSink sink;
  sink.row_bytes = cols * 2;
  CopyEngine engine(256u << 20);
  const CopyResult r = engine.run({"expert", &segs, rows, cols, DType::BF16, DType::BF16, ElementOp::None}, src, sink);
  EXPECT_EQ(sink.blocks, 4u);
  EXPECT_EQ(sink.other_thread_writes, 3u);
  ASSERT_EQ(sink.out.size(), rows * cols * 2);
  EXPECT_EQ(std::memcmp(sink.out.data(), src.data[0].data(), sink.out.size()), 0);
  EXPECT_EQ(r.xxh3, hash_bytes(sink.out.data(), sink.out.size()));
  EXPECT_LE(engine.peak_staging_bytes(), 2u * (1u << 20));

  // Under 2 MiB stays one block, written inline.
  MemSink small;
  small.row_bytes = cols * 2;
  std::vector<Segment> half{{0, 0, 0, 0, 0, 256, cols}};
  engine.run({"small", &half, 256, cols, DType::BF16, DType::BF16, ElementOp::None}, src, small);
  EXPECT_EQ(small.blocks, 1u);
  EXPECT_EQ(small.other_thread_writes, 0u);
}

TEST(CopyEngine, SinkErrorsReachTheCaller) {
  struct FailingSink : RowSink {
    void write(uint64_t row0, uint64_t, const void*) override {
      if (row0 > 0) throw std::runtime_error("disk full");
    }
  } sink;
  MemSource src;
  src.data = {std::vector<uint16_t>(4096 * 1024)};
  src.cols = {1024};
  std::vector<Segment> segs{{0, 0, 0, 0, 0, 4096, 1024}};
  CopyEngine engine(4u << 20);
  EXPECT_THROW(engine.run({"t", &segs, 4096, 1024, DType::BF16, DType::BF16, ElementOp::None}, src, sink),
               std::runtime_error);
}

TEST(CopyEngine, AppliesTheOffsetAndCast) {
  MemSource src;
  src.data = {{0x3f80, 0x4000, 0x3fc0}};  // bf16 1, 2, 1.5
  src.cols = {1};
  std::vector<Segment> segs{{0, 0, 0, 0, 0, 3, 1}};
  MemSink sink;
  sink.row_bytes = 4;
  CopyEngine engine(1 << 16);
  engine.run({"norm", &segs, 3, 1, DType::BF16, DType::F32, ElementOp::MinusOne}, src, sink);
  float f[3];
  std::memcpy(f, sink.out.data(), 12);
  EXPECT_EQ(f[0], 0.0f);
  EXPECT_EQ(f[1], 1.0f);
  EXPECT_EQ(f[2], 0.5f);
}

TEST(CopyEngine, RefusesSegmentsThatDoNotCoverTheTensor) {
  MemSource src;
  src.data = {std::vector<uint16_t>(8)};
  src.cols = {2};
  std::vector<Segment> gap{{0, 0, 0, 0, 0, 3, 2}};  // 4 rows wanted
  MemSink sink;
  sink.row_bytes = 4;
  CopyEngine engine(1 << 16);
  EXPECT_THROW(engine.run({"t", &gap, 4, 2, DType::BF16, DType::BF16, ElementOp::None}, src, sink),
               std::exception);
}
