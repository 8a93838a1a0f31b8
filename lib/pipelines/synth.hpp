// `megabridge synth`: a synthetic HF checkpoint with random values and the real
// tensor shapes of a released Qwen3.5 size, laid out like the official files
// (model.safetensors-0000i-of-0000N.safetensors, index, config.json). It is
// the benchmark input: full-width tensors, a chosen number of layers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "model/qwen35_hf_schema.hpp"

namespace mb {

struct SynthOptions {
  nlohmann::json hf_config;                // a released config.json (configs/hf/*.json)
  std::optional<uint64_t> num_layers;      // keep only the first N decoder layers
  std::optional<uint64_t> vision_depth;    // keep only the first N vision blocks
  ExpertLayouts experts;
  uint64_t max_shard_bytes = 5ull << 30;   // the official checkpoints use about 5 GB
  uint64_t seed = 1;
  uint64_t buffer_bytes = 64ull << 20;
  std::filesystem::path out;               // must be new or empty; written staged, like every output
  std::filesystem::path config_path;       // where hf_config came from: the output must not hold it
};

struct SynthResult {
  uint64_t tensors = 0;
  uint64_t bytes = 0;
  uint64_t files = 0;
};

SynthResult synthesize_checkpoint(const SynthOptions& o);

// The config.json after the layer/depth overrides.
nlohmann::json synth_config(const SynthOptions& o);

}  // namespace mb
