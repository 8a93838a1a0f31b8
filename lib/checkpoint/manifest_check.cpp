#include "checkpoint/manifest_check.hpp"

#include <fmt/format.h>

#include <regex>
#include <set>

#include "core/error.hpp"

namespace mb {
namespace {

// One config field checked against one dimension of one recorded tensor.
struct FieldCheck {
  std::string field;   // e.g. "hidden_size" or "vision_config.hidden_size"
  uint64_t claimed;    // what the config says
  std::string tensor;  // the recorded tensor that shows the real value
  size_t dim;          // which dimension of it
  uint64_t divisor;  // recorded dim / divisor is the real value (e.g. 2·head_dim for q_proj rows)
};

std::string field_problem(const FieldCheck& c, const HfCatalog& recorded) {
  const HfTensor* t = recorded.find(c.tensor);
  if (t == nullptr || c.dim >= t->shape.size() || c.divisor == 0) return {};
  const uint64_t have = t->shape[c.dim] / c.divisor;
  if (have == c.claimed && t->shape[c.dim] % c.divisor == 0) return {};
  return fmt::format("model.hf_config says {} = {}, but the recorded tensors have {} ({} is {})",
                     c.field, c.claimed, have, c.tensor, shape_str(t->shape));
}

// The number of blocks named `<prefix><N>.` among the recorded tensors.
uint64_t count_blocks(const HfCatalog& recorded, const std::string& prefix) {
  std::set<uint64_t> seen;
  for (const auto& t : recorded.tensors) {
    if (t.name.rfind(prefix, 0) != 0) continue;
    const size_t end = t.name.find('.', prefix.size());
    if (end == std::string::npos) continue;
    try {
      seen.insert(std::stoull(t.name.substr(prefix.size(), end - prefix.size())));
    } catch (...) {
    }
  }
  return seen.empty() ? 0 : *seen.rbegin() + 1;
}

}  // namespace

std::string model_config_mismatch(const ModelConfig& m, const HfCatalog& recorded,
                                  const ExpertLayouts& experts) {
  const TextConfig& t = m.text;
  const VisionConfig& v = m.vision;
  // Layer and block counts first: every per-layer check below depends on them.
  const uint64_t layers = count_blocks(recorded, "model.language_model.layers.");
  if (layers != t.num_layers)
    return fmt::format(
        "model.hf_config says num_hidden_layers = {}, but the recorded tensors have {} "
        "decoder layers (model.language_model.layers.0 to {})",
        t.num_layers, layers, layers == 0 ? 0 : layers - 1);
  const uint64_t blocks = count_blocks(recorded, "model.visual.blocks.");
  if (blocks != v.depth)
    return fmt::format(
        "model.hf_config says vision_config.depth = {}, but the recorded tensors have "
        "{} vision blocks",
        v.depth, blocks);

  std::vector<FieldCheck> checks = {
      {"vocab_size", t.vocab, "model.language_model.embed_tokens.weight", 0, 1},
      {"hidden_size", t.hidden, "model.language_model.embed_tokens.weight", 1, 1},
      {"vision_config.hidden_size", v.hidden, "model.visual.patch_embed.proj.bias", 0, 1},
      {"vision_config.intermediate_size", v.ffn, "model.visual.blocks.0.mlp.linear_fc1.weight", 0,
       1},
      {"vision_config.out_hidden_size", v.out_hidden, "model.visual.merger.linear_fc2.weight", 0,
       1},
  };
  // The first full-attention layer and the first GDN layer show the head geometry.
  for (uint64_t i = 0; i < t.num_layers && i < t.layer_types.size(); ++i)
    if (m.is_attention(i)) {
      const std::string p = fmt::format("model.language_model.layers.{}.self_attn.", i);
      checks.push_back({"head_dim", t.head_dim, p + "q_norm.weight", 0, 1});
      checks.push_back({"num_attention_heads", t.heads, p + "q_proj.weight", 0, 2 * t.head_dim});
      checks.push_back({"num_key_value_heads", t.kv_heads, p + "k_proj.weight", 0, t.head_dim});
      break;
    }
  for (uint64_t i = 0; i < t.num_layers && i < t.layer_types.size(); ++i)
    if (!m.is_attention(i)) {
      const std::string p = fmt::format("model.language_model.layers.{}.linear_attn.", i);
      checks.push_back({"linear_num_value_heads", t.lin_value_heads, p + "in_proj_b.weight", 0, 1});
      checks.push_back({"linear_value_head_dim", t.lin_value_dim, p + "norm.weight", 0, 1});
      checks.push_back({"linear_conv_kernel_dim", t.conv_kernel, p + "conv1d.weight", 2, 1});
      break;
    }
  const std::string mlp = "model.language_model.layers.0.mlp.";
  if (m.is_moe()) {
    checks.push_back({"num_experts", t.experts, mlp + "gate.weight", 0, 1});
    checks.push_back({"shared_expert_intermediate_size", t.shared_ffn,
                      mlp + "shared_expert.gate_proj.weight", 0, 1});
    if (experts.main == ExpertLayout::Fused)
      checks.push_back({"moe_intermediate_size", t.moe_ffn, mlp + "experts.down_proj", 2, 1});
    else
      checks.push_back(
          {"moe_intermediate_size", t.moe_ffn, mlp + "experts.0.gate_proj.weight", 0, 1});
  } else {
    checks.push_back({"intermediate_size", t.ffn, mlp + "gate_proj.weight", 0, 1});
  }
  for (const auto& c : checks)
    if (auto p = field_problem(c, recorded); !p.empty()) return p;

  // Then everything else the config implies, tensor by tensor.
  const bool head = recorded.find("lm_head.weight") != nullptr;
  if (m.tied == head)
    return fmt::format(
        "model.hf_config says tie_word_embeddings = {}, but the recorded tensors {} "
        "lm_head.weight",
        m.tied, head ? "include" : "have no");
  std::vector<HfTensorSpec> schema;
  try {
    schema = qwen35_hf_schema(m, experts, head);
  } catch (const std::exception& e) {
    return fmt::format("model.hf_config: {}", e.what());
  }
  std::set<std::string> implied;
  for (const auto& s : schema) {
    implied.insert(s.name);
    const HfTensor* r = recorded.find(s.name);
    if (r == nullptr)
      return fmt::format(
          "model.hf_config implies tensor '{}' {}, which the manifest does not record", s.name,
          shape_str(s.shape));
    if (r->shape != s.shape)
      return fmt::format("model.hf_config implies '{}' is {}, but the manifest records {}", s.name,
                         shape_str(s.shape), shape_str(r->shape));
  }
  return {};
}

void check_files_complete(const std::filesystem::path& staging, const nlohmann::json& files) {
  for (const auto& f : files) {
    const std::string name = f.at("path").get<std::string>();
    const std::filesystem::path path = staging / name;
    std::error_code ec;
    const auto st = std::filesystem::symlink_status(path, ec);
    if (ec || !std::filesystem::is_regular_file(st))
      throw Error("internal: {} is listed for commit but is not a regular file in {}", name,
                  staging.string());
    const uint64_t size = std::filesystem::file_size(path, ec);
    const uint64_t want = f.at("bytes").get<uint64_t>();
    if (ec || size != want)
      throw Error("internal: {} has {} bytes at commit, but {} were written: not committed",
                  path.string(), size, want);
  }
}

}  // namespace mb
