// HF config.json -> the Megatron-Core / Megatron-Bridge model configuration
// (spec qwen35-mapping.md §8), written next to the shards as YAML.
#pragma once

#include <cstdint>
#include <string>

#include "layout/parallel_layout.hpp"
#include "model/qwen35_config.hpp"

namespace YAML {
class Emitter;
}

namespace mb {

// The layout under Megatron-Core's argument names, as keys of the open map:
// megatron_config.yaml's `parallelism` and run_config.yaml's `model` say the same.
void emit_parallel_sizes(YAML::Emitter& y, const ParallelLayout& l);

// The provider fields Megatron-Bridge derives for Qwen3.5 VL, plus the
// parallel layout the shards were written for. `mtp_not_converted`: MTP
// layers the source config.json declared that the checkpoint did not hold (the
// model `m` is then the one without them; the YAML says so in a comment).
std::string megatron_config_yaml(const ModelConfig& m, const ParallelLayout& l,
                                 uint64_t mtp_not_converted = 0);

}  // namespace mb
