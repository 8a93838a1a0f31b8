// The planner on in-memory catalogues of every released geometry: tensor
// placement, accounting, and the errors for inconsistent checkpoints.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/file.hpp"
#include "layout/import_plan.hpp"
#include "test_util.hpp"

using namespace mb;
using nlohmann::json;

namespace {
ImportPlan plan(const ModelConfig& m, ParallelLayout l, ExpertLayouts e = {}, int ranks = 1) {
  return build_import_plan(m, catalog_from_schema(m, e, !m.tied), PlanRequest{l, std::nullopt, true, ranks});
}

const LocalTensor* find(const ShardPlan& s, const std::string& name) {
  for (const auto& t : s.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const ShardPlan& shard(const ImportPlan& p, uint64_t tp, uint64_t pp, uint64_t ep) {
  for (const auto& s : p.shards)
    if (s.coord == ShardCoord{tp, pp, ep}) return s;
  throw std::runtime_error("no shard");
}
}  // namespace

TEST(Plan, ShapesFollowTheSpecFor397BWorkedExample) {
  // spec §9.1: 397B, T=2, P=4, EP=32 (here with 64 experts so epr = 2).
  const ModelConfig m = small("qwen3.5-397b-a17b.json", 8, 64);
  ParallelLayout l;
  l.tp = 2;
  l.pp = 2;
  l.ep = 32;
  const ImportPlan p = plan(m, l);
  const ShardPlan& s = shard(p, 1, 0, 5);
  auto shape = [&](const std::string& n) { return find(s, n)->shape; };
  EXPECT_EQ(shape("language_model.decoder.layers.0.self_attention.in_proj.weight"), (Shape{10304, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.self_attention.conv1d.weight"), (Shape{6144, 1, 4}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.self_attention.A_log"), (Shape{32}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.self_attention.out_proj.weight"), (Shape{4096, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.3.self_attention.linear_qkv.weight"), (Shape{8704, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.3.self_attention.linear_proj.weight"), (Shape{4096, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.mlp.experts.linear_fc1.weight1"), (Shape{2048, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.mlp.experts.linear_fc2.weight1"), (Shape{4096, 1024}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.mlp.shared_experts.linear_fc1.weight"), (Shape{1024, 4096}));
  EXPECT_EQ(shape("language_model.decoder.layers.0.mlp.router.weight"), (Shape{64, 4096}));
  EXPECT_EQ(shape("language_model.embedding.word_embeddings.weight"), (Shape{124160, 4096}));
  // EP rank 5 of 32 with 2 experts each holds global experts 10 and 11.
  EXPECT_EQ(find(s, "language_model.decoder.layers.0.mlp.experts.linear_fc1.weight1")->global_name,
            "language_model.decoder.layers.0.mlp.experts.linear_fc1.weight11");
  // Global layer numbering on the second stage.
  const ShardPlan& s2 = shard(p, 0, 1, 0);
  EXPECT_EQ(find(s2, "language_model.decoder.layers.0.self_attention.A_log")->global_name,
            "language_model.decoder.layers.4.self_attention.A_log");
}

TEST(Plan, PlacementOfEmbeddingOutputMtpAndVision) {
  const ModelConfig tied = small("qwen3.5-0.8b.json", 8);
  ParallelLayout l;
  l.pp = 2;
  const ImportPlan p = plan(tied, l);
  const ShardPlan& first = shard(p, 0, 0, 0);
  const ShardPlan& last = shard(p, 0, 1, 0);
  EXPECT_NE(find(first, "language_model.embedding.word_embeddings.weight"), nullptr);
  EXPECT_NE(find(first, "vision_model.patch_embed.proj.weight"), nullptr);
  EXPECT_EQ(find(first, "language_model.decoder.final_layernorm.weight"), nullptr);
  EXPECT_EQ(find(last, "vision_model.patch_embed.proj.weight"), nullptr);
  // MTP needs the embedding on the last stage; tied + PP>1 gives it its own output layer.
  const LocalTensor* emb = find(last, "language_model.embedding.word_embeddings.weight");
  const LocalTensor* out = find(last, "language_model.output_layer.weight");
  ASSERT_NE(emb, nullptr);
  ASSERT_NE(out, nullptr);
  EXPECT_FALSE(emb->canonical);
  EXPECT_FALSE(out->canonical);
  EXPECT_NE(find(last, "language_model.mtp.layers.0.eh_proj.weight"), nullptr);
  EXPECT_NE(find(last, "language_model.mtp.layers.0.mtp_model_layer.self_attention.linear_qkv.weight"),
            nullptr);
  // PP = 1 tied: one embedding, no output layer (Megatron skips its allocation).
  const ImportPlan p1 = plan(tied, {});
  EXPECT_EQ(find(p1.shards[0], "language_model.output_layer.weight"), nullptr);
  int embeddings = 0;
  for (const auto& t : p1.shards[0].tensors) embeddings += t.name.find("word_embeddings") != std::string::npos;
  EXPECT_EQ(embeddings, 1);
}

TEST(Plan, CountsPerShardForEveryReleasedGeometry) {
  struct Case {
    const char* cfg;
    uint64_t tp, pp, ep, etp;
  };
  for (const Case& c : {Case{"qwen3.5-0.8b.json", 2, 2, 1, 1}, Case{"qwen3.5-27b.json", 4, 2, 1, 1},
                        Case{"qwen3.5-35b-a3b.json", 2, 2, 4, 1}, Case{"qwen3.5-122b-a10b.json", 4, 1, 2, 4}}) {
    const ModelConfig m = small(c.cfg, 8, std::string(c.cfg).find("-a") != std::string::npos ? 16 : 0);
    ParallelLayout l;
    l.tp = c.tp;
    l.pp = c.pp;
    l.ep = c.ep;
    l.etp = c.etp;
    const ImportPlan p = plan(m, l, {}, 3);
    EXPECT_EQ(p.shards.size(), c.tp * c.pp * c.ep) << c.cfg;
    std::set<int> ranks;
    for (const auto& s : p.shards) {
      ranks.insert(s.rank);
      std::set<std::string> names;
      for (const auto& t : s.tensors) {
        EXPECT_TRUE(names.insert(t.name).second) << "duplicate " << t.name << " in " << c.cfg;
        EXPECT_EQ(t.nbytes(), t.source_bytes() * dtype_size(t.dtype) / dtype_size(t.source_dtype));
      }
    }
    EXPECT_EQ(ranks.size(), 3u) << c.cfg;  // fewer ranks than shards: all ranks busy
  }
}

TEST(Plan, FusedAndPerExpertProduceTheSameMegatronTensors) {
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 8);
  ParallelLayout l;
  l.tp = 2;
  l.ep = 2;
  l.etp = 2;
  const ImportPlan fused = plan(m, l, {ExpertLayout::Fused, ExpertLayout::PerExpert});
  const ImportPlan per = plan(m, l, {ExpertLayout::PerExpert, ExpertLayout::Fused});
  for (size_t i = 0; i < fused.shards.size(); ++i) {
    std::map<std::string, Shape> a, b;
    for (const auto& t : fused.shards[i].tensors) a[t.name] = t.shape;
    for (const auto& t : per.shards[i].tensors) b[t.name] = t.shape;
    EXPECT_EQ(a, b);
  }
}

TEST(Plan, StrictAccountingErrors) {
  const ModelConfig m = small("qwen3.5-9b.json", 4);
  ParallelLayout l;
  HfCatalog c = catalog_from_schema(m, {}, true);
  // An extra tensor nothing consumes.
  HfTensor extra{"model.language_model.layers.0.mlp.extra.weight", DType::BF16, {4}, 0, 0, 8};
  c.tensors.push_back(extra);
  std::sort(c.tensors.begin(), c.tensors.end(), [](auto& a, auto& b) { return a.name < b.name; });
  try {
    build_import_plan(m, c, {l, std::nullopt, true, 1});
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.extra.weight"), std::string::npos) << e.what();
  }
  const ImportPlan relaxed = build_import_plan(m, c, {l, std::nullopt, false, 1});
  EXPECT_EQ(relaxed.unconsumed, std::vector<std::string>{extra.name});

  // A missing tensor names itself.
  HfCatalog missing = catalog_from_schema(m, {}, true);
  missing.tensors.erase(std::find_if(missing.tensors.begin(), missing.tensors.end(),
                                     [](auto& t) { return t.name.find("layers.2.linear_attn.A_log") != std::string::npos; }));
  try {
    build_import_plan(m, missing, {l, std::nullopt, true, 1});
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("model.language_model.layers.2.linear_attn.A_log"), std::string::npos)
        << e.what();
  }

  // A shape that disagrees with config.json.
  HfCatalog bad = catalog_from_schema(m, {}, true);
  for (auto& t : bad.tensors)
    if (t.name == "model.language_model.layers.3.self_attn.k_proj.weight") t.shape = {512, 4096};
  try {
    build_import_plan(m, bad, {l, std::nullopt, true, 1});
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("k_proj.weight' in"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[512, 4096]"), std::string::npos) << e.what();
  }

  // lm_head present although config.json says tied.
  ModelConfig tied = m;
  tied.tied = true;
  EXPECT_THROW(build_import_plan(tied, catalog_from_schema(m, {}, true), {l, std::nullopt, true, 1}),
               std::exception);
}

TEST(Plan, CastChangesStoredDtypeOnly) {
  const ModelConfig m = small("qwen3.5-0.8b.json", 4);
  const ImportPlan p = build_import_plan(m, catalog_from_schema(m, {}, false),
                                         {ParallelLayout{}, DType::F32, true, 1});
  for (const auto& t : p.shards[0].tensors) EXPECT_EQ(t.dtype, DType::F32) << t.name;
  const ImportPlan keep = plan(m, {});
  for (const auto& t : keep.shards[0].tensors)
    if (t.name.find("A_log") != std::string::npos || t.name.find("out_norm") != std::string::npos)
      EXPECT_EQ(t.dtype, DType::F32) << t.name;  // Qwen3.5 stores them in fp32: kept
    else
      EXPECT_EQ(t.dtype, DType::BF16) << t.name;
}

TEST(Plan, SerialisesForTheBroadcast) {
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 8);
  ParallelLayout l;
  l.ep = 2;
  const ImportPlan p = plan(m, l, {}, 2);
  const ImportPlan b = plan_from_json(json::from_msgpack(json::to_msgpack(plan_to_json(p))));
  ASSERT_EQ(b.shards.size(), p.shards.size());
  for (size_t i = 0; i < p.shards.size(); ++i) {
    EXPECT_EQ(b.shards[i].rank, p.shards[i].rank);
    ASSERT_EQ(b.shards[i].tensors.size(), p.shards[i].tensors.size());
    for (size_t k = 0; k < p.shards[i].tensors.size(); ++k) {
      EXPECT_EQ(b.shards[i].tensors[k].segments, p.shards[i].tensors[k].segments);
      EXPECT_EQ(b.shards[i].tensors[k].global_name, p.shards[i].tensors[k].global_name);
    }
  }
}
