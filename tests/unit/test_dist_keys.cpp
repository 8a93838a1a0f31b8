// The torch_dist key manifest: layout-independent keys and global shapes,
// canonical pieces that tile every key exactly once at any layout, and one
// _extra_state object per TE module.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/nd_box.hpp"
#include "layout/import_plan.hpp"
#include "model/qwen35_dist_keys.hpp"
#include "test_util.hpp"

using namespace mb;

namespace {
struct Manifest {
  std::map<std::string, Shape> shapes;
  std::map<std::string, std::vector<Box>> boxes;
  std::multiset<std::string> objects;
};

Manifest manifest_of(const ModelConfig& m, const ParallelLayout& l) {
  const HfCatalog c = catalog_from_schema(m, {}, !m.tied);
  Manifest out;
  for (const ShardCoord& coord : all_shards(l)) {
    for (const LocalTensor& t : plan_shard_tensors(m, c, {}, l, coord, std::nullopt)) {
      uint64_t rows = 0;
      for (const DistPiece& p : dist_pieces(t, m, l, coord)) {
        EXPECT_EQ(numel(p.sizes), p.rows * t.cols()) << p.key;
        rows += p.rows;
        if (!t.canonical) continue;
        auto [it, fresh] = out.shapes.emplace(p.key, p.global_shape);
        EXPECT_EQ(it->second, p.global_shape) << p.key;
        out.boxes[p.key].push_back({p.offsets, p.sizes});
      }
      EXPECT_EQ(rows, t.rows()) << t.name;
      for (const auto& o : dist_extra_states(t, m, l, coord)) out.objects.insert(o);
    }
  }
  return out;
}

void expect_tiles(const Manifest& mf) {
  for (const auto& [key, boxes] : mf.boxes) {
    const Shape& g = mf.shapes.at(key);
    uint64_t vol = 0;
    for (size_t i = 0; i < boxes.size(); ++i) {
      for (size_t d = 0; d < g.size(); ++d)
        EXPECT_LE(boxes[i].offsets[d] + boxes[i].sizes[d], g[d]) << key;
      vol += boxes[i].volume();
      for (size_t k = i + 1; k < boxes.size(); ++k)
        EXPECT_FALSE(intersect(boxes[i], boxes[k]).has_value()) << key << " overlaps";
    }
    EXPECT_EQ(vol, numel(g)) << key;
  }
}
}  // namespace

TEST(DistKeys, SpecKeysAndShapes) {
  const ModelConfig m = small("qwen3.5-35b-a3b.json", 4, 16);
  ParallelLayout l;
  const Manifest mf = manifest_of(m, l);
  auto shape = [&](const std::string& k) {
    auto it = mf.shapes.find(k);
    return it == mf.shapes.end() ? Shape{} : it->second;
  };
  const std::string L0 = "language_model.decoder.layers.0.", L3 = "language_model.decoder.layers.3.";
  EXPECT_EQ(shape(L0 + "self_attention.in_proj.weight.query"), (Shape{2048, 2048}));
  EXPECT_EQ(shape(L0 + "self_attention.in_proj.weight.value"), (Shape{4096, 2048}));
  EXPECT_EQ(shape(L0 + "self_attention.in_proj.weight.beta"), (Shape{32, 2048}));
  EXPECT_EQ(shape(L0 + "self_attention.conv1d.weight.key"), (Shape{2048, 1, 4}));
  EXPECT_EQ(shape(L0 + "self_attention.A_log"), (Shape{32}));
  EXPECT_EQ(shape(L3 + "self_attention.linear_qkv.weight"), (Shape{9216, 2048}));
  EXPECT_EQ(shape(L0 + "mlp.experts.experts.linear_fc1.weight"), (Shape{16, 1024, 2048}));
  EXPECT_EQ(shape(L0 + "mlp.experts.experts.linear_fc2.weight"), (Shape{16, 2048, 512}));
  // TEGroupedMLP's own `experts.` under the MoE layer's `experts.` (megatron-core 0.19.2).
  EXPECT_EQ(mf.shapes.count(L0 + "mlp.experts.linear_fc1.weight"), 0u);
  const std::string M = "language_model.mtp.layers.0.transformer_layer.";
  EXPECT_EQ(shape(M + "mlp.experts.experts.linear_fc2.weight"), (Shape{16, 2048, 512}));
  EXPECT_TRUE(mf.objects.count(M + "mlp.experts.experts.linear_fc2._extra_state/shard_15_16"));
  EXPECT_EQ(shape(L0 + "mlp.shared_experts.linear_fc1.weight"), (Shape{1024, 2048}));
  EXPECT_EQ(shape("language_model.mtp.layers.0.transformer_layer.self_attention.linear_qkv.weight"),
            (Shape{9216, 2048}));
  EXPECT_EQ(shape("language_model.mtp.layers.0.eh_proj.weight"), (Shape{2048, 4096}));
  EXPECT_EQ(shape("vision_model.decoder.layers.self_attention.linear_qkv.weight"), (Shape{2, 3456, 1152}));
  EXPECT_EQ(shape("language_model.embedding.word_embeddings.weight"), (Shape{248320, 2048}));
  EXPECT_TRUE(mf.objects.count(L0 + "mlp.experts.experts.linear_fc1._extra_state/shard_5_16"));
  EXPECT_TRUE(mf.objects.count(L0 + "self_attention.in_proj._extra_state/shard_0_1"));
  EXPECT_TRUE(mf.objects.count("vision_model.decoder.layers.self_attention.linear_qkv._extra_state/shard_1_2"));
  EXPECT_TRUE(mf.objects.count("language_model.mtp.layers.0.transformer_layer.mlp.shared_experts.linear_fc1._extra_state/shard_0_1"));
  EXPECT_FALSE(mf.objects.count("language_model.embedding.word_embeddings._extra_state/shard_0_1"));
  for (const auto& k : mf.shapes) EXPECT_EQ(k.first.find("mtp_model_layer"), std::string::npos);
}

TEST(DistKeys, LayoutIndependentAndTiledExactly) {
  for (const char* cfg : {"qwen3.5-35b-a3b.json", "qwen3.5-0.8b.json"}) {
    const bool moe = std::string(cfg).find("a3b") != std::string::npos;
    const ModelConfig m = small(cfg, 4, moe ? 8 : 0);
    ParallelLayout base;
    const Manifest ref = manifest_of(m, base);
    expect_tiles(ref);
    std::vector<ParallelLayout> layouts;
    ParallelLayout l;
    l.tp = 2;
    l.pp = 2;
    l.ep = moe ? 2 : 1;
    layouts.push_back(l);
    l = {};
    l.tp = 4;  // kv heads 2 < TP 4 for 35B; 0.8B: 2 kv heads as well
    l.etp = moe ? 4 : 1;
    l.ep = moe ? 4 : 1;
    layouts.push_back(l);
    for (const auto& x : layouts) {
      const Manifest mf = manifest_of(m, x);
      expect_tiles(mf);
      EXPECT_EQ(mf.shapes, ref.shapes) << cfg << " " << x.describe();
      EXPECT_EQ(mf.objects, ref.objects) << cfg << " " << x.describe();
    }
    for (const auto& o : ref.objects) EXPECT_EQ(ref.objects.count(o), 1u) << o;
  }
}
