#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/direct_io.hpp"
#include "core/error.hpp"
#include "pipelines/safetensors_source.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;

namespace {
// Bytes that differ at every position (a counter alone repeats every 256).
std::string pattern(uint64_t n, uint64_t seed = 1) {
  std::string s(n, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull * seed;
  for (uint64_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::string read_all(const fs::path& p) {
  return read_text_file(p);
}

// True where the test directory takes O_DIRECT (ext4, xfs; not every tmpfs).
bool direct_supported(const fs::path& dir) {
  write_bytes(dir / "probe", std::string(4096, 'x'));
  return InputFile(dir / "probe", IoMode::Direct).direct();
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
  const bool direct = direct_supported(tmp.path);
  const uint64_t size = (3ull << 20) + 777;  // ends off any alignment
  const std::string bytes = pattern(size);
  write_bytes(tmp.path / "f", bytes);
  const std::string other_bytes = pattern(size, 2);
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
  write_bytes(tmp.path / "f", pattern(size));
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
  const bool direct = direct_supported(tmp.path);
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
          const std::string s = pattern(n, seed++);
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
    const std::string s = pattern(3 * 4096, 9);
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
  const bool direct = direct_supported(tmp.path);
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
  const bool direct = direct_supported(tmp.path);
  const std::vector<uint64_t> bounds = {0, 100, 5000, 5001, 9000, 300000, 304096, 1000000, 1000003};
  const uint64_t size = bounds.back();
  const std::string bytes = pattern(size, 5);
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
