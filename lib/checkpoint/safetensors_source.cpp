#include "checkpoint/safetensors_source.hpp"

#include <algorithm>
#include <vector>

#include "core/error.hpp"

namespace mb {

InputFile& SafetensorsSource::file(uint32_t index) {
  auto it = files_.find(index);
  if (it == files_.end()) {
    const auto path = resolve_inside(c_.dir, c_.files.at(index), "shard file");
    it = files_.emplace(index, InputFile(path, io_.mode)).first;
    if (it->second.direct() && window_.capacity() == 0) window_ = ReadWindow(io_.chunk_bytes);
    // The catalogue was built from this file's header; a file that shrank
    // since then would otherwise surface as a short read in the middle.
    MB_CHECK(it->second.file().size() == c_.file_sizes.at(index),
             "{} changed size since its header was read ({} -> {} bytes)", path.string(),
             c_.file_sizes.at(index), it->second.file().size());
  }
  return it->second;
}

void SafetensorsSource::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                             uint64_t cols, void* dst, uint64_t dst_stride) {
  const HfTensor& t = c_.tensors.at(id);
  const uint64_t es = dtype_size(t.dtype), row_bytes = t.row_bytes();
  MB_CHECK(row0 + rows <= t.rows() && col0 + cols <= t.cols(),
           "internal: read of rows [{}, {}) cols [{}, {}) outside {} {}", row0, row0 + rows, col0,
           col0 + cols, t.name, shape_str(t.shape));
  InputFile& in = file(t.file);
  auto* d = static_cast<unsigned char*>(dst);
  const uint64_t base = t.offset + row0 * row_bytes + col0 * es;
  const uint64_t chunk = cols * es;
  if (col0 == 0 && cols == t.cols() && (dst_stride == row_bytes || in.direct())) {
    // Contiguous in the file (strided in memory or not): what the queue
    // holds, then the rest as usual.
    pread_rows_queued(queue_, in, d, dst_stride, rows, row_bytes, base, window_, t.name);
  } else if (col0 == 0 && cols == t.cols()) {
    // Contiguous in the file, strided in memory, through the page cache.
    std::vector<iovec> iov(rows);
    for (uint64_t r = 0; r < rows; ++r) iov[r] = {d + r * dst_stride, chunk};
    in.file().preadv_exact(iov, base, t.name);
  } else {  // a column window: direct pieces, or narrow ones through the page cache
    in.pread_rows(d, dst_stride, rows, chunk, base, row_bytes, window_, t.name);
  }
  bytes_read_ += rows * chunk;
}

uint64_t SafetensorsSource::prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                                     uint64_t cols, uint64_t max_bytes) {
  const HfTensor& t = c_.tensors.at(id);
  if (io_.mode == IoMode::Buffered || row0 + rows > t.rows() || col0 + cols > t.cols()) return 0;
  const uint64_t es = dtype_size(t.dtype), row_bytes = t.row_bytes();
  InputFile& in = file(t.file);
  if (col0 == 0 && cols == t.cols() && in.direct()) {
    const uint64_t begin = t.offset + row0 * row_bytes;
    return queue_.want(in, begin, begin + std::min(rows * row_bytes, max_bytes));
  }
  return in.will_read_rows(rows, cols * es, t.offset + row0 * row_bytes + col0 * es, row_bytes,
                           max_bytes);
}

}  // namespace mb
