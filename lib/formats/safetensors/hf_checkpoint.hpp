// A HuggingFace safetensors checkpoint directory: config.json, the index and
// the header of every shard, catalogued once (on rank 0) so that every rank can
// read exactly the bytes it needs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/shape.hpp"

namespace mb {

struct HfTensor {
  std::string name;
  DType dtype = DType::BF16;
  Shape shape;
  uint32_t file = 0;      // index into HfCatalog::files
  uint64_t offset = 0;    // absolute byte offset of the data in the file
  uint64_t nbytes = 0;

  uint64_t rows() const { return rows_2d(shape); }
  uint64_t cols() const { return cols_2d(shape); }
  uint64_t row_bytes() const { return cols() * dtype_size(dtype); }
};

struct HfCatalog {
  std::filesystem::path dir;
  std::vector<std::string> files;  // shard names relative to dir, in index order
  std::vector<uint64_t> file_sizes;
  std::vector<HfTensor> tensors;   // sorted by name
  bool has_index = false;
  std::optional<uint64_t> declared_total_size;
  // The known HF side files the directory carries (is_hf_side_file), each a
  // regular file inside dir, relative to dir. Nothing else is copied.
  std::vector<std::string> extra_files;

  const HfTensor* find(const std::string& name) const;
  uint32_t id(const std::string& name) const;  // throws if absent
  uint64_t total_bytes() const;
};

// The known HF side files, by name: the tokenizer and its config
// (tokenizer.json, tokenizer.model, tokenizer_config.json), vocab.json,
// merges.txt, special_tokens_map.json, added_tokens.json,
// generation_config.json, chat_template.json / .jinja, and the
// preprocessor, processor and video preprocessor configs.
bool is_hf_side_file(const std::string& name);

// Whether `dir`/`name` may be copied as a side file: a regular file inside
// `dir`, or a symlink to one, or (the HF hub cache layout,
// snapshots/<rev>/name -> ../../blobs/<hash>) to a blob of the same repo.
// Otherwise `why` says what it is.
bool side_file_is_safe(const std::filesystem::path& dir, const std::string& name, std::string& why);

// Reads the index (or the single model.safetensors) and every shard header.
// Errors name the file and tensor: a weight_map entry pointing outside `dir`,
// a tensor listed in the index but absent from its file, a tensor present in a
// file but not listed, duplicate tensors, malformed headers.
HfCatalog read_hf_catalog(const std::filesystem::path& dir);

nlohmann::json catalog_to_json(const HfCatalog& c);
HfCatalog catalog_from_json(const nlohmann::json& j);

}  // namespace mb
