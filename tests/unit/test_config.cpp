#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/file.hpp"
#include "model/megatron_config.hpp"
#include "model/qwen35_config.hpp"

using namespace mb;
using nlohmann::json;

namespace {
json load(const std::string& name) {
  return json::parse(read_text_file(std::string(MEGABRIDGE_SOURCE_DIR) + "/configs/hf/" + name));
}

void expect_error(const json& j, const std::string& needle) {
  try {
    parse_model_config(j, "cfg.json");
    FAIL() << "expected error with '" << needle << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Config, Parses35BA3B) {
  const ModelConfig m = parse_model_config(load("qwen3.5-35b-a3b.json"), "35b");
  EXPECT_TRUE(m.is_moe());
  EXPECT_EQ(m.text.hidden, 2048u);
  EXPECT_EQ(m.text.num_layers, 40u);
  EXPECT_EQ(m.text.experts, 256u);
  EXPECT_EQ(m.text.moe_ffn, 512u);
  EXPECT_EQ(m.text.key_dim(), 2048u);
  EXPECT_EQ(m.text.value_dim(), 4096u);
  EXPECT_EQ(m.text.in_proj_rows(), 12352u);  // spec §9 table
  EXPECT_EQ(m.text.qkv_rows(), 9216u);
  EXPECT_EQ(m.text.mtp_layers, 1u);
  EXPECT_FALSE(m.tied);
  EXPECT_TRUE(m.is_attention(3));
  EXPECT_FALSE(m.is_attention(4));
  EXPECT_EQ(m.vision.depth, 27u);
  EXPECT_EQ(m.vision.merger_hidden(), 4608u);
  EXPECT_EQ(m.text.mrope_section, (std::vector<int64_t>{11, 11, 10}));
}

TEST(Config, ParsesEveryReleasedSize) {
  for (const char* n : {"qwen3.5-0.8b.json", "qwen3.5-2b.json", "qwen3.5-4b.json", "qwen3.5-9b.json",
                        "qwen3.5-27b.json", "qwen3.5-35b-a3b.json", "qwen3.5-122b-a10b.json",
                        "qwen3.5-397b-a17b.json"}) {
    const ModelConfig m = parse_model_config(load(n), n);
    EXPECT_EQ(m.text.layer_types.size(), m.text.num_layers) << n;
    EXPECT_FALSE(megatron_config_yaml(m, {}).empty());
  }
  EXPECT_EQ(parse_model_config(load("qwen3.5-27b.json"), "").text.in_proj_rows(), 16480u);
  EXPECT_TRUE(parse_model_config(load("qwen3.5-0.8b.json"), "").tied);
}

TEST(Config, LayerTypesFallBackToInterval) {
  json j = load("qwen3.5-9b.json");
  j["text_config"].erase("layer_types");
  j["text_config"]["full_attention_interval"] = 2;
  const ModelConfig m = parse_model_config(j, "x");
  EXPECT_FALSE(m.text.layer_types_explicit);
  EXPECT_FALSE(m.is_attention(0));
  EXPECT_TRUE(m.is_attention(1));
  EXPECT_TRUE(m.is_attention(3));
}

TEST(Config, TopLevelTieWins) {
  json j = load("qwen3.5-27b.json");
  j["text_config"]["tie_word_embeddings"] = true;  // the wrong inherited default seen in 9B/27B
  j["tie_word_embeddings"] = false;
  EXPECT_FALSE(parse_model_config(j, "x").tied);
  j.erase("tie_word_embeddings");
  EXPECT_TRUE(parse_model_config(j, "x").tied);
}

TEST(Config, Errors) {
  json j = load("qwen3.5-9b.json");
  j["architectures"] = {"LlamaForCausalLM"};
  expect_error(j, "unsupported architecture 'LlamaForCausalLM'");
  j = load("qwen3.5-9b.json");
  j["text_config"].erase("hidden_size");
  expect_error(j, "hidden_size");
  j = load("qwen3.5-9b.json");
  j["text_config"]["num_hidden_layers"] = -3;
  expect_error(j, "num_hidden_layers must be a positive integer, got -3");
  j = load("qwen3.5-9b.json");
  j["text_config"]["layer_types"][5] = "sliding_attention";
  expect_error(j, "layer_types[5] is 'sliding_attention'");
  j = load("qwen3.5-9b.json");
  j["text_config"]["layer_types"].erase(0);
  expect_error(j, "has 31 entries but num_hidden_layers is 32");
  j = load("qwen3.5-35b-a3b.json");
  j["text_config"].erase("num_experts");
  expect_error(j, "num_experts");
  j = load("qwen3.5-9b.json");
  j["vision_config"]["deepstack_visual_indexes"] = {8, 16};
  expect_error(j, "deepstack");
}

TEST(Config, MegatronYamlCarriesTheProviderFields) {
  const ModelConfig m = parse_model_config(load("qwen3.5-35b-a3b.json"), "x");
  ParallelLayout l;
  l.tp = 2;
  l.ep = 8;
  const std::string y = megatron_config_yaml(m, l);
  for (const char* needle : {"num_moe_experts: 256", "moe_ffn_hidden_size: 512", "num_query_groups: 2",
                             "kv_channels: 256", "layernorm_zero_centered_gamma: true",
                             "attention_output_gate: true", "mtp_num_layers: 1",
                             "expert_model_parallel_size: 8", "make_vocab_size_divisible_by: 128",
                             "share_embeddings_and_output_weights: false"})
    EXPECT_NE(y.find(needle), std::string::npos) << needle << "\n" << y;
}
