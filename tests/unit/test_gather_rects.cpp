// What the device copy engine runs, on the CPU: a block's source rectangles
// packed by pack_block() (block_packing.hpp, the engine's step 1), the table
// widened by widen_rects() and executed word by word through the index math
// the CUDA gather kernel uses (gather_rects_host(), gather_rects.hpp). The
// reference is an element loop written here from the Segment definition, so
// that a mistake shared by the engine's helpers and apply_segments() cannot
// hide; the segment lists are random tilings and the real Qwen3.5 re-layouts
// (relayout.hpp) with row-parallel column windows, at several block sizes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/block_packing.hpp"
#include "transforms/gather_rects.hpp"
#include "transforms/relayout.hpp"
#include "transforms/segment.hpp"

using namespace mb;

namespace {
using Bytes = std::vector<unsigned char>;

Bytes random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<unsigned char>(rng());
  return b;
}

class MemSource : public RowSource {
 public:
  std::vector<Bytes> data;
  std::vector<uint64_t> cols;
  size_t elem = 2;
  uint64_t read_bytes = 0;
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t n, void* dst,
            uint64_t stride) override {
    EXPECT_LE((row0 + rows - 1) * cols[id] + col0 + n, data[id].size() / elem);
    for (uint64_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<unsigned char*>(dst) + r * stride,
                  data[id].data() + ((row0 + r) * cols[id] + col0) * elem, n * elem);
    read_bytes += rows * n * elem;
  }
  uint64_t bytes_read() const override { return read_bytes; }
};

// The destination by definition: element (dst_row + r, dst_col + c) of every
// segment is element (src_row + r, src_col + c) of its source.
Bytes reference(const std::vector<Segment>& segs, const MemSource& src, uint64_t rows,
                uint64_t cols) {
  const size_t e = src.elem;
  Bytes out(rows * cols * e, 0xcd);
  for (const Segment& g : segs)
    for (uint64_t r = 0; r < g.rows; ++r)
      for (uint64_t c = 0; c < g.cols; ++c)
        std::memcpy(&out[((g.dst_row + r) * cols + g.dst_col + c) * e],
                    &src.data[g.src][((g.src_row + r) * src.cols[g.src] + g.src_col + c) * e], e);
  return out;
}

// The engine's block loop without the device: pack, widen, gather.
Bytes device_path(const std::vector<Segment>& segs, MemSource& src, uint64_t rows, uint64_t cols,
                  uint64_t block, size_t* widest = nullptr) {
  const size_t e = src.elem;
  Bytes out(rows * cols * e, 0xcd);
  std::vector<GatherRect> rects;
  for (uint64_t b0 = 0; b0 < rows; b0 += block) {
    const uint64_t b1 = std::min(rows, b0 + block);
    const uint64_t cap = packed_capacity(b1 - b0, cols * e, segs.size());
    // Aligned like cudaHostAlloc's memory; guard bytes after it.
    std::vector<uint64_t> storage((cap + 64) / 8 + 1, 0x5a5a5a5a5a5a5a5aull);
    auto* packed = reinterpret_cast<unsigned char*>(storage.data());
    const uint64_t used = pack_block(segs, b0, b1, e, src, packed, rects);
    EXPECT_LE(used, cap);
    for (const GatherRect& r : rects) EXPECT_EQ(r.src_offset * e % kPackAlign, 0u);
    uint64_t dst_words = cols;
    const size_t w = widen_rects(rects, dst_words, e);
    if (widest) *widest = std::max(*widest, w);
    Bytes block_out((b1 - b0) * cols * e, 0xcd);
    gather_rects_host(rects, packed, block_out.data(), dst_words, w);
    std::memcpy(out.data() + b0 * cols * e, block_out.data(), block_out.size());
  }
  return out;
}

uint64_t area(const std::vector<Segment>& segs) {
  uint64_t n = 0;
  for (const auto& g : segs) n += g.rows * g.cols;
  return n;
}
}  // namespace

TEST(GatherRects, RandomTilingsAtEveryBlockSize) {
  std::mt19937 rng(400);
  for (size_t elem : {1, 2, 4, 8}) {
    for (int trial = 0; trial < 30; ++trial) {
      const uint64_t dst_rows = 1 + rng() % 120, dst_cols = 1 + rng() % 70;
      MemSource src;
      src.elem = elem;
      std::vector<uint64_t> src_rows;
      for (int s = 0; s < 3; ++s) {
        src_rows.push_back(dst_rows + rng() % 50);
        src.cols.push_back(dst_cols + rng() % 9);
        src.data.push_back(
            random_bytes(src_rows.back() * src.cols.back() * elem, static_cast<uint32_t>(rng())));
      }
      std::vector<Segment> segs;
      for (uint64_t r = 0; r < dst_rows;) {
        const uint64_t rows = std::min<uint64_t>(dst_rows - r, 1 + rng() % 40);
        for (uint64_t c = 0; c < dst_cols;) {
          const uint64_t cols = std::min<uint64_t>(dst_cols - c, 1 + rng() % 40);
          const uint32_t s = static_cast<uint32_t>(rng() % 3);
          segs.push_back({s, rng() % (src_rows[s] - rows + 1), rng() % (src.cols[s] - cols + 1), r,
                          c, rows, cols});
          c += cols;
        }
        r += rows;
      }
      const Bytes want = reference(segs, src, dst_rows, dst_cols);
      // apply_segments (the CPU engine's placement) agrees with the definition.
      std::vector<const void*> ptrs;
      for (const auto& d : src.data) ptrs.push_back(d.data());
      Bytes cpu(want.size(), 0xcd);
      apply_segments(segs, ptrs, src.cols, cpu.data(), dst_cols, elem);
      ASSERT_EQ(cpu, want);
      for (uint64_t block : {uint64_t{1}, uint64_t{7}, dst_rows}) {
        src.read_bytes = 0;
        ASSERT_EQ(device_path(segs, src, dst_rows, dst_cols, block), want)
            << "elem " << elem << " trial " << trial << " block " << block;
        EXPECT_EQ(src.read_bytes, area(segs) * elem);  // every source element read once
      }
    }
  }
}

