#include "pipelines/copy_engine.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/hash.hpp"

namespace mb {

CopyEngine::CopyEngine(uint64_t buffer_bytes) : buffer_bytes_(buffer_bytes) {
  MB_CHECK(buffer_bytes_ >= 4096, "buffer size {} bytes is too small", buffer_bytes_);
}

CopyResult CopyEngine::run(const CopyJob& job, RowSource& src, RowSink& sink) {
  const auto& segs = *job.segments;
  // Every destination element must come from exactly one segment; the plan
  // guarantees it, and a cheap area check here keeps a bug from ever writing
  // uninitialised bytes.
  uint64_t area = 0;
  for (const auto& s : segs) {
    MB_CHECK(s.dst_row + s.rows <= job.rows && s.dst_col + s.cols <= job.cols,
             "internal: segment outside {} ({}x{})", job.what, job.rows, job.cols);
    area += s.rows * s.cols;
  }
  MB_CHECK(area == job.rows * job.cols, "internal: segments cover {} of {} elements of {}", area,
           job.rows * job.cols, job.what);

  const uint64_t ss = dtype_size(job.src_dtype), ds = dtype_size(job.dst_dtype);
  const bool convert = job.op != ElementOp::None || job.src_dtype != job.dst_dtype;
  const uint64_t src_row = job.cols * ss, dst_row = job.cols * ds;
  const uint64_t per_row = src_row + (convert ? dst_row : 0);
  const uint64_t block_rows = std::max<uint64_t>(1, buffer_bytes_ / std::max<uint64_t>(per_row, 1));
  const uint64_t block = std::min(block_rows, std::max<uint64_t>(job.rows, 1));
  const uint64_t need = block * per_row;
  if (staging_.size() < need) staging_.resize(need);
  peak_ = std::max(peak_, need);
  unsigned char* in = staging_.data();
  unsigned char* out = convert ? staging_.data() + block * src_row : in;

  Hasher hash;
  CopyResult result;
  for (uint64_t b0 = 0; b0 < job.rows; b0 += block) {
    const uint64_t b1 = std::min(job.rows, b0 + block);
    for (const auto& s : segs) {
      const uint64_t r0 = std::max(b0, s.dst_row), r1 = std::min(b1, s.dst_row + s.rows);
      if (r0 >= r1) continue;
      src.read(s.src, s.src_row + (r0 - s.dst_row), r1 - r0, s.src_col, s.cols,
               in + (r0 - b0) * src_row + s.dst_col * ss, src_row);
    }
    const uint64_t n = (b1 - b0) * job.cols;
    if (convert) {
      if (job.op != ElementOp::None && job.src_dtype == job.dst_dtype)
        result.not_invertible += count_not_invertible(job.op, job.src_dtype, in, n);
      transform_elements(job.op, job.src_dtype, in, job.dst_dtype, out, n);
    }
    hash.update(out, n * ds);
    sink.write(b0, b1 - b0, out);
    report_block(n * ds);
  }
  result.xxh3 = hash.digest();
  return result;
}

}  // namespace mb
