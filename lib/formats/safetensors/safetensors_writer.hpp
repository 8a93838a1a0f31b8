// Writes one safetensors file: the header first (all tensor sizes are known
// up front), then tensor bytes at their offsets in any order and in blocks,
// so that tensors larger than memory stream straight to disk.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/file.hpp"
#include "formats/safetensors/safetensors_header.hpp"

namespace mb {

class SafetensorsWriter {
 public:
  // Tensors are laid out in the reference writer's order (sort_like_safetensors).
  SafetensorsWriter(const std::filesystem::path& path, std::vector<SafetensorsEntry> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  size_t index_of(const std::string& name) const;
  // Writes `n` bytes at byte offset `offset` inside tensor `index`.
  void write(size_t index, uint64_t offset, const void* data, uint64_t n);
  // fsyncs and closes; the caller renames the file into place if it wrote to a temporary name.
  void finish();

 private:
  File file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
};

}  // namespace mb