TEST(GatherRects, QwenRelayoutsWithColumnWindows) {
  // QKVG (ng < T) as TP rank 1 of 4, a row-parallel column window of rank 3,
  // GLU and GDN in_proj: the segment lists the import plan hands the engine.
  const uint64_t H = 96, heads = 16, kv = 2, hd = 8;
  MemSource src;
  src.elem = 2;
  src.data = {random_bytes(2 * heads * hd * H * 2, 1), random_bytes(kv * hd * H * 2, 2),
              random_bytes(kv * hd * H * 2, 3), random_bytes(64 * H * 2, 4)};
  src.cols = {H, H, H, H};
  const RowMap full =
      qkvg_full({0, 0, 2 * heads * hd}, {1, 0, kv * hd}, {2, 0, kv * hd}, heads, kv, hd);
  struct Job {
    std::string what;
    std::vector<Segment> segs;
    uint64_t rows, cols;
  };
  const std::vector<Job> jobs = {
      {"qkvg rank 1/4", row_map_segments(chunk_rows(full, 4, 1), 0, H), total_rows(full) / 4, H},
      {"window rank 3/4", row_map_segments(chunk_rows(full, 4, 3), 24, 48), total_rows(full) / 4,
       48},
      {"odd window", row_map_segments(chunk_rows(full, 2, 0), 5, 33), total_rows(full) / 2, 33},
      {"glu rank 1/2", row_map_segments(glu_local({0, 0, 64}, {3, 0, 64}, 2, 1), 0, H), 64, H},
      {"gdn in_proj rank 0/2",
       row_map_segments(
           gdn_in_proj_local({0, 0, 2 * 8 + 16}, {1, 0, 16}, {2, 0, 8}, {3, 0, 8}, 8, 16, 2, 0), 0,
           H),
       (2 * 8 + 2 * 16 + 2 * 8) / 2, H},
  };
  for (const Job& j : jobs) {
    ASSERT_EQ(area(j.segs), j.rows * j.cols) << j.what;
    const Bytes want = reference(j.segs, src, j.rows, j.cols);
    for (uint64_t block : {uint64_t{1}, uint64_t{5}, uint64_t{64}, j.rows}) {
      size_t widest = 0;
      ASSERT_EQ(device_path(j.segs, src, j.rows, j.cols, block, &widest), want)
          << j.what << " block " << block;
      // 96 bf16 columns = 192 bytes: whole rows move as 16-byte words.
      if (j.cols == H) EXPECT_EQ(widest, 16u) << j.what;
    }
  }
}

TEST(GatherRects, WidensToTheWidestCommonWord) {
  std::vector<GatherRect> r{{8, 64, 0, 8, 3, 16}};
  uint64_t dst_cols = 64;
  EXPECT_EQ(widen_rects(r, dst_cols, 2), 16u);
  EXPECT_EQ(r[0].src_offset, 1u);
  EXPECT_EQ(r[0].src_stride, 8u);
  EXPECT_EQ(r[0].dst_col, 1u);
  EXPECT_EQ(r[0].cols, 2u);
  EXPECT_EQ(dst_cols, 8u);
  std::vector<GatherRect> odd{{1, 5, 0, 0, 2, 5}};
  uint64_t dc = 5;
  EXPECT_EQ(widen_rects(odd, dc, 2), 2u);
  EXPECT_EQ(odd[0].src_offset, 1u);
  EXPECT_EQ(gather_word_for(0), 16u);
  EXPECT_EQ(gather_word_for(24), 8u);
  EXPECT_EQ(gather_word_for(6), 2u);
  EXPECT_EQ(gather_word_for(3), 1u);
}

TEST(GatherRects, IndexMathOfOneRectangle) {
  const GatherRect r{100, 10, 2, 3, 4, 5};  // 4 x 5 words
  EXPECT_EQ(gather_src_word(r, 0), 100u);
  EXPECT_EQ(gather_dst_word(r, 0, 20), 2u * 20 + 3);
  EXPECT_EQ(gather_src_word(r, 7), 100u + 1 * 10 + 2);  // row 1, col 2
  EXPECT_EQ(gather_dst_word(r, 7, 20), 3u * 20 + 3 + 2);
  EXPECT_EQ(gather_src_word(r, 19), 100u + 3 * 10 + 4);
}
