// A manifest's model config against the tensors it records. The config is
// what export writes as config.json and what every plan is computed from;
// the recorded shapes are what the shards hold (validate_shard_files checks
// the shards against them). An edited hidden_size, head count, layer count
// or expert count must not produce a config.json that lies about its
// tensors: the mismatch is an error that names the config field.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "formats/safetensors/hf_checkpoint.hpp"
#include "model/qwen35_config.hpp"
#include "model/qwen35_hf_schema.hpp"

namespace mb {

// "" when the config implies exactly the recorded tensors (names and
// shapes); else the first problem, naming the field where one is to blame:
// "model.hf_config says hidden_size = 2048, but the recorded tensors have
// 1024 (model.language_model.embed_tokens.weight is [512, 1024])".
std::string model_config_mismatch(const ModelConfig& m, const HfCatalog& recorded,
                                  const ExpertLayouts& experts);

// Before commit: every file a manifest lists (`files`: [{"path", "bytes"}])
// is a regular file in `staging` with exactly the bytes recorded, so that
// nothing is committed that a rank did not finish writing. Throws naming the
// file.
void check_files_complete(const std::filesystem::path& staging, const nlohmann::json& files);

}  // namespace mb
