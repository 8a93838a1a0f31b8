// Reads rectangles of HF tensors straight from the safetensors files with
// pread: whole-row ranges in one call, column windows row by row. Nothing
// outside the requested bytes is read.
#pragma once

#include <map>
#include <memory>

#include "core/file.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "pipelines/copy_engine.hpp"

namespace mb {

class SafetensorsSource : public RowSource {
 public:
  explicit SafetensorsSource(const HfCatalog& catalog) : c_(catalog) {}

  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }

 private:
  const File& file(uint32_t index);

  const HfCatalog& c_;
  std::map<uint32_t, File> files_;
  uint64_t bytes_read_ = 0;
};

}  // namespace mb
