#include "engine/block_packing.hpp"

#include <algorithm>

namespace mb {
namespace {
uint64_t align_up(uint64_t v) {
  return (v + kPackAlign - 1) / kPackAlign * kPackAlign;
}
}  // namespace

uint64_t packed_capacity(uint64_t block_rows, uint64_t src_row_bytes, size_t n_segments) {
  return align_up(block_rows * src_row_bytes + kPackAlign * n_segments);
}

uint64_t pack_block(const std::vector<Segment>& segs, uint64_t b0, uint64_t b1, size_t elem,
                    RowSource& src, unsigned char* packed, std::vector<GatherRect>& rects) {
  rects.clear();
  uint64_t off = 0;
  for (const auto& g : segs) {
    const uint64_t r0 = std::max(b0, g.dst_row), r1 = std::min(b1, g.dst_row + g.rows);
    if (r0 >= r1) continue;
    src.read(g.src, g.src_row + (r0 - g.dst_row), r1 - r0, g.src_col, g.cols, packed + off,
             g.cols * elem);
    // off is a multiple of 16, so of every element size.
    rects.push_back({off / elem, g.cols, r0 - b0, g.dst_col, r1 - r0, g.cols});
    off = align_up(off + (r1 - r0) * g.cols * elem);
  }
  return off;
}

}  // namespace mb
