#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/safetensors_source.hpp"
#include "core/direct_io.hpp"
#include "core/error.hpp"
#include "core/proc_stats.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;

namespace {
std::string read_all(const fs::path& p) {
  return read_text_file(p);
}
}  // namespace

TEST(DirectIo, ModeNames) {
  EXPECT_EQ(parse_io_mode("auto"), IoMode::Auto);
  EXPECT_EQ(parse_io_mode("direct"), IoMode::Direct);
  EXPECT_EQ(parse_io_mode("buffered"), IoMode::Buffered);
  for (IoMode m : {IoMode::Auto, IoMode::Direct, IoMode::Buffered})
    EXPECT_EQ(parse_io_mode(io_mode_name(m)), m);
  try {
    parse_io_mode("odirect");
    FAIL() << "accepted an unknown mode";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'odirect'"), std::string::npos) << e.what();
  }
}

TEST(DirectIo, BuffersComeOutOfTheConfiguredBuffer) {
  EXPECT_EQ(direct_io_chunk_bytes(256ull << 20), 8ull << 20);
  EXPECT_EQ(direct_io_chunk_bytes(16ull << 20), 512ull << 10);
  EXPECT_EQ(direct_io_chunk_bytes(1ull << 20), 256ull << 10);  // the floor
  EXPECT_EQ(direct_io_chunk_bytes(64ull << 30), 8ull << 20);   // the ceiling
  EXPECT_EQ(engine_buffer_bytes(256ull << 20, 2), (256ull - 16) << 20);
  EXPECT_EQ(engine_buffer_bytes(256ull << 20, 1), (256ull - 8) << 20);
  EXPECT_EQ(engine_buffer_bytes(256ull << 20, 0), 256ull << 20);
  EXPECT_EQ(engine_buffer_bytes(1ull << 20, 2), 1ull << 20);  // too small to share
}

TEST(DirectIo, ReadsMatchTheFileAtAnyOffsetAndLength) {
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  const uint64_t size = (3ull << 20) + 777;  // ends off any alignment
  const std::string bytes = distinct_bytes(size);
  write_bytes(tmp.path / "f", bytes);
  const std::string other_bytes = distinct_bytes(size, 2);
  write_bytes(tmp.path / "g", other_bytes);
  const uint64_t win = 256 << 10;  // smaller than some reads: those take several loads
  struct Range {
    uint64_t off, n;
  };
  std::vector<Range> ranges = {
      {0, win},                   // aligned start, aligned length
      {1, win},                   // unaligned both ends
      {4095, win + 2},            // one byte before and after page boundaries
      {513, 3 * win + 511},       // spans several loads
      {size - win, win},          // ends exactly at the unaligned end of file
      {size - win - 3, win + 3},  // the same, unaligned start
      {0, size},                  // the whole file
      {12345, 100},               // small and random
      {12345 + 50, 10},           // inside what the last load holds
      {100, 1},                   // backwards
  };
  // Rows of a column window: small reads going forward with gaps, which load ahead.
  for (uint64_t r = 0; r < 300; ++r) ranges.push_back({(1 << 20) + r * 6000 + 17, 1500});
  for (IoMode mode : {IoMode::Buffered, IoMode::Auto, IoMode::Direct}) {
    InputFile in(tmp.path / "f", mode), other(tmp.path / "g", mode);
    EXPECT_EQ(in.direct(), mode != IoMode::Buffered && direct) << io_mode_name(mode);
    ReadWindow window(win);
    for (const Range& r : ranges) {
      std::string got(r.n, '\0');
      in.pread_exact(got.data(), r.n, r.off, window, "t");
      ASSERT_EQ(got, bytes.substr(r.off, r.n))
          << io_mode_name(mode) << " [" << r.off << ", +" << r.n << ")";
      // Another file through the same window in between: never served the first file's bytes.
      std::string g(64, '\0');
      other.pread_exact(g.data(), g.size(), r.off % (size - 64), window, "g");
      ASSERT_EQ(g, other_bytes.substr(r.off % (size - 64), 64));
    }
    // No window: the page cache path, same bytes.
    ReadWindow none;
    std::string got(2 * win, '\0');
    in.pread_exact(got.data(), got.size(), 7, none, "t");
    EXPECT_EQ(got, bytes.substr(7, got.size()));
  }
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";
}

