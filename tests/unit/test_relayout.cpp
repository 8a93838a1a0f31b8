// Hand-checked re-layouts on tiny geometries, and each transform tested as a
// pair with its inverse: applying the segments and then the inverted
// segments must restore the source exactly, touching every element once.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "transforms/relayout.hpp"

using namespace mb;

namespace {
// Source rows in order: returns the source row label of each destination row
// for a single-source map (labels are row indices).
std::vector<uint64_t> rows_of(const RowMap& m) {
  std::vector<uint64_t> out;
  for (const auto& r : m)
    for (uint64_t i = 0; i < r.rows; ++i) out.push_back(r.src * 1000 + r.row0 + i);
  return out;
}

// Forward then inverse through segments, on labelled data.
void expect_round_trip(const std::vector<RowMap>& parts, const std::vector<uint64_t>& src_rows,
                       uint64_t cols) {
  std::vector<std::vector<uint32_t>> src(src_rows.size());
  std::vector<const void*> ptrs;
  std::vector<uint64_t> src_cols;
  for (size_t s = 0; s < src.size(); ++s) {
    src[s].resize(src_rows[s] * cols);
    std::iota(src[s].begin(), src[s].end(), static_cast<uint32_t>(s * 1000000));
    ptrs.push_back(src[s].data());
    src_cols.push_back(cols);
  }
  std::vector<std::vector<uint32_t>> back(src.size());
  for (size_t s = 0; s < src.size(); ++s) back[s].assign(src[s].size(), 0xffffffffu);
  for (const RowMap& part : parts) {
    auto segs = row_map_segments(part, 0, cols);
    std::vector<uint32_t> local(total_rows(part) * cols);
    apply_segments(segs, ptrs, src_cols, local.data(), cols, 4);
    // Invert: each segment copies its destination rectangle back to its source.
    for (const auto& s : segs) {
      Segment inv = invert(s, 0);
      std::vector<Segment> one{inv};
      std::vector<const void*> lp{local.data()};
      std::vector<uint64_t> lc{cols};
      apply_segments(one, lp, lc, back[s.src].data(), cols, 4);
    }
  }
  for (size_t s = 0; s < src.size(); ++s) EXPECT_EQ(src[s], back[s]) << "source " << s;
}
}  // namespace

TEST(Relayout, ChunkRowsSplitsAcrossRuns) {
  RowMap full{{0, 0, 3}, {1, 10, 3}};  // 6 rows
  EXPECT_EQ(rows_of(chunk_rows(full, 3, 0)), (std::vector<uint64_t>{0, 1}));
  EXPECT_EQ(rows_of(chunk_rows(full, 3, 1)), (std::vector<uint64_t>{2, 1010}));
  EXPECT_EQ(rows_of(chunk_rows(full, 3, 2)), (std::vector<uint64_t>{1011, 1012}));
  EXPECT_THROW(chunk_rows(full, 4, 0), std::exception);
}

TEST(Relayout, QkvgHandChecked) {
  // 4 query heads in 2 groups, head_dim 1. q_proj rows: [q0 g0 q1 g1 q2 g2 q3 g3].
  RowRun q{0, 0, 8}, k{1, 0, 2}, v{2, 0, 2};
  RowMap full = qkvg_full(q, k, v, 4, 2, 1);
  // Per group: [q heads, gate heads, k, v].
  EXPECT_EQ(rows_of(full), (std::vector<uint64_t>{0, 2, 1, 3, 1000, 2000, 4, 6, 5, 7, 1001, 2001}));
  // TP=4 with 2 groups splits each group across two ranks (ng < T).
  EXPECT_EQ(rows_of(chunk_rows(full, 4, 1)), (std::vector<uint64_t>{3, 1000, 2000}));
}

TEST(Relayout, QkvgHeadDimBlocks) {
  // head_dim 2: query head 1 is q_proj rows [4, 6), its gate rows [6, 8).
  RowRun q{0, 0, 8}, k{1, 0, 2}, v{2, 0, 2};
  RowMap full = qkvg_full(q, k, v, 2, 1, 2);
  EXPECT_EQ(rows_of(full), (std::vector<uint64_t>{0, 1, 4, 5, 2, 3, 6, 7, 1000, 1001, 2000, 2001}));
}

