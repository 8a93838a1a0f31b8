// Import output in Megatron-Core's torch_dist format: each rank writes one
// __<rank>_0.distcp with the canonical pieces of its shards (one torch.save
// archive per chunk, plus the TransformerEngine _extra_state objects); rank 0
// checks that the chunks tile every key, then writes common.pt,
// metadata.json, run_config.yaml and, last, .metadata.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/manifest.hpp"
#include "core/direct_io.hpp"
#include "core/region_checksum.hpp"
#include "engine/copy_engine.hpp"
#include "layout/import_plan.hpp"

namespace mb {

class MpiContext;

inline constexpr const char* kTorchDistIterDir = "iter_0000000";

// One item a rank wrote: a tensor chunk (offsets/sizes in the key's global
// shape) or a ShardedObject (object = true).
struct DistItem {
  std::string key;
  bool object = false;
  std::vector<uint64_t> offsets, sizes;
  Shape global_shape;
  DType dtype = DType::BF16;
  uint64_t offset = 0, length = 0;  // the item's archive in the file
  // Tensors: the chunk's bytes (data/0 of the archive) and their XXH3-64,
  // a data region of the file's region checksum.
  uint64_t data_offset = 0, data_bytes = 0;
  std::string xxh3;
};

struct DistFileResult {
  std::string file;  // relative to the output directory, e.g. iter_0000000/__3_0.distcp
  uint64_t bytes = 0;
  std::string xxh3;      // of the file, under `checksum`
  std::string checksum;  // the scheme; "" (records of older versions) = whole-file "xxh3-64"
  uint64_t bytes_read = 0;
  std::vector<DistItem> items;
};

// Writes this rank's .distcp file (none if it has no canonical tensor).
DistFileResult write_distcp_file(const ImportPlan& plan, int rank, const std::filesystem::path& out_dir,
                                 CopyEngine& engine, RowSource& source, const IoConfig& io,
                                 const std::function<void()>& on_tensor = {});

// Rank 0, after every rank wrote its file: validates and writes the Megatron
// files. Returns the manifest's file list entries.
void finish_torch_dist(const ImportPlan& plan, const std::vector<DistFileResult>& results,
                       const std::filesystem::path& out_dir);

// The data.pkl of the common.pt that import writes: the dict a Megatron-Bridge
// import saves, pickled like torch.save without the memo (tests compare it
// with CPython's and torch's bytes).
std::string common_pt_pickle();

nlohmann::json dist_file_result_to_json(const DistFileResult& r);
// The tensor items' data regions (for region_file_checksum) and their
// checksums by region name.
std::vector<DataRegion> dist_data_regions(const DistFileResult& r);
// Whether `path` (a --resume candidate) still has the size and checksum its
// record says, under the record's scheme (every byte is read).
bool dist_file_intact(const std::filesystem::path& path, const DistFileResult& r);
DistFileResult dist_file_result_from_json(const nlohmann::json& j);

}  // namespace mb