TEST(DirectIo, ReadPastTheEndIsAnErrorNamingFileAndTensor) {
  TempDir tmp;
  const uint64_t size = (1ull << 20) + 100;
  write_bytes(tmp.path / "f", distinct_bytes(size));
  for (IoMode mode : {IoMode::Buffered, IoMode::Auto}) {
    for (uint64_t n : {uint64_t{300} << 10, uint64_t{200}}) {
      InputFile in(tmp.path / "f", mode);
      ReadWindow window(1 << 20);
      std::string got(n, '\0');
      try {
        in.pread_exact(got.data(), n, size - n + 1, window, "model.embed");
        FAIL() << "read past the end succeeded (" << io_mode_name(mode) << ")";
      } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("truncated"), std::string::npos) << m;
        EXPECT_NE(m.find("model.embed"), std::string::npos) << m;
        EXPECT_NE(m.find((tmp.path / "f").string()), std::string::npos) << m;
      }
    }
  }
}

TEST(DirectIo, AppendWritesExactlyTheBytesGiven) {
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  // Pieces around the alignment and the chunk size, and an empty one.
  const std::vector<uint64_t> pieces = {1, 4095, 4097, 0, 70000, 300000, 8192, 3, 1 << 20, 511};
  for (IoMode mode : {IoMode::Buffered, IoMode::Auto}) {
    for (uint64_t chunk : {uint64_t{4096}, uint64_t{64} << 10}) {
      const fs::path p = tmp.path / fmt::format("a-{}-{}", io_mode_name(mode), chunk);
      std::string expect;
      {
        AppendFile f(p, mode, chunk);
        EXPECT_EQ(f.direct(), mode != IoMode::Buffered && direct);
        uint64_t seed = 1;
        for (uint64_t n : pieces) {
          const std::string s = distinct_bytes(n, seed++);
          f.write_at(s.data(), s.size(), expect.size());
          expect += s;
          EXPECT_EQ(f.size(), expect.size());
        }
        // Out of order is refused, naming the file.
        EXPECT_THROW(f.write_at("x", 1, 0), Error);
        f.finish();
        EXPECT_THROW(f.append("x", 1), Error);
      }
      EXPECT_EQ(fs::file_size(p), expect.size()) << p;
      EXPECT_EQ(read_all(p), expect) << p;
    }
  }
  // Nothing appended: an empty file, not a padded block.
  {
    AppendFile f(tmp.path / "empty", IoMode::Auto, 4096);
    f.finish();
  }
  EXPECT_EQ(fs::file_size(tmp.path / "empty"), 0u);
  // A length that is a whole number of chunks: no tail to pad.
  {
    const std::string s = distinct_bytes(3 * 4096, 9);
    AppendFile f(tmp.path / "whole", IoMode::Auto, 4096);
    f.append(s.data(), s.size());
    f.finish();
    EXPECT_EQ(read_all(tmp.path / "whole"), s);
  }
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";
}

