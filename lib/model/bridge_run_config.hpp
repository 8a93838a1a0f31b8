// iter_*/run_config.yaml of a torch_dist checkpoint, as Megatron-Bridge's checkpoint
// loader reads it (megatron/bridge/training/checkpointing.py, 0.6.2:
// _load_checkpoint_from_path reads run_config["model"]["tensor_model_parallel_size"] and
// ["pipeline_model_parallel_size"] on every load, run_config["checkpoint"]["save_rng"],
// ["save_optim"] and ["fully_parallel_save"] when resuming).
#pragma once

#include <cstdint>
#include <string>

#include "layout/parallel_layout.hpp"
#include "model/qwen35_config.hpp"

namespace mb {

// The `model` (parallel sizes, params dtype, provider) and `checkpoint` sections of
// Megatron-Bridge's ConfigContainer that its loader reads, with megabridge's full model
// configuration (megatron_config.yaml) under `megabridge`. No `_target_` keys: this is not
// a complete ConfigContainer and must not be instantiated as one.
// `mtp_not_converted` as for megatron_config_yaml.
std::string bridge_run_config_yaml(const ModelConfig& m, const ParallelLayout& l,
                                   uint64_t mtp_not_converted = 0);

}  // namespace mb
