// The checksum chains (lib/checkpoint/verify_chains.hpp) on hand-made reads
// whose right answer is worked out here by hand, and the hash state that the
// chains hand from rank to rank (Hasher::save/restore) against a one-shot
// XXH3 of the same bytes.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "checkpoint/verify_chains.hpp"
#include "core/hash.hpp"

namespace mb {
namespace {

// A segment reading rows [row0, row0 + rows) and columns [col0, col0 + cols) of source `src`.
Segment rows_of(uint32_t src, uint64_t row0, uint64_t rows, uint64_t col0 = 0, uint64_t cols = 8) {
  Segment g;
  g.src = src;
  g.src_row = row0;
  g.src_col = col0;
  g.rows = rows;
  g.cols = cols;
  return g;
}

void expect_links(const std::vector<ChainLink>& got, const std::vector<ChainLink>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].rank, want[i].rank) << "link " << i;
    EXPECT_EQ(got[i].row0, want[i].row0) << "link " << i;
    EXPECT_EQ(got[i].row1, want[i].row1) << "link " << i;
  }
}

TEST(VerifyChains, TpHalvesMakeTwoLinksInRankOrder) {
  // A TP2 reshard of a 100-row tensor: rank 1 reads the second half, rank 0 the first.
  const std::vector<Segment> r1 = {rows_of(0, 50, 50)}, r0 = {rows_of(0, 0, 50)};
  const auto chains = build_verify_chains({100}, {{1, &r1}, {0, &r0}});
  expect_links(chains[0], {{0, 0, 50}, {1, 50, 100}});
}

TEST(VerifyChains, ColumnWindowsAndReplicasGoToOneRank) {
  // Both ranks read every row (column halves, or the same replicated tensor):
  // one link, the lowest rank's, and nothing is handed on.
  const std::vector<Segment> r0 = {rows_of(0, 0, 10, 0, 4), rows_of(1, 0, 3)},
                             r1 = {rows_of(0, 0, 10, 4, 4), rows_of(1, 0, 3)};
  const auto chains = build_verify_chains({10, 3}, {{1, &r1}, {0, &r0}});
  expect_links(chains[0], {{0, 0, 10}});
  expect_links(chains[1], {{0, 0, 3}});
}

TEST(VerifyChains, PiecesOfOneRankMergeAndTheFurthestReachWins) {
  // Rank 0 reads rows 0-29 in two pieces and 60-99; rank 1 reads 20-69.
  // From row 0 rank 0 reaches 30, then rank 1 (the only one at 30) 70, then
  // rank 0 the rest.
  const std::vector<Segment> r0 = {rows_of(0, 0, 10), rows_of(0, 10, 20), rows_of(0, 60, 40)},
                             r1 = {rows_of(0, 20, 50)};
  const auto chains = build_verify_chains({100}, {{0, &r0}, {1, &r1}});
  expect_links(chains[0], {{0, 0, 30}, {1, 30, 70}, {0, 70, 100}});
}

TEST(VerifyChains, RowsNobodyReadsJoinALink) {
  // Rows 40-59 and 90-99 are read by nobody: they join the link before them.
  // Rows 0-4 are read by nobody either: they join the first link.
  const std::vector<Segment> r0 = {rows_of(0, 5, 35)}, r1 = {rows_of(0, 60, 30)};
  const auto chains = build_verify_chains({100}, {{0, &r0}, {1, &r1}});
  expect_links(chains[0], {{0, 0, 60}, {1, 60, 100}});
}

TEST(VerifyChains, ByteRangesOfAChunkAlternateBetweenRanks) {
  // A torch_dist chunk of 400 bytes, read as two TP halves of two stacked
  // parts (gate, up) by two ranks, the ranges given out of order and in
  // pieces; rank 1 also reads bytes 150-160 again (a replica). Bytes 390-399
  // nobody reads join the last link.
  ReadRanges by_rank;
  by_rank[1] = {{300, 390}, {100, 150}, {150, 200}, {150, 160}};
  by_rank[0] = {{200, 300}, {0, 100}};
  expect_links(build_chain(400, by_rank),
               {{0, 0, 100}, {1, 100, 200}, {0, 200, 300}, {1, 300, 400}});
  // One rank reading every byte (a column window read as whole rows) holds
  // the one link even where another reads a part.
  expect_links(build_chain(400, {{1, {{0, 400}}}, {0, {{0, 200}}}}), {{1, 0, 400}});
}

TEST(VerifyChains, UnreadTensorsAndEmptySegmentsHaveNoChain) {
  const std::vector<Segment> r0 = {rows_of(1, 0, 4), rows_of(0, 0, 0)};
  const auto chains = build_verify_chains({4, 4}, {{0, &r0}});
  EXPECT_TRUE(chains[0].empty());
  expect_links(chains[1], {{0, 0, 4}});
}

TEST(VerifyChains, SegmentOutsideTheSourcesIsRefused) {
  const std::vector<Segment> r0 = {rows_of(3, 0, 4)};
  EXPECT_THROW(build_verify_chains({4}, {{0, &r0}}), std::exception);
}

TEST(HasherState, SavedAndRestoredContinuesTheSameStream) {
  // Lengths around XXH3's internal buffer (256 bytes) and block (1024 bytes).
  std::vector<unsigned char> data(5000);
  std::iota(data.begin(), data.end(), static_cast<unsigned char>(7));
  for (size_t cut :
       {size_t{0}, size_t{1}, size_t{255}, size_t{256}, size_t{1024}, size_t{3001}, data.size()}) {
    Hasher first;
    first.update(data.data(), cut);
    const std::string state = first.save();
    Hasher second;
    second.update("unrelated", 9);  // overwritten by restore
    second.restore(state);
    second.update(data.data() + cut, data.size() - cut);
    EXPECT_EQ(second.digest(), hash_bytes(data.data(), data.size())) << "cut at " << cut;
  }
  Hasher h;
  EXPECT_THROW(h.restore("short"), std::exception);
}

}  // namespace
}  // namespace mb

// Rows are loaded ahead only in order, per tensor: an expert fc1 read as
// shard 0's gate and up rows, then shard 1's, has shard 1's gate rows (behind
// the furthest asked) left to the page cache, where the checksum's fill
// puts them; its up rows (beyond) are loaded.
TEST(RowsAskedInOrder, OnlyRowsAtOrAfterTheFurthestAskedOfTheirTensor) {
  mb::RowsAskedInOrder in_order;
  EXPECT_TRUE(in_order.ask(7, 0, 256));     // shard 0: gate
  EXPECT_TRUE(in_order.ask(7, 512, 256));   // shard 0: up
  EXPECT_FALSE(in_order.ask(7, 256, 256));  // shard 1: gate, skipped over
  EXPECT_TRUE(in_order.ask(7, 768, 256));   // shard 1: up
  EXPECT_TRUE(in_order.ask(8, 0, 10));      // another tensor starts afresh
  EXPECT_FALSE(in_order.ask(7, 0, 1));
  EXPECT_TRUE(in_order.ask(7, 1024, 0));  // nothing left behind
}
