// Checkpoints whose config.json declares an MTP layer they do not hold (what
// transformers' save_pretrained writes), partial MTP layers, and the Qwen3.6
// layout (fused MTP experts, BF16 A_log): the planning decisions.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "layout/import_plan.hpp"
#include "model/megatron_config.hpp"
#include "test_util.hpp"

using namespace mb;

namespace {
HfCatalog without(HfCatalog c, const std::function<bool(const std::string&)>& drop) {
  c.tensors.erase(std::remove_if(c.tensors.begin(), c.tensors.end(),
                                 [&](const HfTensor& t) { return drop(t.name); }),
                  c.tensors.end());
  return c;
}
bool is_mtp(const std::string& n) {
  return n.rfind("mtp.", 0) == 0;
}

ParallelLayout pp2() {
  ParallelLayout l;
  l.pp = 2;
  return l;
}

std::vector<std::string> names(const ShardPlan& s) {
  std::vector<std::string> out;
  for (const auto& t : s.tensors) out.push_back(t.name);
  return out;
}
bool has(const std::vector<std::string>& v, const std::string& n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}
}  // namespace

TEST(MtpAbsent, NoMtpTensorAtAllIsPlannedWithoutMtp) {
  for (const char* geometry : {"qwen3.5-0.8b.json", "qwen3.5-35b-a3b.json"}) {
    const bool moe = std::string(geometry).find("a3b") != std::string::npos;
    const ModelConfig m = small(geometry, 4, moe ? 8 : 0);
    ASSERT_EQ(m.text.mtp_layers, 1u) << geometry;
    const HfCatalog c = without(catalog_from_schema(m, {}, !m.tied), is_mtp);
    const ImportPlan p = build_import_plan(m, c, {pp2(), std::nullopt, true, 1});
    EXPECT_EQ(p.mtp_not_converted, 1u);
    EXPECT_EQ(p.model.text.mtp_layers, 0u);
    // The config that travels with the output (manifest, hf/config.json, export).
    EXPECT_EQ(p.config_json["text_config"]["mtp_num_hidden_layers"], 0);
    // Megatron-Core with mtp_num_layers 0 builds no MTP block, and so no copy
    // of the embedding on the last stage (GPTModel builds one there only for
    // MTP or a tied output layer).
    for (const auto& s : p.shards) {
      for (const auto& n : names(s)) EXPECT_EQ(n.find(".mtp."), std::string::npos) << n;
      if (s.coord.pp == 1) {
        EXPECT_FALSE(has(names(s), "language_model.embedding.word_embeddings.weight")) << geometry;
        EXPECT_TRUE(has(names(s), "language_model.output_layer.weight"))
            << geometry;  // its own copy
      }
    }
    // Survives the broadcast.
    EXPECT_EQ(plan_from_json(plan_to_json(p)).mtp_not_converted, 1u);
    EXPECT_EQ(plan_from_json(plan_to_json(p)).model.text.mtp_layers, 0u);
  }
}

TEST(MtpAbsent, TheSameCheckpointWithMtpKeepsIt) {
  const ModelConfig m = small("qwen3.5-0.8b.json", 4);
  const ImportPlan p =
      build_import_plan(m, catalog_from_schema(m, {}, !m.tied), {pp2(), std::nullopt, true, 1});
  EXPECT_EQ(p.mtp_not_converted, 0u);
  EXPECT_EQ(p.model.text.mtp_layers, 1u);
  EXPECT_EQ(p.config_json["text_config"]["mtp_num_hidden_layers"], 1);
  bool embedding_on_last = false, mtp = false;
  for (const auto& s : p.shards)
    for (const auto& n : names(s)) {
      if (s.coord.pp == 1 && n == "language_model.embedding.word_embeddings.weight")
        embedding_on_last = true;
      if (n.rfind("language_model.mtp.layers.0.", 0) == 0) mtp = true;
    }
  EXPECT_TRUE(embedding_on_last);
  EXPECT_TRUE(mtp);
}

TEST(MtpAbsent, PartialMtpIsRefusedNamingTheMissingTensors) {
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 8);
  const HfCatalog full = catalog_from_schema(m, {}, true);
  const HfCatalog partial = without(full, [](const std::string& n) {
    return n == "mtp.fc.weight" || n == "mtp.layers.0.mlp.experts.3.up_proj.weight";
  });
  try {
    build_import_plan(m, partial, {ParallelLayout{}, std::nullopt, true, 1});
    FAIL() << "a partial MTP layer was accepted";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("MTP layer is incomplete"), std::string::npos) << w;
    EXPECT_NE(w.find("mtp.fc.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("mtp.layers.0.mlp.experts.3.up_proj.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("2 of the "), std::string::npos) << w;
  }
  // --not-strict does not make a partial layer acceptable either.
  EXPECT_THROW(build_import_plan(m, partial, {ParallelLayout{}, std::nullopt, false, 1}), Error);
  // Missing MTP tensors together with a missing main-layer tensor: the general error, naming both.
  const HfCatalog both = without(full, [](const std::string& n) {
    return n == "mtp.fc.weight" || n == "model.language_model.layers.1.linear_attn.A_log";
  });
  try {
    build_import_plan(m, both, {ParallelLayout{}, std::nullopt, true, 1});
    FAIL();
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("mtp.fc.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("layers.1.linear_attn.A_log"), std::string::npos) << w;
  }
}

