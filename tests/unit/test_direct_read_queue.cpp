// DirectReadQueue: what it hands out equals the file's bytes (read here with a
// plain buffered pread, not through the queue), it reads from storage only the
// aligned cover of what was asked for (the process's /proc/self/io, which
// counts the helper thread's reads), and it never holds on to a request that
// its job no longer needs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "checkpoint/safetensors_source.hpp"
#include "core/direct_read_queue.hpp"
#include "core/proc_stats.hpp"
#include "engine/read_ahead.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;

namespace {
constexpr uint64_t kMiB = 1 << 20;

struct QueueFile {
  TempDir tmp;
  fs::path path;
  std::string bytes;
  explicit QueueFile(uint64_t size) : path(tmp.path / "f"), bytes(distinct_bytes(size, 3)) {
    write_bytes(path, bytes);
  }
};

uint64_t storage_reads() {
  return read_io_counters().read_bytes;
}

// Gives the helper up to two seconds to have read `bytes`, so that what a test
// takes next is served from the slots rather than dropped as not yet begun.
void wait_until_loaded(const DirectReadQueue& q, uint64_t bytes) {
  for (int i = 0; i < 2000 && q.bytes_loaded() < bytes; ++i) usleep(1000);
}
}  // namespace

TEST(DirectReadQueue, HandsOutTheFileBytesAndReadsOnlyTheAskedCover) {
  QueueFile f(20 * kMiB + 777);
  if (!direct_io_supported(f.tmp.path)) GTEST_SKIP() << f.tmp.path << " refuses O_DIRECT";
  InputFile in(f.path, IoMode::Direct);
  // Unaligned ranges: two that continue each other (merged into one request),
  // one elsewhere, one larger than a slot (split), one ending at the file's end.
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {{1000, 1000 + kMiB + 5},
                                                             {1000 + kMiB + 5, 1000 + 2 * kMiB},
                                                             {9 * kMiB + 3, 10 * kMiB - 9},
                                                             {11 * kMiB + 17, 16 * kMiB + 1},
                                                             {20 * kMiB, 20 * kMiB + 777}};
  uint64_t cover = 0;
  for (auto [b, e] : ranges) cover += (e + 4095) / 4096 * 4096 - b / 4096 * 4096;
  DirectReadQueue q(2 * kMiB, 3);
  const uint64_t r0 = storage_reads();
  q.set_job(1);
  for (auto [b, e] : ranges) EXPECT_EQ(q.want(in, b, e), e - b);
  for (auto [b, e] : ranges) {
    std::string got(e - b, '\0');
    // In pieces, as a copy engine's blocks read a tensor.
    for (uint64_t at = b; at < e; at += 300 * 1024) {
      const uint64_t n = std::min<uint64_t>(300 * 1024, e - at);
      const uint64_t k = q.take(in, got.data() + (at - b), n, at);
      // The helper may not have begun a request when it is needed (then the
      // caller reads it); what the queue hands out must be the file's bytes.
      if (k < n)
        File(f.path, File::Mode::Read).pread_exact(got.data() + (at - b) + k, n - k, at + k);
    }
    EXPECT_EQ(got, f.bytes.substr(b, e - b)) << "range [" << b << ", " << e << ")";
  }
  const uint64_t read = storage_reads() - r0;
  EXPECT_LE(q.bytes_loaded(), cover);
  if (read == 0) GTEST_SKIP() << "this kernel does not count the process's storage reads";
  EXPECT_LE(read, cover) << "the queue read more than the aligned cover of what was asked";
}

