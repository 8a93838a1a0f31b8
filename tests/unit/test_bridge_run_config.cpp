// iter_*/run_config.yaml holds what Megatron-Bridge 0.6.2's checkpoint loader indexes
// (checkpointing.py _load_checkpoint_from_path): model.{tensor,pipeline}_model_parallel_size
// on every load, checkpoint.{save_rng,save_optim,fully_parallel_save} when resuming. The
// real loader's view of it is checked in tests/interop/oracle.py.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "model/bridge_run_config.hpp"
#include "test_util.hpp"

using namespace mb;

TEST(BridgeRunConfig, WhatTheLoaderReads) {
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 16);
  ParallelLayout l;
  l.tp = 2;
  l.pp = 4;
  l.ep = 8;
  l.first_stage_layers = 1;
  const YAML::Node y = YAML::Load(bridge_run_config_yaml(m, l));
  EXPECT_EQ(y["model"]["tensor_model_parallel_size"].as<int>(), 2);
  EXPECT_EQ(y["model"]["pipeline_model_parallel_size"].as<int>(), 4);
  EXPECT_EQ(y["model"]["expert_model_parallel_size"].as<int>(), 8);
  EXPECT_EQ(y["model"]["num_layers_in_first_pipeline_stage"].as<int>(), 1);
  EXPECT_EQ(y["model"]["provider"].as<std::string>(),
            "megatron.bridge.models.qwen_vl.qwen35_vl_provider.Qwen35VLMoEModelProvider");
  EXPECT_FALSE(y["checkpoint"]["save_rng"].as<bool>());
  EXPECT_FALSE(y["checkpoint"]["save_optim"].as<bool>());
  EXPECT_TRUE(y["checkpoint"]["fully_parallel_save"].as<bool>());
  EXPECT_EQ(y["checkpoint"]["ckpt_format"].as<std::string>(), "torch_dist");
  // megabridge's own model configuration, nested; no `_target_` (not a ConfigContainer)
  EXPECT_EQ(y["megabridge"]["language_model"]["num_moe_experts"].as<int>(), 16);
  EXPECT_FALSE(y["_target_"]);
  EXPECT_FALSE(y["model"]["_target_"]);
}
