#include "engine/copy_engine.hpp"

#include <algorithm>
#include <future>
#include <system_error>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "transforms/cast_overflow.hpp"

namespace mb {

namespace {
// Smaller blocks are written inline: a helper thread would cost more than it saves.
constexpr uint64_t kAsyncWriteBytes = 1u << 20;
constexpr uint64_t kOverlapBlocks = 4;
}  // namespace

CopyEngine::CopyEngine(uint64_t buffer_bytes) : buffer_bytes_(buffer_bytes) {
  MB_CHECK(buffer_bytes_ >= 4096, "buffer size {} bytes is too small", buffer_bytes_);
}

void check_segments_cover(const CopyJob& job) {
  uint64_t area = 0;
  for (const auto& s : *job.segments) {
    MB_CHECK(s.dst_row + s.rows <= job.rows && s.dst_col + s.cols <= job.cols,
             "internal: segment outside {} ({}x{})", job.what, job.rows, job.cols);
    area += s.rows * s.cols;
  }
  MB_CHECK(area == job.rows * job.cols, "internal: segments cover {} of {} elements of {}", area,
           job.rows * job.cols, job.what);
}

CopyResult CopyEngine::run(const CopyJob& job, RowSource& src, RowSink& sink) {
  const auto& segs = *job.segments;
  check_segments_cover(job);

  const uint64_t ss = dtype_size(job.src_dtype), ds = dtype_size(job.dst_dtype);
  const bool convert = job.op != ElementOp::None || job.src_dtype != job.dst_dtype;
  const uint64_t src_row = job.cols * ss, dst_row = job.cols * ds;
  const uint64_t per_row = src_row + (convert ? dst_row : 0);
  // Two slots: while one block is being written (by a helper thread), the
  // next is read and converted into the other. Both fit in the buffer.
  const uint64_t block_rows =
      std::max<uint64_t>(1, buffer_bytes_ / 2 / std::max<uint64_t>(per_row, 1));
  uint64_t block = std::min(block_rows, std::max<uint64_t>(job.rows, 1));
  // A tensor that fits one slot would be read, then written, with nothing to
  // overlap. torch_dist stores MoE experts as one item each (2-4 MiB on
  // 35B-A3B), so most bytes are in such tensors: split them into up to
  // kOverlapBlocks blocks of at least kAsyncWriteBytes, so that each block's
  // write overlaps the next one's read.
  const uint64_t out_bytes = job.rows * dst_row;
  if (block >= job.rows && out_bytes >= 2 * kAsyncWriteBytes) {
    const uint64_t parts = std::min<uint64_t>(kOverlapBlocks, out_bytes / kAsyncWriteBytes);
    block = std::max<uint64_t>(1, (job.rows + parts - 1) / parts);
  }
  const uint64_t slot = block * per_row;
  if (staging_.size() < 2 * slot) staging_.resize(2 * slot);
  peak_ = std::max(peak_, (job.rows > block ? 2 : 1) * slot);

  Hasher hash;
  CopyResult result;
  const bool check_overflow = !allow_overflow_ && cast_can_overflow(job.src_dtype, job.dst_dtype);
  uint64_t overflow = 0, first_overflow = 0;
  double first_overflow_value = 0;
  std::future<void> writing;  // the block handed to the sink, at most one at a time
  auto wait_writing = [&] {
    if (writing.valid()) writing.get();  // rethrows the sink's error
  };
  try {
    uint64_t k = 0;
    for (uint64_t b0 = 0; b0 < job.rows; b0 += block, ++k) {
      const uint64_t b1 = std::min(job.rows, b0 + block);
      unsigned char* in = staging_.data() + (k % 2) * slot;
      unsigned char* out = convert ? in + block * src_row : in;
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
        if (check_overflow) {
          uint64_t first = 0;
          double value = 0;
          const uint64_t found =
              count_cast_overflow(job.src_dtype, in, job.dst_dtype, out, n, &first, &value);
          if (found > 0 && overflow == 0) {
            first_overflow = b0 * job.cols + first;
            first_overflow_value = value;
          }
          overflow += found;
        }
      }
      // After an overflow the rest is only counted: nothing more is written
      // (the write in flight still finishes before its slot is reused).
      if (overflow > 0) {
        wait_writing();
        continue;
      }
      // Blocks reach the sink, and the hash, in order: the previous write
      // finishes first. The hash is taken on the writing thread, beside the
      // write: the reading thread is the one that sets the pace (a 1-rank
      // reshard's profile put 88% of the samples on it, XXH3 of the output
      // about 6%), and here the hash runs while the next block is read.
      wait_writing();
      report_block(n * ds);
      auto hash_and_write = [&sink, &hash, b0, b1, out, bytes = n * ds, on = job.hash] {
        if (on) hash.update(out, bytes);
        sink.write(b0, b1 - b0, out);
      };
      bool async = n * ds >= kAsyncWriteBytes && b1 < job.rows;
      if (async) {
        try {
          writing = std::async(std::launch::async, hash_and_write);
        } catch (const std::system_error&) {
          // No thread to be had (EAGAIN under load: thread or pid limits):
          // the overlap is an optimisation, so write this block inline.
          async = false;
        }
      }
      if (!async) hash_and_write();
    }
    wait_writing();
    if (overflow > 0)
      throw Error("{}", cast_overflow_message({}, job.src_dtype, job.dst_dtype, overflow,
                                              first_overflow, first_overflow_value, true));
  } catch (...) {
    if (writing.valid()) writing.wait();  // never leave a thread writing from our buffer
    throw;
  }
  if (job.hash) result.xxh3 = hash.digest();
  return result;
}

}  // namespace mb