TEST(MtpAbsent, MtpTensorsWithoutDeclaredMtpAreUnconsumed) {
  const ModelConfig with = small("qwen3.5-0.8b.json", 4);
  ModelConfig no = with;
  no.text.mtp_layers = 0;
  try {
    build_import_plan(no, catalog_from_schema(with, {}, !with.tied),
                      {ParallelLayout{}, std::nullopt, true, 1});
    FAIL() << "mtp.* tensors of an undeclared layer were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mtp.fc.weight"), std::string::npos) << e.what();
  }
}

TEST(MtpAbsent, MegatronYamlSaysZeroLayersAndWhy) {
  const ModelConfig m = without_mtp(small("qwen3.5-0.8b.json", 4));
  const std::string y = megatron_config_yaml(m, {}, 1);
  EXPECT_NE(y.find("mtp_num_layers: 0"), std::string::npos) << y;
  EXPECT_NE(y.find("# config.json declared 1 MTP layer(s)"), std::string::npos) << y;
  EXPECT_EQ(y.find("mtp_loss_scaling_factor"), std::string::npos) << y;
  // A config that never declared MTP keeps Megatron's default (None).
  nlohmann::json j = load_json("qwen3.5-0.8b.json");
  j["text_config"].erase("mtp_num_hidden_layers");
  const std::string none = megatron_config_yaml(parse_model_config(j, "x"), {});
  EXPECT_NE(none.find("mtp_num_layers: ~"), std::string::npos) << none;
}

TEST(Qwen36Layout, FusedMtpExpertsAndBf16ALog) {
  // Qwen3.6-35B-A3B: fused experts in the decoder layers and in the MTP layer,
  // A_log stored in BF16 (Qwen3.5 stores it F32).
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 8);
  ExpertLayouts fused;
  fused.main = ExpertLayout::Fused;
  fused.mtp = ExpertLayout::Fused;
  HfCatalog c = catalog_from_schema(m, fused, true);
  for (auto& t : c.tensors)
    if (t.name.size() > 6 && t.name.compare(t.name.size() - 6, 6, ".A_log") == 0) {
      t.dtype = DType::BF16;
      t.nbytes = numel(t.shape) * 2;
    }
  const ExpertLayouts detected = detect_expert_layouts(c);
  EXPECT_EQ(detected.mtp, ExpertLayout::Fused);
  EXPECT_EQ(detected.main, ExpertLayout::Fused);
  ParallelLayout l;
  l.ep = 2;
  l.pp = 2;
  const ImportPlan p = build_import_plan(m, c, {l, std::nullopt, true, 1});
  EXPECT_EQ(p.experts.mtp, ExpertLayout::Fused);
  bool saw_a_log = false, saw_mtp_expert = false;
  for (const auto& s : p.shards)
    for (const auto& t : s.tensors) {
      if (t.name.find("self_attention.A_log") != std::string::npos) {
        saw_a_log = true;
        EXPECT_EQ(t.dtype, DType::BF16) << t.global_name;  // kept as stored, no cast
        EXPECT_EQ(t.source_dtype, DType::BF16) << t.global_name;
      }
      if (t.global_name ==
          "language_model.mtp.layers.0.mtp_model_layer.mlp.experts.linear_fc1.weight7") {
        saw_mtp_expert = true;
        EXPECT_EQ(s.coord.ep, 1u);  // experts 4..7 on EP rank 1
        // ETP 1: the whole [2I, H] slab of expert 7, gate rows then up rows, in order.
        const uint64_t I = m.text.moe_ffn;
        uint64_t next = 7 * 2 * I, rows = 0;
        for (const auto& g : t.segments) {
          EXPECT_EQ(c.tensors.at(g.src).name, "mtp.layers.0.mlp.experts.gate_up_proj");
          EXPECT_EQ(g.src_row, next);
          next += g.rows;
          rows += g.rows;
        }
        EXPECT_EQ(rows, 2 * I);
      }
    }
  EXPECT_TRUE(saw_a_log);
  EXPECT_TRUE(saw_mtp_expert);
}
