// Reads rectangles of HF tensors straight from the safetensors files with
// pread: whole-row ranges in one call, column windows row by row. With
// direct I/O (direct_io.hpp) the reads go through one ReadWindow, which
// rounds each load to the alignment and loads ahead for small reads going
// forward; column windows narrower than kDirectPieceBytes go through the
// page cache in whole row spans instead (InputFile::pread_rows), so that
// ranks of one node do not each read the others' columns from storage.
// Without direct I/O nothing outside the requested bytes is asked for.
#pragma once

#include <map>
#include <memory>

#include "core/direct_io.hpp"
#include "engine/copy_engine.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"

namespace mb {

class SafetensorsSource : public RowSource {
 public:
  explicit SafetensorsSource(const HfCatalog& catalog, IoConfig io = {IoMode::Buffered, 0})
      : c_(catalog), io_(io) {}

  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }
  // Narrow column windows under direct I/O (read through the page cache).
  uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                    uint64_t max_bytes) override;

 private:
  InputFile& file(uint32_t index);

  const HfCatalog& c_;
  IoConfig io_;
  ReadWindow window_;  // allocated when the first file opens for direct reads
  std::map<uint32_t, InputFile> files_;
  uint64_t bytes_read_ = 0;
};

}  // namespace mb
