#include "model/qwen35_hf_schema.hpp"

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include "core/error.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"

namespace mb {

std::string_view expert_layout_name(ExpertLayout l) {
  return l == ExpertLayout::Fused ? "fused" : "per_expert";
}

ExpertLayout expert_layout_from_name(std::string_view s) {
  if (s == "fused") return ExpertLayout::Fused;
  if (s == "per_expert" || s == "per-expert") return ExpertLayout::PerExpert;
  throw Error("unknown expert layout '{}' (expected fused or per_expert)", s);
}

namespace {
class SchemaBuilder {
 public:
  SchemaBuilder(const ModelConfig& m) : m_(m), t_(m.text) {}

  void add(std::string name, Shape shape, DType dtype) {
    out_.push_back({std::move(name), std::move(shape), dtype});
  }
  void add(std::string name, Shape shape) { add(std::move(name), std::move(shape), m_.dtype); }

  void attention(const std::string& p) {
    const uint64_t H = t_.hidden, hd = t_.head_dim;
    add(p + "input_layernorm.weight", {H});
    add(p + "self_attn.q_proj.weight", {2 * t_.heads * hd, H});
    add(p + "self_attn.k_proj.weight", {t_.kv_heads * hd, H});
    add(p + "self_attn.v_proj.weight", {t_.kv_heads * hd, H});
    add(p + "self_attn.o_proj.weight", {H, t_.heads * hd});
    add(p + "self_attn.q_norm.weight", {hd});
    add(p + "self_attn.k_norm.weight", {hd});
  }

  void gdn(const std::string& p) {
    const uint64_t H = t_.hidden, nv = t_.lin_value_heads;
    add(p + "input_layernorm.weight", {H});
    add(p + "linear_attn.in_proj_qkv.weight", {t_.conv_dim(), H});
    add(p + "linear_attn.in_proj_z.weight", {t_.value_dim(), H});
    add(p + "linear_attn.in_proj_b.weight", {nv, H});
    add(p + "linear_attn.in_proj_a.weight", {nv, H});
    add(p + "linear_attn.conv1d.weight", {t_.conv_dim(), 1, t_.conv_kernel});
    add(p + "linear_attn.dt_bias", {nv});
    add(p + "linear_attn.A_log", {nv}, DType::F32);
    add(p + "linear_attn.norm.weight", {t_.lin_value_dim}, DType::F32);
    add(p + "linear_attn.out_proj.weight", {H, t_.value_dim()});
  }

  void mlp(const std::string& p, ExpertLayout experts) {
    const uint64_t H = t_.hidden;
    add(p + "post_attention_layernorm.weight", {H});
    if (!m_.is_moe()) {
      add(p + "mlp.gate_proj.weight", {t_.ffn, H});
      add(p + "mlp.up_proj.weight", {t_.ffn, H});
      add(p + "mlp.down_proj.weight", {H, t_.ffn});
      return;
    }
    const uint64_t E = t_.experts, I = t_.moe_ffn, Is = t_.shared_ffn;
    add(p + "mlp.gate.weight", {E, H});
    if (experts == ExpertLayout::Fused) {
      add(p + "mlp.experts.gate_up_proj", {E, 2 * I, H});
      add(p + "mlp.experts.down_proj", {E, H, I});
    } else {
      for (uint64_t e = 0; e < E; ++e) {
        const std::string q = fmt::format("{}mlp.experts.{}.", p, e);
        add(q + "gate_proj.weight", {I, H});
        add(q + "up_proj.weight", {I, H});
        add(q + "down_proj.weight", {H, I});
      }
    }
    add(p + "mlp.shared_expert.gate_proj.weight", {Is, H});
    add(p + "mlp.shared_expert.up_proj.weight", {Is, H});
    add(p + "mlp.shared_expert.down_proj.weight", {H, Is});
    add(p + "mlp.shared_expert_gate.weight", {1, H});
  }