TEST(DirectReadQueue, ServesAJobsRangesInAnyOrderUntilTheJobIsDone) {
  QueueFile f(8 * kMiB);
  if (!direct_io_supported(f.tmp.path)) GTEST_SKIP() << f.tmp.path << " refuses O_DIRECT";
  InputFile in(f.path, IoMode::Direct);
  DirectReadQueue q(kMiB, 4);
  // Job 1: two ranges read block by block alternately (segments side by side).
  q.set_job(1);
  q.want(in, 0, kMiB);
  q.want(in, 4 * kMiB, 5 * kMiB);
  // Job 2: one range that job 1 never reads.
  q.set_job(2);
  q.want(in, 6 * kMiB, 7 * kMiB);
  // Wait until the helper has loaded everything (all three fit the slots).
  wait_until_loaded(q, 3 * kMiB);
  ASSERT_EQ(q.bytes_loaded(), 3 * kMiB);
  std::string got(kMiB / 2, '\0');
  for (uint64_t half : {uint64_t{0}, kMiB / 2})
    for (uint64_t base : {uint64_t{0}, 4 * kMiB}) {
      ASSERT_EQ(q.take(in, got.data(), got.size(), base + half), got.size())
          << "a loaded range was let go before its job read all of it";
      EXPECT_EQ(got, f.bytes.substr(base + half, got.size()));
    }
  // Fully read: let go, so a second read of it is the caller's.
  EXPECT_EQ(q.take(in, got.data(), got.size(), 0), 0u);
  // Job 2 starts: nothing of job 1 is held; job 2's range is.
  q.release_before(2);
  EXPECT_EQ(q.take(in, got.data(), got.size(), 6 * kMiB), got.size());
  EXPECT_EQ(got, f.bytes.substr(6 * kMiB, got.size()));
  q.release_before(3);
  EXPECT_EQ(q.take(in, got.data(), got.size(), 6 * kMiB + kMiB / 2), 0u)
      << "job 2 is done: its range must be gone";
}

TEST(DirectReadQueue, HoldsNothingItWasNotAskedForOrCannotReadDirectly) {
  QueueFile f(4 * kMiB);
  if (!direct_io_supported(f.tmp.path)) GTEST_SKIP() << f.tmp.path << " refuses O_DIRECT";
  InputFile direct(f.path, IoMode::Direct), buffered(f.path, IoMode::Buffered);
  DirectReadQueue q(kMiB, 2);
  std::string got(4096, '\0');
  EXPECT_EQ(q.take(direct, got.data(), got.size(), 0), 0u);  // nothing asked
  EXPECT_EQ(q.want(buffered, 0, kMiB), 0u);                  // not a direct file
  EXPECT_EQ(q.take(buffered, got.data(), got.size(), 0), 0u);
  DirectReadQueue none(kMiB, 1);  // fewer than two slots: never queues
  EXPECT_EQ(none.want(direct, 0, kMiB), 0u);
  // A range past the end of the file: only the bytes that exist are handed out.
  q.set_job(1);
  q.want(direct, 4 * kMiB - 100, 4 * kMiB + 4096);
  wait_until_loaded(q, 100);
  std::string tail(100 + 4096, '\0');
  EXPECT_EQ(q.take(direct, tail.data(), tail.size(), 4 * kMiB - 100), 100u);
  EXPECT_EQ(tail.substr(0, 100), f.bytes.substr(4 * kMiB - 100));
}

TEST(DirectReadQueue, MoreAskedThanSlotsStillHandsOutTheFileBytes) {
  // Twelve slot-sized ranges through two slots, taken in order: the helper
  // waits for slots as they are freed; a request it has not begun when it is
  // needed is read by the caller. Every byte handed out is the file's.
  QueueFile f(12 * kMiB);
  if (!direct_io_supported(f.tmp.path)) GTEST_SKIP() << f.tmp.path << " refuses O_DIRECT";
  InputFile in(f.path, IoMode::Direct);
  DirectReadQueue q(kMiB, 2);
  q.set_job(1);
  for (uint64_t i = 0; i < 12; ++i) q.want(in, i * kMiB, (i + 1) * kMiB);
  wait_until_loaded(q, 2 * kMiB);  // both slots full: the first two are served from them
  std::string got(kMiB, '\0');
  uint64_t from_queue = 0;
  for (uint64_t i = 0; i < 12; ++i) {
    const uint64_t k = q.take(in, got.data(), kMiB, i * kMiB);
    from_queue += k;
    EXPECT_EQ(got.substr(0, k), f.bytes.substr(i * kMiB, k)) << "range " << i;
  }
  EXPECT_GE(from_queue, 2 * kMiB) << "nothing came from the slots: only the fallback was tested";
  EXPECT_LE(q.bytes_loaded(), 12 * kMiB);
  EXPECT_GE(q.bytes_loaded(), from_queue);
}

