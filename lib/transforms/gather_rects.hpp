// The rectangle table that the device copy engine executes: one entry per
// source rectangle of a block of destination rows (cuda_copy_engine.cpp packs
// them, block_packing.hpp), placed by one kernel (segment_gather in
// cuda/kernels.cu). The index math is here, as MB_HOST_DEVICE inline
// functions, so that the GPU kernel and gather_rects_host() on the CPU run the
// same code; tests/unit/test_gather_rects.cpp checks it against
// apply_segments() without a GPU. No fmt here: nvcc includes this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/host_device.hpp"

namespace mb {

// One rectangle copy, in units of the table's word size: `rows` x `cols` words
// from src + src_offset (rows src_stride words apart) to destination rows
// [dst_row, dst_row+rows), columns [dst_col, dst_col+cols) of a dst_cols-word
// row pitch. Like Segment (segment.hpp) with the source tensor resolved to an
// offset into one packed source buffer.
struct GatherRect {
  uint64_t src_offset = 0;
  uint64_t src_stride = 0;
  uint64_t dst_row = 0;
  uint64_t dst_col = 0;
  uint64_t rows = 0;
  uint64_t cols = 0;
};

// Word i of a rectangle (row-major over rows x cols): where it comes from in
// the packed source and where it goes in the destination block.
MB_HOST_DEVICE inline uint64_t gather_src_word(const GatherRect& r, uint64_t i) {
  const uint64_t row = i / r.cols, col = i - row * r.cols;
  return r.src_offset + row * r.src_stride + col;
}
MB_HOST_DEVICE inline uint64_t gather_dst_word(const GatherRect& r, uint64_t i, uint64_t dst_cols) {
  const uint64_t row = i / r.cols, col = i - row * r.cols;
  return (r.dst_row + row) * dst_cols + r.dst_col + col;
}

// The widest word (16, 8, 4, 2 or 1 bytes) dividing `v` (0: 16).
size_t gather_word_for(uint64_t v);

// Converts rects given in `elem`-byte elements (and the destination pitch) to
// the widest word that divides every offset, stride, column and width, so the
// kernel moves as few, as wide, words as possible. Returns the word size. The
// packed source and the destination must start on a 16-byte boundary.
size_t widen_rects(std::vector<GatherRect>& rects, uint64_t& dst_cols, size_t elem);

// What segment_gather does on the device, on the CPU, word by word with the
// same index functions (for tests: the product's CPU engine uses
// apply_segments). `word` is the one widen_rects returned.
void gather_rects_host(const std::vector<GatherRect>& rects, const void* src, void* dst,
                       uint64_t dst_cols, size_t word);

}  // namespace mb
