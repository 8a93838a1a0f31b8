#include "transforms/segment.hpp"

#include <cstring>

namespace mb {

std::vector<Segment> coalesce(std::vector<Segment> segs) {
  std::vector<Segment> out;
  for (const auto& s : segs) {
    if (!out.empty()) {
      Segment& p = out.back();
      // Next rows of the same column window, both in source and destination.
      if (p.src == s.src && p.src_col == s.src_col && p.dst_col == s.dst_col && p.cols == s.cols &&
          p.src_row + p.rows == s.src_row && p.dst_row + p.rows == s.dst_row) {
        p.rows += s.rows;
        continue;
      }
    }
    out.push_back(s);
  }
  return out;
}

std::vector<Segment> merge_column_neighbours(const std::vector<Segment>& segs) {
  std::vector<Segment> out;
  for (const auto& s : segs) {
    bool merged = false;
    for (auto& p : out) {
      if (p.src == s.src && p.src_row == s.src_row && p.dst_row == s.dst_row && p.rows == s.rows &&
          p.src_col + p.cols == s.src_col && p.dst_col + p.cols == s.dst_col) {
        p.cols += s.cols;
        merged = true;
        break;
      }
    }
    if (!merged) out.push_back(s);
  }
  return out;
}

Segment invert(const Segment& s, uint32_t dst_as_src_id) {
  Segment r;
  r.src = dst_as_src_id;
  r.src_row = s.dst_row;
  r.src_col = s.dst_col;
  r.dst_row = s.src_row;
  r.dst_col = s.src_col;
  r.rows = s.rows;
  r.cols = s.cols;
  return r;
}

void apply_segments(const std::vector<Segment>& segs, const std::vector<const void*>& srcs,
                    const std::vector<uint64_t>& src_cols, void* dst, uint64_t dst_cols,
                    size_t elem) {
  auto* d = static_cast<unsigned char*>(dst);
  for (const auto& s : segs) {
    const auto* base = static_cast<const unsigned char*>(srcs.at(s.src));
    const uint64_t sc = src_cols.at(s.src);
    for (uint64_t r = 0; r < s.rows; ++r)
      std::memcpy(d + ((s.dst_row + r) * dst_cols + s.dst_col) * elem,
                  base + ((s.src_row + r) * sc + s.src_col) * elem, s.cols * elem);
  }
}

nlohmann::json segments_to_json(const std::vector<Segment>& segs) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& s : segs)
    j.push_back({s.src, s.src_row, s.src_col, s.dst_row, s.dst_col, s.rows, s.cols});
  return j;
}

std::vector<Segment> segments_from_json(const nlohmann::json& j) {
  std::vector<Segment> out;
  out.reserve(j.size());
  for (const auto& a : j)
    out.push_back({a.at(0).get<uint32_t>(), a.at(1).get<uint64_t>(), a.at(2).get<uint64_t>(),
                   a.at(3).get<uint64_t>(), a.at(4).get<uint64_t>(), a.at(5).get<uint64_t>(),
                   a.at(6).get<uint64_t>()});
  return out;
}

}  // namespace mb
