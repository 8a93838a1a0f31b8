#include "model/qwen35_dist_keys.hpp"

#include <regex>

#include "core/error.hpp"

namespace mb {
namespace {

bool starts_with(const std::string& s, std::string_view p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, std::string_view p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// A leading axis that the checkpoint adds: the expert axis of grouped
// experts, the layer axis of the (homogeneous, stacked) vision decoder.
struct Prepended {
  bool present = false;
  uint64_t index = 0, extent = 0;
};

struct KeyInfo {
  std::string base;  // key without component suffix
  Prepended axis;
};

// Routed experts: the parameter `…mlp.experts.linear_fc1.weight{e}` of
// TEGroupedMLP is checkpointed as `…mlp.experts.experts.linear_fc1.weight`
// with a leading expert axis. "experts" twice: the MoE layer hands the
// prefix `mlp.experts.` to TEGroupedMLP.sharded_state_dict, which adds
// `experts.linear_fc1.` on its own (megatron/core/transformer/moe/experts.py,
// megatron-core 0.19.2: replace_prefix_for_sharding(sub_sd, f'{name}.',
// f'{prefix}experts.{name}.'); SequentialMLP maps local_experts.{i}. to the
// same `{prefix}experts.`).
const std::regex kExpert(R"(^(.*\.mlp\.experts\.)(linear_fc[12]\.weight)(\d+)$)");
const std::regex kVisionLayer(R"(^vision_model\.decoder\.layers\.(\d+)\.(.*)$)");

KeyInfo key_info(const LocalTensor& t, const ModelConfig& m) {
  KeyInfo k;
  std::string name = dist_key_base(t.global_name);
  std::smatch g;
  if (std::regex_match(name, g, kExpert)) {
    k.base = g[1].str() + "experts." + g[2].str();
    k.axis = {true, std::stoull(g[3]), m.text.experts};
  } else if (std::regex_match(name, g, kVisionLayer)) {
    k.base = "vision_model.decoder.layers." + g[2].str();
    k.axis = {true, std::stoull(g[1]), m.vision.depth};
  } else {
    k.base = name;
  }
  return k;
}

DistPiece make_piece(const KeyInfo& k, std::string suffix, Shape global, std::vector<uint64_t> offsets,
                     Shape sizes, uint64_t row0, uint64_t rows) {
  if (k.axis.present) {
    global.insert(global.begin(), k.axis.extent);
    offsets.insert(offsets.begin(), k.axis.index);
    sizes.insert(sizes.begin(), 1);
  }
  return {k.base + suffix, std::move(global), std::move(offsets), std::move(sizes), row0, rows};
}

// The TE modules of the Qwen3.5 layer specs: linears (TELayerNormColumnParallelLinear,
// TEColumn/RowParallelLinear, grouped linears) and TENorm. Their `_extra_state`
// is a ShardedObject. The embedding, output layer, router, GDN's own
// parameters (A_log, dt_bias, conv1d) and the vision patch/pos embeddings are
// not TE modules.
const std::vector<std::string_view> kTeModules = {
    "self_attention.in_proj",    "self_attention.out_proj",     "self_attention.out_norm",
    "self_attention.linear_qkv", "self_attention.linear_proj",  "self_attention.q_layernorm",
    "self_attention.k_layernorm", "mlp.linear_fc1",             "mlp.linear_fc2",
    "pre_mlp_layernorm",         "mlp.shared_experts.linear_fc1", "mlp.shared_experts.linear_fc2",
    "mlp.experts.experts.linear_fc1", "mlp.experts.experts.linear_fc2", "final_layernorm",
    "eh_proj",                   "enorm",                       "hnorm",
    "merger.linear_fc1",         "merger.linear_fc2",           "merger.patch_norm",
};

}  // namespace

std::string dist_key_base(const std::string& global_name) {
  // Megatron-Core renames the GPT MTP layer for checkpoints (MultiTokenPredictionLayer.sharded_state_dict).
  static const std::string from = ".mtp_model_layer.", to = ".transformer_layer.";
  std::string s = global_name;
  const auto p = s.find(from);
  if (p != std::string::npos) s.replace(p, from.size(), to);
  return s;
}

std::vector<DistPiece> dist_pieces(const LocalTensor& t, const ModelConfig& m,
                                   const ParallelLayout& l, const ShardCoord& coord) {
  const KeyInfo k = key_info(t, m);
  const uint64_t N = t.expert ? l.etp : l.tp;
  const uint64_t part = t.expert ? coord.etp_rank(l) : coord.tp;
  const Shape& s = t.shape;
  const uint64_t cols = cols_2d(s);
  std::vector<DistPiece> out;
  auto zeros = [&] { return std::vector<uint64_t>(s.size(), 0); };

  switch (t.xform) {
    case Xform::GdnInProj: {  // in_proj.weight.{query,key,value,z,beta,alpha}
      const TextConfig& x = m.text;
      const uint64_t comp[6] = {x.key_dim(), x.key_dim(), x.value_dim(), x.value_dim(),
                                x.lin_value_heads, x.lin_value_heads};
      const char* names[6] = {".query", ".key", ".value", ".z", ".beta", ".alpha"};
      uint64_t row = 0;
      for (int c = 0; c < 6; ++c) {
        const uint64_t n = comp[c] / N;
        out.push_back(make_piece(k, names[c], {comp[c], cols}, {part * n, 0}, {n, cols}, row, n));
        row += n;
      }
      return out;
    }
    case Xform::GdnConv: {  // conv1d.weight.{query,key,value}, [C, 1, Kc]
      const uint64_t comp[3] = {m.text.key_dim(), m.text.key_dim(), m.text.value_dim()};
      const char* names[3] = {".query", ".key", ".value"};
      uint64_t row = 0;
      for (int c = 0; c < 3; ++c) {
        const uint64_t n = comp[c] / N;
        out.push_back(make_piece(k, names[c], {comp[c], s[1], s[2]}, {part * n, 0, 0}, {n, s[1], s[2]},
                                 row, n * s[1]));
        row += n * s[1];
      }
      return out;
    }
    case Xform::Glu: {  // [gate_full; up_full]: the rank's halves at fragments t and N + t of 2N
      const uint64_t h = s[0] / 2, full = h * N;
      out.push_back(make_piece(k, "", {2 * full, cols}, {part * h, 0}, {h, cols}, 0, h));
      out.push_back(make_piece(k, "", {2 * full, cols}, {full + part * h, 0}, {h, cols}, h, h));
      return out;
    }
    default:
      break;
  }
  std::vector<uint64_t> offsets = zeros();
  if (t.split == Split::Column) offsets[0] = part * s[0];
  if (t.split == Split::Row) offsets.back() = part * s.back();
  out.push_back(make_piece(k, "", t.global_shape, offsets, s, 0, t.rows()));
  return out;
}

std::vector<std::string> dist_extra_states(const LocalTensor& t, const ModelConfig& m,
                                           const ParallelLayout& l, const ShardCoord& coord) {
  if (!t.canonical) return {};
  // Emitted once per module: by the main parameter, on TP (ETP) rank 0.
  if ((t.expert ? coord.etp_rank(l) : coord.tp) != 0) return {};
  const KeyInfo k = key_info(t, m);
  std::string module;
  for (std::string_view param : {".layer_norm_weight", ".layer_norm_bias", ".weight", ".bias"}) {
    if (ends_with(k.base, param)) {
      if (param != ".weight") return {};  // the module's weight carries it
      module = k.base.substr(0, k.base.size() - param.size());
      break;
    }
  }
  if (module.empty()) return {};
  bool te = false;
  for (auto suffix : kTeModules)
    if (ends_with(module, "." + std::string(suffix)) || module == suffix) te = true;
  // decoder.final_layernorm and the MTP final_layernorm both end in "final_layernorm".
  if (!te) return {};
  if (starts_with(module, "language_model.embedding") || ends_with(module, "output_layer")) return {};
  const std::string shard = k.axis.present ? fmt::format("shard_{}_{}", k.axis.index, k.axis.extent)
                                           : std::string("shard_0_1");
  return {module + "._extra_state/" + shard};
}

}  // namespace mb
