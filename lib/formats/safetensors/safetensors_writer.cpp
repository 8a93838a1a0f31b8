#include "formats/safetensors/safetensors_writer.hpp"

#include "core/error.hpp"

namespace mb {

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::vector<SafetensorsEntry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : file_(path, File::Mode::Write), entries_(std::move(entries)) {
  sort_like_safetensors(entries_);
  const std::string header = build_safetensors_header(entries_, metadata);
  data_start_ = header.size();
  file_.pwrite_exact(header.data(), header.size(), 0);
  const uint64_t data_bytes = entries_.empty() ? 0 : entries_.back().end;
  // Size the file now so that tensors can be written in any order.
  file_.truncate(data_start_ + data_bytes);
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
}

size_t SafetensorsWriter::index_of(const std::string& name) const {
  auto it = index_.find(name);
  MB_CHECK(it != index_.end(), "internal: {} has no tensor '{}'", file_.path().string(), name);
  return it->second;
}

void SafetensorsWriter::write(size_t index, uint64_t offset, const void* data, uint64_t n) {
  const SafetensorsEntry& e = entries_.at(index);
  MB_CHECK(offset + n <= e.end - e.begin, "internal: write past the end of '{}' in {}", e.name,
           file_.path().string());
  file_.pwrite_exact(data, n, data_start_ + e.begin + offset);
}

void SafetensorsWriter::finish() {
  file_.fsync();
  file_.close();
}

}  // namespace mb
