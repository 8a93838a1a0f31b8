#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "engine/copy_engine.hpp"
#include "engine/read_ahead.hpp"

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
  job.hash = true;
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
  CopyJob job{"big", &segs, rows, cols, DType::BF16, DType::BF16, ElementOp::None};
  job.hash = true;
  const CopyResult r = engine.run(job, src, sink);
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
  CopyJob job{"expert", &segs, rows, cols, DType::BF16, DType::BF16, ElementOp::None};
  job.hash = true;
  const CopyResult r = engine.run(job, src, sink);
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
  const CopyResult unhashed = engine.run(
      {"small", &half, 256, cols, DType::BF16, DType::BF16, ElementOp::None}, src, small);
  EXPECT_EQ(small.blocks, 1u);
  EXPECT_EQ(small.other_thread_writes, 0u);
  // Not asked for (CopyJob::hash defaults to off): no digest.
  EXPECT_EQ(unhashed.xxh3, 0u);
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

namespace {
// Records what a conversion would ask ahead for: every prefetch, in order.
// Sources 0 and 1 are "narrow" (each asked-for rectangle counts rows * cols
// bytes, at most max_bytes); source 2 is read directly (nothing to ask for).
class AskingSource : public RowSource {
 public:
  struct Ask {
    uint32_t id;
    uint64_t row0, rows;
  };
  std::vector<Ask> asks;
  void read(uint32_t, uint64_t, uint64_t, uint64_t, uint64_t, void*, uint64_t) override {}
  uint64_t bytes_read() const override { return 0; }
  uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t, uint64_t cols,
                    uint64_t max_bytes) override {
    if (id == 2) return 0;
    asks.push_back({id, row0, rows});
    return std::min(rows * cols, max_bytes);
  }
};
Segment seg(uint32_t src, uint64_t row0, uint64_t rows, uint64_t cols) {
  return Segment{src, row0, 0, 0, 0, rows, cols};
}
}  // namespace

// ReadAhead asks for each job once, the current one first, then the next
// ones until what is asked beyond the current job reaches the limit; of a job
// larger than the limit it asks for the limit's worth only.
TEST(ReadAhead, AsksEachJobOnceAndStaysWithinTheLimit) {
  // Jobs of 4, 4, 0 (read directly), 4, 40 and 4 bytes; a limit of 8.
  const std::vector<std::vector<Segment>> jobs = {{seg(0, 0, 2, 2)},  {seg(1, 0, 4, 1)},
                                                  {seg(2, 0, 9, 9)},  {seg(0, 2, 2, 2)},
                                                  {seg(1, 4, 40, 1)}, {seg(0, 4, 4, 1)}};
  std::vector<const std::vector<Segment>*> ptrs;
  for (const auto& j : jobs) ptrs.push_back(&j);
  AskingSource src;
  ReadAhead ahead(src, ptrs, 8);
  auto asked_rows0 = [&] {
    std::vector<std::pair<uint32_t, uint64_t>> v;
    for (const auto& a : src.asks) v.push_back({a.id, a.row0});
    return v;
  };
  ahead.before(0);  // job 0, then 1 (4 ahead), 2 (nothing), 3 (8 ahead: the limit)
  EXPECT_EQ(asked_rows0(), (std::vector<std::pair<uint32_t, uint64_t>>{{0, 0}, {1, 0}, {0, 2}}));
  ahead.before(1);  // 4 ahead (job 3): job 4 is asked, its first 8 bytes' worth only
  ASSERT_EQ(src.asks.size(), 4u);
  EXPECT_EQ(src.asks[3].id, 1u);
  EXPECT_EQ(src.asks[3].row0, 4u);
  ahead.before(2);
  ahead.before(3);
  EXPECT_EQ(src.asks.size(), 4u);  // job 4's 8 bytes still ahead: nothing new
  ahead.before(4);                 // nothing ahead once job 4 starts: job 5 is asked
  ASSERT_EQ(src.asks.size(), 5u);
  EXPECT_EQ(src.asks[4].row0, 4u);
  EXPECT_EQ(src.asks[4].id, 0u);
  ahead.before(5);
  EXPECT_EQ(src.asks.size(), 5u);  // every job asked once
  EXPECT_THROW(ahead.before(6), Error);
}

