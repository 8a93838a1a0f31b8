#include "model/bridge_run_config.hpp"

#include <yaml-cpp/yaml.h>

#include "model/megatron_config.hpp"

namespace mb {

std::string bridge_run_config_yaml(const ModelConfig& m, const ParallelLayout& l,
                                   uint64_t mtp_not_converted) {
  YAML::Emitter y;
  y << YAML::Comment(
           "Written by megabridge: the parts of Megatron-Bridge's run configuration that its\n"
           "checkpoint loader reads (not a complete ConfigContainer); the model configuration\n"
           "derived from config.json is under `megabridge`")
    << YAML::Newline;
  y << YAML::BeginMap;
  y << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "provider" << YAML::Value
    << (std::string("megatron.bridge.models.qwen_vl.qwen35_vl_provider.") +
        (m.is_moe() ? "Qwen35VLMoEModelProvider" : "Qwen35VLModelProvider"));
  emit_parallel_sizes(y, l);
  y << YAML::Key << "bf16" << YAML::Value << (m.dtype == DType::BF16);
  y << YAML::Key << "fp16" << YAML::Value << (m.dtype == DType::F16);
  y << YAML::EndMap;
  // As Megatron-Bridge's save_megatron_model (import_ckpt) writes them: weights only.
  y << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "ckpt_format" << YAML::Value << "torch_dist";
  y << YAML::Key << "save_optim" << YAML::Value << false;
  y << YAML::Key << "save_rng" << YAML::Value << false;
  y << YAML::Key << "fully_parallel_save" << YAML::Value << true;
  y << YAML::Key << "dist_ckpt_optim_fully_reshardable" << YAML::Value << true;
  y << YAML::EndMap;
  y << YAML::Key << "megabridge" << YAML::Value << YAML::Load(megatron_config_yaml(m, l, mtp_not_converted));
  y << YAML::EndMap;
  return std::string(y.c_str()) + "\n";
}

}  // namespace mb