TEST(Relayout, GdnInProjHandChecked) {
  // Kd = 2, Vd = 4, nv = 2: in_proj_qkv rows [Q0 Q1 K0 K1 V0 V1 V2 V3].
  RowRun qkv{0, 0, 8}, z{1, 0, 4}, b{2, 0, 2}, a{3, 0, 2};
  EXPECT_EQ(rows_of(gdn_in_proj_local(qkv, z, b, a, 2, 4, 1, 0)),
            (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 1000, 1001, 1002, 1003, 2000, 2001, 3000, 3001}));
  // TP=2: rank 1 holds the second half of every component.
  EXPECT_EQ(rows_of(gdn_in_proj_local(qkv, z, b, a, 2, 4, 2, 1)),
            (std::vector<uint64_t>{1, 3, 6, 7, 1002, 1003, 2001, 3001}));
}

TEST(Relayout, GdnConvHandChecked) {
  RowRun conv{0, 0, 8};  // [Q0 Q1 K0 K1 V0 V1 V2 V3]
  EXPECT_EQ(rows_of(gdn_conv_local(conv, 2, 4, 2, 0)), (std::vector<uint64_t>{0, 2, 4, 5}));
  EXPECT_EQ(rows_of(gdn_conv_local(conv, 2, 4, 2, 1)), (std::vector<uint64_t>{1, 3, 6, 7}));
}

TEST(Relayout, GluHandChecked) {
  RowRun gate{0, 0, 4}, up{1, 0, 4};
  EXPECT_EQ(rows_of(glu_local(gate, up, 1, 0)),
            (std::vector<uint64_t>{0, 1, 2, 3, 1000, 1001, 1002, 1003}));
  EXPECT_EQ(rows_of(glu_local(gate, up, 2, 1)), (std::vector<uint64_t>{2, 3, 1002, 1003}));
  // A fused [2I, H] expert slab uses one source for both halves.
  RowRun slab{5, 8, 4};
  EXPECT_EQ(rows_of(glu_local(sub_run(slab, 0, 2), sub_run(slab, 2, 2), 2, 0)),
            (std::vector<uint64_t>{5008, 5010}));
}

TEST(Relayout, VisionQkvHandChecked) {
  // 2 heads of dim 1: HF [q0 q1 k0 k1 v0 v1] -> per head [q0 k0 v0 q1 k1 v1].
  EXPECT_EQ(rows_of(vision_qkv_full({0, 0, 6}, 2, 1)), (std::vector<uint64_t>{0, 2, 4, 1, 3, 5}));
}

TEST(Relayout, SegmentsCoalesceContiguousRuns) {
  // At TP=1 the GLU is [gate; up] from two tensors: two segments, not 2I.
  auto segs = row_map_segments(glu_local({0, 0, 4}, {1, 0, 4}, 1, 0), 0, 3);
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0], (Segment{0, 0, 0, 0, 0, 4, 3}));
  EXPECT_EQ(segs[1], (Segment{1, 0, 0, 4, 0, 4, 3}));
}

TEST(Relayout, EveryTransformInvertsExactly) {
  for (uint64_t T : {1, 2, 4}) {
    std::vector<RowMap> qkvg, gdn, conv, glu, vis;
    for (uint64_t t = 0; t < T; ++t) {
      qkvg.push_back(chunk_rows(qkvg_full({0, 0, 2 * 8 * 2}, {1, 0, 2 * 2}, {2, 0, 2 * 2}, 8, 2, 2), T, t));
      gdn.push_back(gdn_in_proj_local({0, 0, 2 * 8 + 16}, {1, 0, 16}, {2, 0, 8}, {3, 0, 8}, 8, 16, T, t));
      conv.push_back(gdn_conv_local({0, 0, 2 * 8 + 16}, 8, 16, T, t));
      glu.push_back(glu_local({0, 0, 12}, {1, 0, 12}, T, t));
      vis.push_back(chunk_rows(vision_qkv_full({0, 0, 3 * 4 * 3}, 4, 3), T, t));
    }
    expect_round_trip(qkvg, {32, 4, 4}, 5);
    expect_round_trip(gdn, {32, 16, 8, 8}, 3);
    expect_round_trip(conv, {32}, 4);
    expect_round_trip(glu, {12, 12}, 2);
    expect_round_trip(vis, {36}, 7);
  }
}

TEST(Relayout, ColumnWindowSegments) {
  // Row-parallel split: rank 1 of 2 takes columns [3, 6) of every row.
  auto segs = row_map_segments({{0, 0, 4}}, 3, 3);
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0], (Segment{0, 0, 3, 0, 0, 4, 3}));
  std::vector<uint32_t> src(24);
  std::iota(src.begin(), src.end(), 0);
  std::vector<uint32_t> dst(12);
  apply_segments(segs, {src.data()}, {6}, dst.data(), 3, 4);
  EXPECT_EQ(dst, (std::vector<uint32_t>{3, 4, 5, 9, 10, 11, 15, 16, 17, 21, 22, 23}));
}
