// Step 1 of the device copy engine (cuda_copy_engine.cpp), host code built
// with or without CUDA so that it is tested on every machine
// (tests/unit/test_gather_rects.cpp): the source rectangles of one block of
// destination rows are read from the RowSource into one packed buffer, one
// after the other (segment order, each start on a 16-byte boundary so that
// the gather can move wide words), with the table that places them
// (gather_rects.hpp). The reads are the CPU engine's: same rectangles, same
// bytes_read.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/copy_engine.hpp"
#include "transforms/gather_rects.hpp"
#include "transforms/segment.hpp"

namespace mb {

constexpr uint64_t kPackAlign = 16;

// Bytes a packed block of `block_rows` destination rows may need.
uint64_t packed_capacity(uint64_t block_rows, uint64_t src_row_bytes, size_t n_segments);

// Reads every piece of `segs` that falls in destination rows [b0, b1) into
// `packed` and fills `rects` (in `elem`-byte elements; destination rows
// relative to b0). Returns the packed bytes.
uint64_t pack_block(const std::vector<Segment>& segs, uint64_t b0, uint64_t b1, size_t elem,
                    RowSource& src, unsigned char* packed, std::vector<GatherRect>& rects);

}  // namespace mb