  void vision() {
    const VisionConfig& v = m_.vision;
    const uint64_t Hv = v.hidden, M = v.merger_hidden();
    const std::string p = "model.visual.";
    add(p + "patch_embed.proj.weight",
        {Hv, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size});
    add(p + "patch_embed.proj.bias", {Hv});
    add(p + "pos_embed.weight", {v.num_position_embeddings, Hv});
    for (uint64_t j = 0; j < v.depth; ++j) {
      const std::string b = fmt::format("{}blocks.{}.", p, j);
      add(b + "norm1.weight", {Hv});
      add(b + "norm1.bias", {Hv});
      add(b + "norm2.weight", {Hv});
      add(b + "norm2.bias", {Hv});
      add(b + "attn.qkv.weight", {3 * Hv, Hv});
      add(b + "attn.qkv.bias", {3 * Hv});
      add(b + "attn.proj.weight", {Hv, Hv});
      add(b + "attn.proj.bias", {Hv});
      add(b + "mlp.linear_fc1.weight", {v.ffn, Hv});
      add(b + "mlp.linear_fc1.bias", {v.ffn});
      add(b + "mlp.linear_fc2.weight", {Hv, v.ffn});
      add(b + "mlp.linear_fc2.bias", {Hv});
    }
    add(p + "merger.norm.weight", {Hv});
    add(p + "merger.norm.bias", {Hv});
    add(p + "merger.linear_fc1.weight", {M, M});
    add(p + "merger.linear_fc1.bias", {M});
    add(p + "merger.linear_fc2.weight", {v.out_hidden, M});
    add(p + "merger.linear_fc2.bias", {v.out_hidden});
  }

  std::vector<HfTensorSpec> take() { return std::move(out_); }
  const TextConfig& text() const { return t_; }

