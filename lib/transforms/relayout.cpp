#include "transforms/relayout.hpp"

#include "core/error.hpp"

namespace mb {

uint64_t total_rows(const RowMap& m) {
  uint64_t n = 0;
  for (const auto& r : m) n += r.rows;
  return n;
}

RowRun sub_run(const RowRun& run, uint64_t begin, uint64_t count) {
  MB_CHECK(begin + count <= run.rows, "internal: sub-run [{}, {}) of a {}-row run", begin,
           begin + count, run.rows);
  return {run.src, run.row0 + begin, count};
}

RowMap chunk_rows(const RowMap& full, uint64_t n_parts, uint64_t part) {
  const uint64_t total = total_rows(full);
  MB_CHECK(n_parts > 0 && part < n_parts && total % n_parts == 0,
           "internal: cannot split {} rows into {} equal parts", total, n_parts);
  const uint64_t per = total / n_parts, begin = part * per, end = begin + per;
  RowMap out;
  uint64_t pos = 0;
  for (const auto& r : full) {
    const uint64_t a = std::max(pos, begin), b = std::min(pos + r.rows, end);
    if (a < b) out.push_back(sub_run(r, a - pos, b - a));
    pos += r.rows;
    if (pos >= end) break;
  }
  return out;
}

std::vector<Segment> row_map_segments(const RowMap& m, uint64_t col0, uint64_t cols) {
  std::vector<Segment> segs;
  uint64_t dst = 0;
  for (const auto& r : m) {
    if (r.rows == 0) continue;
    segs.push_back({r.src, r.row0, col0, dst, 0, r.rows, cols});
    dst += r.rows;
  }
  return coalesce(std::move(segs));
}

RowMap qkvg_full(const RowRun& q, const RowRun& k, const RowRun& v, uint64_t heads,
                 uint64_t kv_heads, uint64_t head_dim) {
  MB_CHECK(heads % kv_heads == 0, "internal: {} heads in {} groups", heads, kv_heads);
  MB_CHECK(q.rows == 2 * heads * head_dim && k.rows == kv_heads * head_dim &&
               v.rows == kv_heads * head_dim,
           "internal: QKVG expects q {} / k {} / v {} rows, got {} / {} / {}",
           2 * heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, q.rows, k.rows, v.rows);
  const uint64_t hpg = heads / kv_heads;
  RowMap out;
  for (uint64_t c = 0; c < kv_heads; ++c) {
    for (uint64_t s = 0; s < hpg; ++s)  // query of head c·hpg+s: first half of its q_proj block
      out.push_back(sub_run(q, (c * hpg + s) * 2 * head_dim, head_dim));
    for (uint64_t s = 0; s < hpg; ++s)  // its gate: the second half
      out.push_back(sub_run(q, (c * hpg + s) * 2 * head_dim + head_dim, head_dim));
    out.push_back(sub_run(k, c * head_dim, head_dim));
    out.push_back(sub_run(v, c * head_dim, head_dim));
  }
  return out;
}

RowMap gdn_in_proj_local(const RowRun& qkv, const RowRun& z, const RowRun& b, const RowRun& a,
                         uint64_t key_dim, uint64_t value_dim, uint64_t n_parts, uint64_t part) {
  MB_CHECK(qkv.rows == 2 * key_dim + value_dim && z.rows == value_dim && b.rows == a.rows,
           "internal: GDN in_proj expects qkv {} / z {} rows, got {} / {}", 2 * key_dim + value_dim,
           value_dim, qkv.rows, z.rows);
  const RowRun Q = sub_run(qkv, 0, key_dim), K = sub_run(qkv, key_dim, key_dim),
               V = sub_run(qkv, 2 * key_dim, value_dim);
  RowMap out;
  for (const RowRun& comp : {Q, K, V, z, b, a}) {
    RowMap c = chunk_rows({comp}, n_parts, part);
    out.insert(out.end(), c.begin(), c.end());
  }
  return out;
}

RowMap gdn_conv_local(const RowRun& conv, uint64_t key_dim, uint64_t value_dim, uint64_t n_parts,
                      uint64_t part) {
  MB_CHECK(conv.rows == 2 * key_dim + value_dim, "internal: GDN conv1d expects {} channels, got {}",
           2 * key_dim + value_dim, conv.rows);
  RowMap out;
  for (const RowRun& comp : {sub_run(conv, 0, key_dim), sub_run(conv, key_dim, key_dim),
                             sub_run(conv, 2 * key_dim, value_dim)}) {
    RowMap c = chunk_rows({comp}, n_parts, part);
    out.insert(out.end(), c.begin(), c.end());
  }
  return out;
}

RowMap glu_local(const RowRun& gate, const RowRun& up, uint64_t n_parts, uint64_t part) {
  MB_CHECK(gate.rows == up.rows, "internal: GLU gate has {} rows, up has {}", gate.rows, up.rows);
  RowMap out = chunk_rows({gate}, n_parts, part);
  RowMap u = chunk_rows({up}, n_parts, part);
  out.insert(out.end(), u.begin(), u.end());
  return out;
}

RowMap vision_qkv_full(const RowRun& qkv, uint64_t heads, uint64_t head_dim) {
  const uint64_t hidden = heads * head_dim;
  MB_CHECK(qkv.rows == 3 * hidden, "internal: vision qkv expects {} rows, got {}", 3 * hidden,
           qkv.rows);
  RowMap out;
  for (uint64_t h = 0; h < heads; ++h)
    for (uint64_t s = 0; s < 3; ++s) out.push_back(sub_run(qkv, s * hidden + h * head_dim, head_dim));
  return out;
}

}  // namespace mb
