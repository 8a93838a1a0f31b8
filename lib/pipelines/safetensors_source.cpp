#include "pipelines/safetensors_source.hpp"

#include <vector>

#include "core/error.hpp"

namespace mb {

const File& SafetensorsSource::file(uint32_t index) {
  auto it = files_.find(index);
  if (it == files_.end()) {
    const auto path = resolve_inside(c_.dir, c_.files.at(index), "shard file");
    it = files_.emplace(index, File(path, File::Mode::Read)).first;
    // The catalogue was built from this file's header; a file that shrank
    // since then would otherwise surface as a short read in the middle.
    MB_CHECK(it->second.size() == c_.file_sizes.at(index),
             "{} changed size since its header was read ({} -> {} bytes)", path.string(),
             c_.file_sizes.at(index), it->second.size());
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
  const File& f = file(t.file);
  auto* d = static_cast<unsigned char*>(dst);
  const uint64_t base = t.offset + row0 * row_bytes + col0 * es;
  const uint64_t chunk = cols * es;
  if (col0 == 0 && cols == t.cols()) {
    if (dst_stride == row_bytes) {
      f.pread_exact(d, rows * row_bytes, base, t.name);
    } else {  // contiguous in the file, strided in memory
      std::vector<iovec> iov(rows);
      for (uint64_t r = 0; r < rows; ++r) iov[r] = {d + r * dst_stride, chunk};
      f.preadv_exact(iov, base, t.name);
    }
  } else {
    for (uint64_t r = 0; r < rows; ++r) f.pread_exact(d + r * dst_stride, chunk, base + r * row_bytes, t.name);
  }
  bytes_read_ += rows * chunk;
}

}  // namespace mb
