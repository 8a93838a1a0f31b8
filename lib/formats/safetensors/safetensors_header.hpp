// The safetensors container: an 8-byte little-endian header length, a JSON
// header, then the tensor bytes back to back (format as specified by
// huggingface/safetensors; see docs/formats.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.hpp"
#include "core/shape.hpp"

namespace mb {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;  // relative to the start of the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;  // N, the JSON length
  uint64_t data_start = 0;    // 8 + N: file offset of the data section
  std::vector<SafetensorsEntry> entries;  // in data_offsets order
  std::map<std::string, std::string> metadata;
};

// The reference implementation refuses headers above this size.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Parses and validates a header. `file_size` is the size of the whole file and
// `file` names it in errors. Enforces what the reference reader enforces:
// known dtypes, byte counts that match the shapes, and data offsets that tile
// the data section exactly (no overlap, no gap, nothing out of bounds).
SafetensorsHeader parse_safetensors_header(std::string_view json_text, uint64_t file_size,
                                           const std::string& file);
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

// Builds a header for tensors that will be written in the given order, padded
// with spaces to a multiple of 8 bytes as the reference writer does. Returns
// the full prefix (length + JSON) and fills each entry's begin/end.
std::string build_safetensors_header(std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata);

// Orders tensors as the reference writer does: larger dtype alignment first,
// then by name, so that every tensor is naturally aligned.
void sort_like_safetensors(std::vector<SafetensorsEntry>& entries);

}  // namespace mb