TEST(DirectReadQueue, SafetensorsSourceUnderReadAheadGivesTheFileBytes) {
  // The import's pattern: jobs of whole tensors and of column-concatenated
  // pairs (two sources side by side, read block by block), asked ahead by
  // ReadAhead and read by a copy engine in blocks. Every job's bytes must
  // equal the tensor bytes read with a plain pread, and the queue must have
  // served them (else this tests only the fallback).
  TempDir tmp;
  if (!direct_io_supported(tmp.path)) GTEST_SKIP() << tmp.path << " refuses O_DIRECT";
  const fs::path file = tmp.path / "model.safetensors";
  std::vector<TinyTensor> ts;
  for (int i = 0; i < 12; ++i)
    ts.push_back(
        {fmt::format("t{:02}", i), DType::BF16, {static_cast<uint64_t>(300 + 97 * i), 1024}});
  write_tiny_safetensors(file, ts);
  const HfCatalog c = read_hf_catalog(tmp.path);
  File plain(file, File::Mode::Read);
  auto tensor_bytes = [&](uint32_t id) {
    const HfTensor& t = c.tensors.at(id);
    std::string s(t.nbytes, '\0');
    plain.pread_exact(s.data(), s.size(), t.offset);
    return s;
  };
  // Jobs: each tensor alone, then pairs (a, b) side by side in columns.
  std::vector<std::vector<Segment>> jobs;
  std::vector<std::pair<uint64_t, uint64_t>> shapes;  // dst rows, cols
  for (uint32_t id = 0; id < 6; ++id) {
    const HfTensor& t = c.tensors.at(id);
    jobs.push_back({Segment{id, 0, 0, 0, 0, t.rows(), t.cols()}});
    shapes.push_back({t.rows(), t.cols()});
  }
  for (uint32_t id = 6; id + 1 < 12; id += 2) {
    const uint64_t rows = std::min(c.tensors.at(id).rows(), c.tensors.at(id + 1).rows());
    jobs.push_back(
        {Segment{id, 0, 0, 0, 0, rows, 1024}, Segment{id + 1, 0, 0, 0, 1024, rows, 1024}});
    shapes.push_back({rows, 2048});
  }
  SafetensorsSource src(c, io_config(IoMode::Direct, 64ull << 20));
  std::vector<const std::vector<Segment>*> job_ptrs;
  for (const auto& j : jobs) job_ptrs.push_back(&j);
  ReadAhead ahead(src, job_ptrs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ahead.before(i);
    const auto [rows, cols] = shapes[i];
    std::string got(rows * cols * 2, '\0'), want(got.size(), '\0');
    for (uint64_t r0 = 0; r0 < rows; r0 += 128)  // the engine's blocks
      for (const Segment& s : jobs[i]) {
        const uint64_t n = std::min<uint64_t>(128, rows - r0);
        src.read(s.src, r0, n, 0, s.cols, got.data() + (r0 * cols + s.dst_col) * 2, cols * 2);
        const std::string t = tensor_bytes(s.src);
        for (uint64_t r = r0; r < r0 + n; ++r)
          want.replace((r * cols + s.dst_col) * 2, s.cols * 2,
                       t.substr(r * s.cols * 2, s.cols * 2));
      }
    ASSERT_EQ(got, want) << "job " << i;
  }
  EXPECT_GT(src.bytes_loaded_ahead(), 0u) << "nothing was read ahead: the queue was not exercised";
}