 private:
  const ModelConfig& m_;
  const TextConfig& t_;
  std::vector<HfTensorSpec> out_;
};
}  // namespace

std::vector<HfTensorSpec> qwen35_hf_schema(const ModelConfig& m, const ExpertLayouts& experts,
                                           bool with_lm_head) {
  const TextConfig& t = m.text;
  // Each config.json value is bounded when parsed, but not their products:
  // count the tensors before building the list, and refuse a checkpoint far
  // larger than any real one (the largest release, per-expert, has ~95,000).
  constexpr uint64_t kMaxSchemaTensors = 500'000;
  auto layer_tensors = [&](ExpertLayout l) -> uint64_t {
    return 16 + (m.is_moe() && l == ExpertLayout::PerExpert ? 3 * t.experts : 2);
  };
  const uint64_t count = 3 + t.num_layers * layer_tensors(experts.main) +
                         (t.mtp_layers > 0 ? 4 + layer_tensors(experts.mtp) : 0) +
                         9 + 12 * m.vision.depth;
  MB_CHECK(count <= kMaxSchemaTensors,
           "config.json implies about {} tensors ({} layers, {} experts, {} vision blocks), more than "
           "the {} megabridge accepts: the config is corrupt or not a Qwen3.5 model",
           count, t.num_layers, t.experts, m.vision.depth, kMaxSchemaTensors);
  SchemaBuilder b(m);
  b.add("model.language_model.embed_tokens.weight", {t.vocab, t.hidden});
  b.add("model.language_model.norm.weight", {t.hidden});
  if (with_lm_head) b.add("lm_head.weight", {t.vocab, t.hidden});
  for (uint64_t i = 0; i < t.num_layers; ++i) {
    const std::string p = fmt::format("model.language_model.layers.{}.", i);
    if (m.is_attention(i))
      b.attention(p);
    else
      b.gdn(p);
    b.mlp(p, experts.main);
  }
  MB_CHECK(t.mtp_layers <= 1,
           "mtp_num_hidden_layers = {}: only one MTP layer has a known HF naming (mtp.fc, "
           "mtp.layers.0); more are not supported",
           t.mtp_layers);
  if (t.mtp_layers == 1) {
    b.add("mtp.fc.weight", {t.hidden, 2 * t.hidden});
    b.add("mtp.pre_fc_norm_embedding.weight", {t.hidden});
    b.add("mtp.pre_fc_norm_hidden.weight", {t.hidden});
    b.add("mtp.norm.weight", {t.hidden});
    b.attention("mtp.layers.0.");
    b.mlp("mtp.layers.0.", experts.mtp);
  }
  b.vision();
  return b.take();
}

ExpertLayouts detect_expert_layouts(const HfCatalog& c) {
  static const std::regex fused_main(R"(^model\.language_model\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$)");
  static const std::regex per_main(R"(^model\.language_model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$)");
  static const std::regex fused_mtp(R"(^mtp\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$)");
  static const std::regex per_mtp(R"(^mtp\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$)");
  std::string fm, pm, ft, pt;  // an example name of each kind, for the error
  for (const auto& t : c.tensors) {
    if (t.name.find(".experts.") == std::string::npos) continue;
    if (fm.empty() && std::regex_match(t.name, fused_main)) fm = t.name;
    if (pm.empty() && std::regex_match(t.name, per_main)) pm = t.name;
    if (ft.empty() && std::regex_match(t.name, fused_mtp)) ft = t.name;
    if (pt.empty() && std::regex_match(t.name, per_mtp)) pt = t.name;
  }
  MB_CHECK(fm.empty() || pm.empty(),
           "{}: decoder experts are stored both fused ({}) and per expert ({}); expected one layout",
           c.dir.string(), fm, pm);
  MB_CHECK(ft.empty() || pt.empty(),
           "{}: MTP experts are stored both fused ({}) and per expert ({}); expected one layout",
           c.dir.string(), ft, pt);
  ExpertLayouts l;
  l.main = pm.empty() ? ExpertLayout::Fused : ExpertLayout::PerExpert;
  l.mtp = ft.empty() ? ExpertLayout::PerExpert : ExpertLayout::Fused;
  return l;
}

MtpPresence mtp_presence(const ModelConfig& m, const HfCatalog& c) {
  MtpPresence p;
  p.declared = m.text.mtp_layers;
  for (const auto& t : c.tensors)
    if (t.name.rfind("mtp.", 0) == 0) ++p.stored;
  return p;
}

ModelConfig without_mtp(const ModelConfig& m) {
  ModelConfig out = m;
  out.text.mtp_layers = 0;
  out.raw["text_config"]["mtp_num_hidden_layers"] = 0;
  return out;
}

std::vector<std::string> check_hf_checkpoint(const ModelConfig& m, const HfCatalog& c,
                                             const ExpertLayouts& experts) {
  const bool has_head = c.find("lm_head.weight") != nullptr;
  if (m.tied && has_head)
    throw Error("{}: config.json says tie_word_embeddings = true but the checkpoint has "
                "lm_head.weight; fix the config or remove the tensor",
                c.dir.string());
  if (!m.tied && !has_head)
    throw Error("{}: config.json says tie_word_embeddings = false{} but the checkpoint has no "
                "lm_head.weight",
                c.dir.string(),
                m.tie_top_level ? "" : " (field absent, defaulting to untied)");
  const auto schema = qwen35_hf_schema(m, experts, has_head);
  std::vector<std::string> missing;
  std::set<std::string> known;
  for (const auto& s : schema) {
    known.insert(s.name);
    const HfTensor* t = c.find(s.name);
    if (!t) {
      missing.push_back(s.name);
      continue;
    }
    MB_CHECK(t->shape == s.shape,
             "{}: tensor '{}' in {} has shape {} but config.json implies {}", c.dir.string(),
             s.name, c.files[t->file], shape_str(t->shape), shape_str(s.shape));
  }
  const auto is_mtp = [](const std::string& n) { return n.rfind("mtp.", 0) == 0; };
  if (!missing.empty() && std::all_of(missing.begin(), missing.end(), is_mtp)) {
    // Only part of the MTP layer: a truncated copy or a half-done edit, not
    // transformers' save_pretrained (which drops all of it).
    size_t expected = 0;
    for (const auto& s : schema) expected += is_mtp(s.name) ? 1 : 0;
    std::string msg = fmt::format(
        "{}: the MTP layer is incomplete: {} of the {} mtp.* tensors that config.json implies "
        "(text_config.mtp_num_hidden_layers = {}) {} missing:",
        c.dir.string(), missing.size(), expected, m.text.mtp_layers,
        missing.size() > 1 ? "are" : "is");
    for (size_t i = 0; i < missing.size() && i < 20; ++i) msg += "\n  - " + missing[i];
    if (missing.size() > 20) msg += fmt::format("\n  ... and {} more", missing.size() - 20);
    msg +=
        "\nA checkpoint holds the whole MTP layer or none of it (then it is converted without "
        "MTP); restore the missing tensors or remove every mtp.* tensor";
    throw Error(msg);
  }
  if (!missing.empty()) {
    std::string msg = fmt::format("{}: {} tensor{} that config.json implies {} missing:",
                                  c.dir.string(), missing.size(), missing.size() > 1 ? "s" : "",
                                  missing.size() > 1 ? "are" : "is");
    for (size_t i = 0; i < missing.size() && i < 20; ++i) msg += "\n  - " + missing[i];
    if (missing.size() > 20) msg += fmt::format("\n  ... and {} more", missing.size() - 20);
    throw Error(msg);
  }
  std::vector<std::string> unknown;
  for (const auto& t : c.tensors)
    if (!known.count(t.name)) unknown.push_back(t.name);
  return unknown;
}

}  // namespace mb