// A job reached without having been asked for (jobs skipped, as a resumed
// run does) is asked for when it starts, and the read-ahead goes on from it.
TEST(ReadAhead, AJobNotAskedForIsAskedWhenItStarts) {
  const std::vector<std::vector<Segment>> jobs = {{seg(0, 0, 1, 4)},
                                                  {seg(0, 1, 1, 4)},
                                                  {seg(0, 2, 1, 4)},
                                                  {seg(0, 3, 1, 4)},
                                                  {seg(0, 4, 1, 4)}};
  std::vector<const std::vector<Segment>*> ptrs;
  for (const auto& j : jobs) ptrs.push_back(&j);
  AskingSource src;
  ReadAhead ahead(src, ptrs, 4);
  ahead.before(3);
  ASSERT_EQ(src.asks.size(), 2u);  // job 3, then job 4
  EXPECT_EQ(src.asks[0].row0, 3u);
  EXPECT_EQ(src.asks[1].row0, 4u);
  ahead.before(4);
  EXPECT_EQ(src.asks.size(), 2u);
}

// With follows_reads, the conversion reads through the ReadAhead: a job
// larger than the limit is asked for as it is read, the limit's worth ahead
// of the reads, and all of it before anything of the next job (a source that
// loads in the order asked, DirectReadQueue, then loads in the order read).
TEST(ReadAhead, FollowingReadsAsksALargeJobAsItIsReadAndInOrder) {
  struct ReadingSource : AskingSource {
    uint64_t read_bytes = 0;
    std::vector<uint64_t> jobs;  // prefetch_job before each ask
    void read(uint32_t, uint64_t, uint64_t rows, uint64_t, uint64_t cols, void*,
              uint64_t) override {
      read_bytes += rows * cols;
    }
    uint64_t bytes_read() const override { return read_bytes; }
    void prefetch_job(uint64_t job) override { jobs.push_back(job); }
  };
  // Job 0: ten segments of 4 bytes; job 1: one of 4; a limit of 8.
  std::vector<std::vector<Segment>> jobs(2);
  for (uint64_t r = 0; r < 10; ++r) jobs[0].push_back(seg(0, r, 1, 4));
  jobs[1].push_back(seg(1, 0, 1, 4));
  std::vector<const std::vector<Segment>*> ptrs;
  for (const auto& j : jobs) ptrs.push_back(&j);
  ReadingSource src;
  ReadAhead ahead(src, ptrs, 8, /*follows_reads=*/true);
  ahead.before(0);
  EXPECT_EQ(src.asks.size(), 2u);  // rows 0 and 1: the limit's worth
  const size_t want[10] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 11};
  for (uint64_t r = 0; r < 10; ++r) {
    ahead.read(0, r, 1, 0, 4, nullptr, 4);
    EXPECT_EQ(src.asks.size(), want[r]) << "after reading row " << r;
  }
  EXPECT_EQ(src.read_bytes, 40u);  // the reads went to the source
  EXPECT_EQ(ahead.bytes_read(), 40u);
  // Every row of job 0, in order, then job 1; each ask tagged with its job.
  ASSERT_EQ(src.asks.size(), 11u);
  for (uint64_t r = 0; r < 10; ++r) {
    EXPECT_EQ(src.asks[r].id, 0u);
    EXPECT_EQ(src.asks[r].row0, r);
  }
  EXPECT_EQ(src.asks[10].id, 1u);
  ASSERT_EQ(src.jobs.size(), 11u);
  EXPECT_EQ(src.jobs[9], src.jobs[0]);
  EXPECT_EQ(src.jobs[10], src.jobs[0] + 1);
  ahead.before(1);
  EXPECT_EQ(src.asks.size(), 11u);  // asked once
}

// Without follows_reads the reads still go through, but count for nothing:
// of a job larger than the limit only the limit's worth is asked for.
TEST(ReadAhead, NotFollowingReadsAsksTheLimitOfALargeJob) {
  struct ReadingSource : AskingSource {
    uint64_t read_bytes = 0;
    void read(uint32_t, uint64_t, uint64_t rows, uint64_t, uint64_t cols, void*,
              uint64_t) override {
      read_bytes += rows * cols;
    }
    uint64_t bytes_read() const override { return read_bytes; }
  };
  std::vector<std::vector<Segment>> jobs(1);
  for (uint64_t r = 0; r < 10; ++r) jobs[0].push_back(seg(0, r, 1, 4));
  std::vector<const std::vector<Segment>*> ptrs{&jobs[0]};
  ReadingSource src;
  ReadAhead ahead(src, ptrs, 8);
  ahead.before(0);
  for (uint64_t r = 0; r < 10; ++r) ahead.read(0, r, 1, 0, 4, nullptr, 4);
  EXPECT_EQ(src.asks.size(), 2u);
  EXPECT_EQ(src.read_bytes, 40u);
}