TEST(DirectIo, SafetensorsSourceReadsTheSameRowsEitherWay) {
  // A tensor large enough for direct reads, read in uneven row blocks and
  // column windows through a direct and a buffered source; both must give the
  // tensor's bytes as they stand in the file (read here with a plain pread).
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  const fs::path file = tmp.path / "model.safetensors";
  write_tiny_safetensors(file, {{"a.norm", DType::BF16, {7}}, {"b.big", DType::BF16, {1000, 333}}});
  const HfCatalog c = read_hf_catalog(tmp.path);
  uint32_t id = 0;
  while (c.tensors.at(id).name != "b.big") ++id;
  const uint64_t cols = 333, rb = cols * 2;
  std::string whole(1000 * rb, '\0');
  File(file, File::Mode::Read).pread_exact(whole.data(), whole.size(), c.tensors[id].offset);
  auto expect_rows = [&](uint64_t r0, uint64_t rows, uint64_t c0, uint64_t n) {
    std::string e;
    for (uint64_t r = r0; r < r0 + rows; ++r) e += whole.substr(r * rb + c0 * 2, n * 2);
    return e;
  };
  SafetensorsSource direct_src(c, io_config(IoMode::Direct, 16ull << 20)),
      buffered(c, {IoMode::Buffered, 0});
  for (auto [r0, rows] :
       std::vector<std::pair<uint64_t, uint64_t>>{{0, 1000}, {1, 999}, {397, 601}, {0, 394}}) {
    for (SafetensorsSource* src : {&direct_src, &buffered}) {
      std::string a(rows * rb, '\0');
      src->read(id, r0, rows, 0, cols, a.data(), rb);
      ASSERT_EQ(a, expect_rows(r0, rows, 0, cols)) << "rows [" << r0 << ", +" << rows << ")";
      // Column window (row by row through the window when direct).
      std::string x(rows * 10 * 2, '\0');
      src->read(id, r0, rows, 100, 10, x.data(), 20);
      ASSERT_EQ(x, expect_rows(r0, rows, 100, 10));
    }
  }
  EXPECT_EQ(direct_src.bytes_read(),
            buffered.bytes_read());  // the needed bytes, not the aligned ones
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";
}

TEST(DirectIo, RegionsFilledByInterleavedWritersMatch) {
  // Export's pattern: a file created at its final size, regions with
  // unaligned boundaries filled by different writers (ranks) in any order,
  // each front to back in uneven pieces.
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  const std::vector<uint64_t> bounds = {0, 100, 5000, 5001, 9000, 300000, 304096, 1000000, 1000003};
  const uint64_t size = bounds.back();
  const std::string bytes = distinct_bytes(size, 5);
  for (IoMode mode : {IoMode::Buffered, IoMode::Auto}) {
    const fs::path p = tmp.path / fmt::format("r-{}", io_mode_name(mode));
    {
      File f(p, File::Mode::Write);
      f.truncate(size);
    }
    RegionFile a(p, mode), b(p, mode);  // two "ranks", each with its own descriptors
    EXPECT_EQ(a.direct(), mode != IoMode::Buffered && direct);
    AlignedBuffer ba(8192), bb(64 << 10);
    // Regions in reverse order, alternating writers; pieces of 1, 3, 7, ... bytes.
    for (size_t r = bounds.size() - 1; r-- > 0;) {
      RegionFile& f = r % 2 ? a : b;
      RegionWriter w(f, bounds[r], bounds[r + 1], r % 2 ? ba : bb);
      uint64_t at = bounds[r], step = 1;
      while (at < bounds[r + 1]) {
        const uint64_t n = std::min(step, bounds[r + 1] - at);
        w.write_at(bytes.data() + at, n, at);
        at += n;
        step = step * 2 + 1;
      }
      w.finish();
    }
    {
      RegionWriter w(a, 10, 20, ba);
      EXPECT_THROW(w.write_at("x", 1, 11), Error);  // out of order
      EXPECT_THROW(w.finish(), Error);              // incomplete
    }
    a.file().fsync();
    EXPECT_EQ(read_all(p), bytes) << p;
  }
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";
}

