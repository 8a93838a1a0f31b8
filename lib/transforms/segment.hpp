// A re-layout as data: the destination tensor is a list of rectangular copies
// from source tensors, each in the 2-D view of shape.hpp. Import, export,
// verify and reshard all execute segment lists; the inverse of a re-layout is
// the same list with source and destination swapped.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace mb {

struct Segment {
  uint32_t src = 0;      // source tensor id (its meaning depends on the pipeline)
  uint64_t src_row = 0;  // first row in the source's 2-D view
  uint64_t src_col = 0;  // first column
  uint64_t dst_row = 0;
  uint64_t dst_col = 0;
  uint64_t rows = 0;
  uint64_t cols = 0;

  bool operator==(const Segment&) const = default;
};

// Merges neighbours that continue each other in both source and destination
// (e.g. the gate/up halves at TP=1), so that reads become larger.
std::vector<Segment> coalesce(std::vector<Segment> segs);

// Merges segments that continue each other along the columns, in both source
// and destination (the same rows of one source, read as column windows for
// two shards written side by side), into one wider read. Order is kept: a
// segment joins the first earlier one it continues.
std::vector<Segment> merge_column_neighbours(const std::vector<Segment>& segs);

// The inverse re-layout: copies destination regions back to their sources.
// `src_id` becomes the id of the destination tensor in the inverted list.
Segment invert(const Segment& s, uint32_t dst_as_src_id);

// Applies segments in memory: dst[r][c] = src[s.src][...] for elements of
// `elem` bytes. `srcs[i]`/`src_cols[i]` describe source tensor i.
void apply_segments(const std::vector<Segment>& segs, const std::vector<const void*>& srcs,
                    const std::vector<uint64_t>& src_cols, void* dst, uint64_t dst_cols,
                    size_t elem);

nlohmann::json segments_to_json(const std::vector<Segment>& segs);
std::vector<Segment> segments_from_json(const nlohmann::json& j);

}  // namespace mb
