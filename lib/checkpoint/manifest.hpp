// manifest.json: what a megabridge output holds. Rank 0 writes it last, so
// its presence (inside a committed directory) marks a complete conversion.
// It carries the model config, the parallel layout, the HF source description
// (for export), the file list with tensor counts and per-file checksums, and
// per-tensor checksums.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "layout/import_plan.hpp"

namespace mb {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kManifestFormat = "megabridge.manifest.v1";

struct TensorRecord {
  std::string name;
  std::string xxh3;
};

// What one rank reports about one shard file it wrote.
struct ShardResult {
  ShardCoord coord;
  std::string file;  // relative to the output directory
  uint64_t bytes = 0;
  std::string xxh3;      // of the file, under `checksum`
  std::string checksum;  // the scheme (formats/hdf5/hdf5_checksum.hpp); "" = "xxh3-64"
  uint64_t bytes_read = 0;
  std::vector<TensorRecord> tensors;
};

nlohmann::json shard_result_to_json(const ShardResult& r);
ShardResult shard_result_from_json(const nlohmann::json& j);

// The HF checkpoint an output was converted from: files, tensor names,
// dtypes and shapes, expert layouts, non-weight files. Export rebuilds the
// HF side from it; reshard copies it unchanged.
nlohmann::json source_description(const ImportPlan& plan);

// The manifest's entry for each HDF5 shard file.
nlohmann::json manifest_files(const std::vector<ShardResult>& results);

// model.mtp: the MTP layers the source config.json declared and those
// converted (fewer when the checkpoint held no mtp.* tensor), with a note.
nlohmann::json mtp_record(const ImportPlan& plan);
// Declared minus converted, from a manifest (0 for manifests without the record).
uint64_t mtp_not_converted(const nlohmann::json& manifest);

// `files`: one entry per data file, each with at least path, bytes, xxh3 and
// tensor_count (see manifest_files and torch_dist_output.hpp).
nlohmann::json build_manifest(const ImportPlan& plan, const std::string& shard_format,
                              nlohmann::json files, const nlohmann::json& source);

nlohmann::json read_manifest(const std::filesystem::path& dir);

}  // namespace mb