// The bench's storage floor: a direct copy must give the same bytes for any
// size, aligned or not, across several blocks, and empty files.
TEST(DirectIo, DirectCopyIsByteIdenticalForEverySize) {
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  const uint64_t block = 64 << 10;
  const std::vector<uint64_t> sizes = {0,
                                       1,
                                       511,
                                       4095,
                                       4096,
                                       4097,
                                       block - 1,
                                       block,
                                       block + 1,
                                       2 * block,
                                       3 * block + 123,
                                       5 * block + 4096 + 7};
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string data = distinct_bytes(sizes[i], i + 3);
    const fs::path src = tmp.path / fmt::format("src{}", i),
                   dst = tmp.path / fmt::format("dst{}", i);
    write_bytes(src, data);
    write_bytes(dst, std::string(3 * block, 'z'));  // an existing longer file is replaced
    const DirectCopyResult r = direct_copy_file(src, dst, block);
    EXPECT_EQ(r.bytes, sizes[i]);
    EXPECT_EQ(fs::file_size(dst), sizes[i]) << "size " << sizes[i];
    EXPECT_TRUE(read_all(dst) == data) << "size " << sizes[i];
    EXPECT_EQ(r.direct_read, direct) << "size " << sizes[i];
    EXPECT_EQ(r.direct_write, direct) << "size " << sizes[i];
  }
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";
}

TEST(DirectIo, DirectCopyTreeCopiesEveryFile) {
  TempDir tmp;
  const fs::path src = tmp.path / "src", dst = tmp.path / "dst";
  fs::create_directories(src / "sub" / "deeper");
  const std::vector<std::pair<std::string, uint64_t>> files = {
      {"a.safetensors", 100000}, {"empty", 0}, {"sub/b.json", 77}, {"sub/deeper/c", 8192 + 1}};
  uint64_t total = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    write_bytes(src / files[i].first, distinct_bytes(files[i].second, 40 + i));
    total += files[i].second;
  }
  bool all_direct = false;
  EXPECT_EQ(direct_copy_tree(src, dst, 16 << 10, &all_direct), total);
  for (size_t i = 0; i < files.size(); ++i)
    EXPECT_TRUE(read_all(dst / files[i].first) == distinct_bytes(files[i].second, 40 + i))
        << files[i].first;
  EXPECT_EQ(all_direct, direct_io_supported(tmp.path));
}

TEST(DirectIo, DirectCopyOfAMissingFileNamesIt) {
  TempDir tmp;
  try {
    direct_copy_file(tmp.path / "nope", tmp.path / "out");
    FAIL() << "copied a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos) << e.what();
  }
}

namespace {
// How many of the file's pages [begin, end) are in the page cache.
uint64_t resident_pages(const fs::path& p, uint64_t begin, uint64_t end) {
  const File f(p, File::Mode::Read);
  const uint64_t size = f.size();
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, f.fd(), 0);
  EXPECT_NE(m, MAP_FAILED);
  const uint64_t pages = (size + 4095) / 4096;
  std::vector<unsigned char> v(pages);
  EXPECT_EQ(::mincore(m, size, v.data()), 0);
  ::munmap(m, size);
  uint64_t n = 0;
  for (uint64_t i = begin / 4096; i < std::min(pages, (end + 4095) / 4096); ++i) n += v[i] & 1;
  return n;
}
void evict(const fs::path& p) {
  File f(p, File::Mode::Read);
  f.fsync();  // dirty pages would stay
  ::posix_fadvise(f.fd(), 0, 0, POSIX_FADV_DONTNEED);
}
}  // namespace

