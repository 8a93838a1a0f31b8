// A column window taken out of whole rows: for a reader that must see every
// byte of the rows (to hash them in order) while its caller wants only a
// window of each. The rows are read in blocks of at most 4 MiB into a
// scratch buffer (outside the configured buffer, like the other checksum
// blocks), shown to `seen`, and the window of each row copied out.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace mb {

// `read(first, n, buf)` fills buf with the n whole rows starting at row
// `first` (0-based within the window's rows); `seen(buf, first, n)` then
// sees them. Row r's bytes [lead, lead + piece) go to dst + r * dst_stride.
template <class Read, class Seen>
void window_from_whole_rows(uint64_t rows, uint64_t row_bytes, uint64_t lead, uint64_t piece,
                            unsigned char* dst, uint64_t dst_stride,
                            std::vector<unsigned char>& scratch, Read&& read, Seen&& seen) {
  const uint64_t block = std::max<uint64_t>(1, (4u << 20) / std::max<uint64_t>(row_bytes, 1));
  for (uint64_t r = 0; r < rows; r += block) {
    const uint64_t n = std::min(block, rows - r);
    scratch.resize(n * row_bytes);
    read(r, n, scratch.data());
    seen(scratch.data(), r, n);
    for (uint64_t i = 0; i < n; ++i)
      std::memcpy(dst + (r + i) * dst_stride, scratch.data() + i * row_bytes + lead, piece);
  }
}

}  // namespace mb
