#include "transforms/gather_rects.hpp"

#include <cstring>

#include "core/error.hpp"

namespace mb {

size_t gather_word_for(uint64_t v) {
  for (size_t w : {16, 8, 4, 2})
    if (v % w == 0) return w;
  return 1;
}

size_t widen_rects(std::vector<GatherRect>& rects, uint64_t& dst_cols, size_t elem) {
  uint64_t all = dst_cols * elem;
  for (const auto& r : rects)
    all |= r.src_offset * elem | r.src_stride * elem | r.dst_col * elem | r.cols * elem;
  const size_t w = gather_word_for(all);
  for (auto& r : rects) {
    r.src_offset = r.src_offset * elem / w;
    r.src_stride = r.src_stride * elem / w;
    r.dst_col = r.dst_col * elem / w;
    r.cols = r.cols * elem / w;
  }
  dst_cols = dst_cols * elem / w;
  return w;
}

void gather_rects_host(const std::vector<GatherRect>& rects, const void* src, void* dst,
                       uint64_t dst_cols, size_t word) {
  MB_CHECK(word == 1 || word == 2 || word == 4 || word == 8 || word == 16,
           "internal: gather with a {}-byte word", word);
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  for (const GatherRect& r : rects)
    for (uint64_t i = 0; i < r.rows * r.cols; ++i)
      std::memcpy(d + gather_dst_word(r, i, dst_cols) * word, s + gather_src_word(r, i) * word,
                  word);
}

}  // namespace mb