// InputFile::pread_rows, every path: one contiguous range, contiguous rows to
// strided memory, wide pieces read directly one by one, narrow pieces through
// the page cache in batches of row spans (and one by one when a row span is
// larger than the window), at offsets and sizes that are not aligned.
TEST(DirectIo, RowReadsGiveTheFileBytesOnEveryPath) {
  TempDir tmp;
  const bool direct = direct_io_supported(tmp.path);
  const fs::path p = tmp.path / "rows";
  const uint64_t size = 9 * (1 << 20) + 12345;
  const std::string bytes = distinct_bytes(size, 9);
  write_bytes(p, bytes);
  struct Case {
    uint64_t offset, row_bytes, piece, rows, dst_stride;
  };
  const std::vector<Case> cases = {
      {100, 1000, 1000, 500, 1000},                          // contiguous, packed
      {4096, 1000, 1000, 700, 1003},                         // contiguous rows, strided memory
      {77, 3 * (1 << 20), (1 << 20) + 5, 2, (1 << 20) + 9},  // wide pieces: direct
      {13, 1024, 512, 2000, 512},                            // expert-fc2-like: narrow
      {5000, 8192, 4096, 300, 4100},                         // o_proj-like: narrow
      {1, 1 << 20, 1000, 8, 1000},                           // narrow piece, wide rows
      {0, 7, 3, 1, 3},                                       // one tiny row
      {3, 600000, 300000, 5, 300000},  // narrow, but a row span larger than a small window
  };
  for (IoMode mode : {IoMode::Buffered, IoMode::Direct})
    for (uint64_t window : {uint64_t{256} << 10, uint64_t{8} << 20}) {
      InputFile in(p, mode);
      ReadWindow w(window);
      for (const Case& c : cases) {
        ASSERT_LE(c.offset + (c.rows - 1) * c.row_bytes + c.piece, size);
        std::string got(c.rows * c.dst_stride, '\0'), want = got;
        for (uint64_t r = 0; r < c.rows; ++r)
          want.replace(r * c.dst_stride, c.piece,
                       bytes.substr(c.offset + r * c.row_bytes, c.piece));
        in.pread_rows(got.data(), c.dst_stride, c.rows, c.piece, c.offset, c.row_bytes, w, "t");
        ASSERT_TRUE(got == want) << io_mode_name(mode) << " window " << window << " rows " << c.rows
                                 << " piece " << c.piece << " of " << c.row_bytes;
      }
    }
  if (!direct) GTEST_SKIP() << tmp.path << " refuses O_DIRECT: only the buffered path was checked";

  // Where the bytes come from: a wide window bypasses the page cache, a
  // narrow one goes through it (where the node's other ranks find it).
  InputFile in(p, IoMode::Direct);
  ReadWindow w(8 << 20);
  std::string buf(4 << 20, '\0');
  evict(p);
  in.pread_rows(buf.data(), (1 << 20) + 1, 2, (1 << 20) + 1, 0, 4 << 20, w, "wide");
  EXPECT_EQ(resident_pages(p, 0, 8 << 20), 0u);
  EXPECT_FALSE(column_window_direct(512, 1024));
  EXPECT_TRUE(column_window_direct(1024, 1024));
  EXPECT_TRUE(column_window_direct(kDirectPieceBytes, 4 * kDirectPieceBytes));
  evict(p);
  in.pread_rows(buf.data(), 512, 2048, 512, 0, 1024, w, "narrow");
  EXPECT_EQ(resident_pages(p, 0, 2 << 20), 512u);  // the 2 MiB row span, once
}

