#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/file.hpp"
#include "layout/parallel_layout.hpp"

using namespace mb;

namespace {
ModelConfig load(const std::string& name) {
  return parse_model_config(
      nlohmann::json::parse(read_text_file(std::string(MEGABRIDGE_SOURCE_DIR) + "/configs/hf/" + name)),
      name);
}

std::string error_of(const ParallelLayout& l, const ModelConfig& m) {
  try {
    validate_layout(l, m);
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST(Layout, EvenAndUnevenStages) {
  ParallelLayout l;
  l.pp = 4;
  auto s = stage_layers(l, 60);
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[1].begin, 15u);
  EXPECT_EQ(s[3].end, 60u);
  l.first_stage_layers = 3;
  l.last_stage_layers = 5;
  s = stage_layers(l, 60);
  EXPECT_EQ(s[0].size(), 3u);
  EXPECT_EQ(s[1].size(), 26u);
  EXPECT_EQ(s[2].size(), 26u);
  EXPECT_EQ(s[3].size(), 5u);
  l.last_stage_layers.reset();
  s = stage_layers(l, 60);  // 57 over the other 3 stages
  EXPECT_EQ(s[3].size(), 19u);
  l.first_stage_layers = 2;  // 58 over 3 is not even
  EXPECT_THROW(stage_layers(l, 60), std::exception);
}

TEST(Layout, ShardNamesAndCoordinates) {
  ParallelLayout l;
  l.tp = 2;
  l.pp = 2;
  l.ep = 3;
  l.etp = 2;
  auto all = all_shards(l);
  EXPECT_EQ(all.size(), 12u);
  EXPECT_EQ((ShardCoord{1, 0, 2}).file_name(), "mp_rank_01_000_002.h5");
  EXPECT_EQ((ShardCoord{1, 0, 2}).etp_rank(l), 1u);
  l.etp = 1;
  EXPECT_EQ((ShardCoord{1, 0, 2}).etp_rank(l), 0u);
}

TEST(Layout, ValidLayoutsOfReleasedModels) {
  ParallelLayout l;
  l.tp = 2;
  l.pp = 4;
  l.ep = 32;
  EXPECT_EQ(error_of(l, load("qwen3.5-397b-a17b.json")), "");  // the 128-GPU SFT recipe
  l = {};
  l.tp = 4;
  l.ep = 8;
  l.etp = 4;
  EXPECT_EQ(error_of(l, load("qwen3.5-35b-a3b.json")), "");  // ng = 2 < TP = 4
  l = {};
  l.tp = 8;
  l.pp = 8;
  EXPECT_EQ(error_of(l, load("qwen3.5-27b.json")), "");
}

TEST(Layout, DivisibilityErrorsNameTheValues) {
  ParallelLayout l;
  l.tp = 3;
  const std::string e = error_of(l, load("qwen3.5-9b.json"));
  EXPECT_NE(e.find("vocab_size = 248320 is not divisible by TP = 3"), std::string::npos) << e;
  EXPECT_NE(e.find("num_attention_heads = 16"), std::string::npos) << e;
  EXPECT_NE(e.find("linear_num_key_heads = 16"), std::string::npos) << e;
  l = {};
  l.ep = 3;
  EXPECT_NE(error_of(l, load("qwen3.5-35b-a3b.json")).find("num_experts = 256 is not divisible by EP = 3"),
            std::string::npos);
  EXPECT_NE(error_of(l, load("qwen3.5-9b.json")).find("needs an MoE model"), std::string::npos);
  l = {};
  l.pp = 7;
  EXPECT_NE(error_of(l, load("qwen3.5-9b.json")).find("32 layers do not split evenly over 7"),
            std::string::npos);
  l = {};
  l.tp = 8;  // 0.8B: 12 vision heads
  EXPECT_NE(error_of(l, load("qwen3.5-0.8b.json")).find("vision num_heads = 12"), std::string::npos);
  l = {};
  l.tp = 2;
  l.etp = 4;
  l.ep = 2;
  EXPECT_NE(error_of(l, load("qwen3.5-35b-a3b.json")).find("ETP = 4 must divide TP = 2"),
            std::string::npos);
}

TEST(Layout, JsonRoundTrip) {
  ParallelLayout l;
  l.tp = 2;
  l.pp = 3;
  l.first_stage_layers = 4;
  ParallelLayout b = layout_from_json(layout_to_json(l));
  EXPECT_EQ(b.tp, 2u);
  EXPECT_EQ(b.pp, 3u);
  EXPECT_EQ(*b.first_stage_layers, 4u);
  EXPECT_FALSE(b.last_stage_layers.has_value());
}
