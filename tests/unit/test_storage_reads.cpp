// import_storage_reads(), what `plan --io MODE` reports and `bench` compares the
// measured storage reads with, on the 35B-A3B geometry (4 layers), against
// sums over the HF catalogue: which tensors a TP2 rank reads as narrow column
// windows follows from the spec (the row-parallel layers), not from the code.
#include <gtest/gtest.h>

#include <string>

#include "layout/import_plan.hpp"
#include "pipelines/plan_report.hpp"
#include "test_util.hpp"

using namespace mb;

TEST(StorageReads, NarrowColumnWindowsAreReadOncePerNode) {
  const MoePlan mp = moe_plan(4, 2, 1, 1, 2, 2);
  const HfCatalog& c = mp.catalog;
  const ImportPlan& p = mp.plan;
  uint64_t total = 0, narrow = 0;
  for (const auto& t : c.tensors) {
    total += t.nbytes;
    if (hf_row_parallel(t.name)) narrow += t.nbytes;
  }
  ASSERT_GT(narrow, total / 10);  // the expert down_proj alone is a third of the experts
  const StorageReads auto_reads = import_storage_reads(p, IoMode::Auto, 256ull << 20);
  // Each of the two ranks needs half of every row of every row-parallel
  // tensor: once per node through the page cache, twice with a node per rank.
  EXPECT_EQ(auto_reads.page_cache_one_node, narrow);
  EXPECT_EQ(auto_reads.page_cache_node_per_rank, 2 * narrow);
  // The rest is read directly: every other byte at least once (replicated
  // tensors twice), each read's 4 KiB cover.
  EXPECT_GE(auto_reads.direct, total - narrow);
  EXPECT_LE(auto_reads.one_node(), total + total / 100);
  // Buffered: all through the page cache, so once per node.
  const StorageReads buffered = import_storage_reads(p, IoMode::Buffered, 256ull << 20);
  EXPECT_EQ(buffered.direct, 0u);
  EXPECT_EQ(buffered.page_cache_one_node, total);
}

TEST(StorageReads, OneRankReadsEachByteOnceDirectly) {
  const MoePlan mp = moe_plan(2, 1, 1, 1, 1, 1);
  const HfCatalog& c = mp.catalog;
  const ImportPlan& p = mp.plan;
  uint64_t total = 0;
  for (const auto& t : c.tensors) total += t.nbytes;
  const StorageReads r = import_storage_reads(p, IoMode::Auto, 256ull << 20);
  EXPECT_EQ(r.page_cache_one_node, 0u);  // TP1: no column windows
  EXPECT_GE(r.direct, total);
  uint64_t segments = 0;
  for (const auto& s : p.shards)
    for (const auto& t : s.tensors) segments += t.segments.size();
  EXPECT_LE(r.direct, total + 2 * 4096 * segments);  // at most a unit more at each end
}

TEST(StorageReads, OneRankWritingTp2ShardsSideBySideReadsWholeRowsDirectly) {
  const MoePlan mp = moe_plan(2, 2, 1, 1, 2, 1);
  const HfCatalog& c = mp.catalog;
  const ImportPlan& p = mp.plan;
  uint64_t total = 0, narrow = 0;
  for (const auto& t : c.tensors) {
    total += t.nbytes;
    if (hf_row_parallel(t.name)) narrow += t.nbytes;
  }
  // HDF5 output: the rank's two shards side by side, so the row-parallel
  // tensors' halves are one read of whole rows; nothing goes through the page cache.
  const StorageReads hdf5 = import_storage_reads(p, IoMode::Auto, 256ull << 20);
  EXPECT_EQ(hdf5.page_cache_one_node, 0u);
  EXPECT_GE(hdf5.direct, total);
  EXPECT_LE(hdf5.one_node(), total + total / 100);
  // One shard at a time (torch_dist output): each half a narrow window.
  const StorageReads one = import_storage_reads(p, IoMode::Auto, 0);
  EXPECT_EQ(one.page_cache_one_node, narrow);
}