// Small reads alternating between two files (the TP halves of one HF row,
// stored in two files): ReadWindows gives each file its own load-ahead, so
// each byte comes from storage once; a load-ahead bounded by ahead_until
// stops there (the next bytes being another rank's). Bytes are checked on
// every path; the storage counters where O_DIRECT works and are counted.
TEST(DirectIo, AlternatingFilesKeepTheirWindowsAndLoadAheadStopsWhereTold) {
  TempDir tmp;
  const uint64_t size = 4 << 20, piece = 512;
  const fs::path pa = tmp.path / "a", pb = tmp.path / "b";
  const std::string ba = distinct_bytes(size, 3), bb = distinct_bytes(size, 4);
  write_bytes(pa, ba);
  write_bytes(pb, bb);
  for (IoMode mode : {IoMode::Buffered, IoMode::Direct}) {
    InputFile a(pa, mode), b(pb, mode);
    ReadWindows windows(8 << 20);
    std::string got(2 * piece, '\0');
    for (uint64_t at = 0; at < size; at += piece) {
      a.pread_exact(got.data(), piece, at, windows.of(a), "a");
      b.pread_exact(got.data() + piece, piece, at, windows.of(b), "b");
      ASSERT_EQ(got.substr(0, piece), ba.substr(at, piece)) << io_mode_name(mode) << " at " << at;
      ASSERT_EQ(got.substr(piece), bb.substr(at, piece)) << io_mode_name(mode) << " at " << at;
    }
  }
  if (!direct_io_supported(tmp.path)) GTEST_SKIP() << tmp.path << " refuses O_DIRECT";

  const auto storage_reads = [] { return read_thread_io_counters().read_bytes; };
  InputFile a(pa, IoMode::Direct), b(pb, IoMode::Direct);
  ReadWindows windows(8 << 20);
  std::string buf(piece, '\0');
  // Runs of 64 rows from each file in turn, as rows of one HF tensor come
  // from its two TP halves: each run's load-ahead reaches past the run.
  const uint64_t r0 = storage_reads();
  for (uint64_t at = 0; at < size; at += 64 * piece)
    for (InputFile* f : {&a, &b})
      for (uint64_t r = 0; r < 64; ++r)
        f->pread_exact(buf.data(), piece, at + r * piece, windows.of(*f), "run");
  const uint64_t alternating = storage_reads() - r0;
  if (alternating == 0) GTEST_SKIP() << "this kernel does not count this thread's storage reads";
  EXPECT_LE(alternating, 2 * size + 2 * 8192)
      << "a window shared by both files reloads at each switch";

  // Reads of the first MiB, 512 bytes at a time, told that they end there.
  ReadWindow w(8 << 20);
  const uint64_t r1 = storage_reads();
  for (uint64_t at = 0; at < (1 << 20); at += piece)
    a.pread_exact(buf.data(), piece, at, w, "a", 1 << 20);
  EXPECT_LE(storage_reads() - r1, (1u << 20) + 4096) << "the load-ahead went past ahead_until";
}

// will_read_rows asks the kernel for exactly the bytes a narrow window's read
// takes through the page cache (its row span), and for nothing where the read
// would be direct or the file is read through the page cache anyway (the
// kernel then reads ahead by itself). Judged by the kernel's own page table
// (mincore), not by what the call returns.
TEST(DirectIo, WillReadRowsAsksForANarrowWindowsRowSpanOnly) {
  TempDir tmp;
  if (!direct_io_supported(tmp.path)) GTEST_SKIP() << tmp.path << " refuses O_DIRECT";
  const fs::path p = tmp.path / "rows";
  write_bytes(p, distinct_bytes(9 << 20, 5));
  const uint64_t span = 2047 * 1024 + 512;  // 2048 rows of 1 KiB, the first 512 bytes of each
  {
    InputFile buffered(p, IoMode::Buffered);
    EXPECT_EQ(buffered.will_read_rows(2048, 512, 0, 1024), 0u);
  }
  InputFile in(p, IoMode::Direct);
  evict(p);
  EXPECT_EQ(in.will_read_rows(2, (1 << 20) + 1, 0, 4 << 20), 0u);  // wide: read directly
  EXPECT_EQ(in.will_read_rows(4, 1024, 0, 1024), 0u);              // whole rows: direct
  EXPECT_EQ(resident_pages(p, 0, 9 << 20), 0u);
  EXPECT_EQ(in.will_read_rows(2048, 512, 4096, 1024), span);
  // The kernel reads asynchronously: wait for it (bounded).
  for (int i = 0; i < 500 && resident_pages(p, 4096, 4096 + span) < 512; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(resident_pages(p, 4096, 4096 + span), 512u);
  EXPECT_EQ(resident_pages(p, 0, 4096), 0u);                    // nothing before the span ...
  EXPECT_EQ(resident_pages(p, (2 << 20) + 4096, 9 << 20), 0u);  // ... or after it
}
