#include "model/qwen35_config.hpp"

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"

namespace mb {
namespace {
using nlohmann::json;

constexpr const char* kDenseArch = "Qwen3_5ForConditionalGeneration";
constexpr const char* kMoeArch = "Qwen3_5MoeForConditionalGeneration";

// Plausibility bounds, far above every released Qwen3.5 (at most 60 decoder
// layers, 512 experts, 27 vision blocks, widths up to 248320): a value beyond
// them is a corrupt config, and is refused before anything is sized by it
// (the layer list, the tensor schema, the plan).
constexpr uint64_t kMaxLayers = 1024;   // decoder layers, MTP layers, vision blocks
constexpr uint64_t kMaxExperts = 16384;
constexpr uint64_t kMaxDim = uint64_t{1} << 24;  // any width, head count, vocabulary

// Reads config fields with errors that name the file, the section and the field.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string section)
      : j_(j), source_(std::move(source)), section_(std::move(section)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  uint64_t positive(const char* key, uint64_t max = kMaxDim) const {
    MB_CHECK(has(key), "{}: {} has no '{}'", source_, section_, key);
    return positive_value(key, max);
  }
  uint64_t positive_or(const char* key, uint64_t fallback, uint64_t max = kMaxDim) const {
    if (!has(key)) {
      log::debug("{}: {}.{} is absent; using {}", source_, section_, key, fallback);
      return fallback;
    }
    return positive_value(key, max);
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    MB_CHECK(v.is_number(), "{}: {}.{} must be a number, got {}", source_, section_, key, v.dump());
    return v.get<double>();
  }
  std::optional<int64_t> optional_int(const char* key) const {
    if (!has(key)) return std::nullopt;
    const json& v = j_.at(key);
    if (v.is_array() && !v.empty() && v.front().is_number_integer()) return v.front().get<int64_t>();
    MB_CHECK(v.is_number_integer(), "{}: {}.{} must be an integer, got {}", source_, section_, key,
             v.dump());
    return v.get<int64_t>();
  }
  std::optional<bool> optional_bool(const char* key) const {
    if (!has(key)) return std::nullopt;
    const json& v = j_.at(key);
    MB_CHECK(v.is_boolean(), "{}: {}.{} must be true or false, got {}", source_, section_, key,
             v.dump());
    return v.get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    MB_CHECK(v.is_string(), "{}: {}.{} must be a string, got {}", source_, section_, key, v.dump());
    return v.get<std::string>();
  }
  const json& raw() const { return j_; }
  const std::string& source() const { return source_; }
  const std::string& section() const { return section_; }

 private:
  uint64_t positive_value(const char* key, uint64_t max) const {
    const json& v = j_.at(key);
    MB_CHECK(v.is_number_integer() && v.get<int64_t>() > 0,
             "{}: {}.{} must be a positive integer, got {}", source_, section_, key, v.dump());
    MB_CHECK(v.get<uint64_t>() <= max,
             "{}: {}.{} = {} is implausibly large (more than {}); the config is corrupt or not a "
             "Qwen3.5 model",
             source_, section_, key, v.dump(), max);
    return v.get<uint64_t>();
  }

  const json& j_;
  std::string source_, section_;
};

std::vector<LayerType> parse_layer_types(const Fields& f, uint64_t num_layers, bool& explicit_list) {
  std::vector<LayerType> types;
  if (f.has("layer_types")) {
    const json& lt = f.raw().at("layer_types");
    MB_CHECK(lt.is_array(), "{}: text_config.layer_types must be a list", f.source());
    MB_CHECK(lt.size() == num_layers,
             "{}: text_config.layer_types has {} entries but num_hidden_layers is {}", f.source(),
             lt.size(), num_layers);
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string s = lt[i].is_string() ? lt[i].get<std::string>() : lt[i].dump();
      if (s == "linear_attention")
        types.push_back(LayerType::LinearAttention);
      else if (s == "full_attention")
        types.push_back(LayerType::FullAttention);
      else
        throw Error("{}: text_config.layer_types[{}] is '{}'; expected 'linear_attention' or "
                    "'full_attention'",
                    f.source(), i, s);
    }
    explicit_list = true;
    return types;
  }
  // Layer i is full attention iff (i+1) % interval == 0 (transformers and MCore agree).
  const uint64_t interval = f.positive_or("full_attention_interval", 4);
  for (uint64_t i = 0; i < num_layers; ++i)
    types.push_back((i + 1) % interval == 0 ? LayerType::FullAttention : LayerType::LinearAttention);
  explicit_list = false;
  return types;
}

TextConfig parse_text(const Fields& f, Variant variant) {
  TextConfig t;
  t.hidden = f.positive("hidden_size");
  t.num_layers = f.positive("num_hidden_layers", kMaxLayers);
  t.vocab = f.positive("vocab_size");
  t.heads = f.positive("num_attention_heads");
  t.kv_heads = f.positive("num_key_value_heads");
  t.head_dim = f.positive_or("head_dim", t.hidden / t.heads);
  MB_CHECK(t.head_dim > 0,
           "{}: text_config has no head_dim and hidden_size ({}) / num_attention_heads ({}) is 0",
           f.source(), t.hidden, t.heads);
  // Megatron-Bridge's fallbacks when a linear-attention field is absent.
  t.conv_kernel = f.positive_or("linear_conv_kernel_dim", 4);
  t.lin_key_dim = f.positive_or("linear_key_head_dim", 128);
  t.lin_value_dim = f.positive_or("linear_value_head_dim", 128);
  t.lin_key_heads = f.positive_or("linear_num_key_heads", 16);
  t.lin_value_heads = f.positive_or("linear_num_value_heads", 32);
  if (variant == Variant::Dense) {
    t.ffn = f.positive("intermediate_size");
  } else {
    t.experts = f.positive("num_experts", kMaxExperts);
    t.experts_per_tok = f.positive("num_experts_per_tok", kMaxExperts);
    t.moe_ffn = f.positive("moe_intermediate_size");
    t.shared_ffn = f.positive("shared_expert_intermediate_size");
    t.router_aux_loss_coef = f.number_or("router_aux_loss_coef", 1e-3);
  }
  if (f.has("mtp_num_hidden_layers")) {
    const json& v = f.raw().at("mtp_num_hidden_layers");
    MB_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<uint64_t>() <= kMaxLayers,
             "{}: text_config.mtp_num_hidden_layers must be an integer in [0, {}], got {}",
             f.source(), kMaxLayers, v.dump());
    t.mtp_layers = v.get<uint64_t>();
  }
  t.layer_types = parse_layer_types(f, t.num_layers, t.layer_types_explicit);

  MB_CHECK(t.heads % t.kv_heads == 0,
           "{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", f.source(),
           t.heads, t.kv_heads);
  MB_CHECK(t.lin_value_heads % t.lin_key_heads == 0,
           "{}: linear_num_value_heads ({}) is not a multiple of linear_num_key_heads ({})",
           f.source(), t.lin_value_heads, t.lin_key_heads);

  t.rms_norm_eps = f.number_or("rms_norm_eps", 1e-6);
  t.max_position_embeddings = f.has("max_position_embeddings")
                                  ? f.positive("max_position_embeddings", uint64_t{1} << 40)
                                  : 262144;
  t.initializer_range = f.number_or("initializer_range", 0.02);
  t.attention_dropout = f.number_or("attention_dropout", 0.0);
  t.hidden_act = f.string_or("hidden_act", "silu");
  t.bos_token_id = f.optional_int("bos_token_id");
  t.eos_token_id = f.optional_int("eos_token_id");
  // rope_parameters (transformers v5) or the legacy rope_theta/rope_scaling fields.
  const json* rope = nullptr;
  if (f.has("rope_parameters") && f.raw().at("rope_parameters").is_object())
    rope = &f.raw().at("rope_parameters");
  t.rope_theta = f.number_or("rope_theta", 1e7);
  t.partial_rotary_factor = f.number_or("partial_rotary_factor", 0.25);
  const json* mrope_src = nullptr;
  if (rope) {
    Fields rf(*rope, f.source(), "text_config.rope_parameters");
    t.rope_theta = rf.number_or("rope_theta", t.rope_theta);
    t.partial_rotary_factor = rf.number_or("partial_rotary_factor", t.partial_rotary_factor);
    if (rf.has("mrope_section")) mrope_src = &rope->at("mrope_section");
  }
  if (!mrope_src && f.has("rope_scaling") && f.raw().at("rope_scaling").is_object() &&
      f.raw().at("rope_scaling").contains("mrope_section"))
    mrope_src = &f.raw().at("rope_scaling").at("mrope_section");
  if (mrope_src) {
    MB_CHECK(mrope_src->is_array(), "{}: mrope_section must be a list", f.source());
    t.mrope_section.clear();
    for (const auto& v : *mrope_src) {
      MB_CHECK(v.is_number_integer(), "{}: mrope_section holds {}, not an integer", f.source(),
               v.dump());
      t.mrope_section.push_back(v.get<int64_t>());
    }
  }
  return t;
}

VisionConfig parse_vision(const Fields& f) {
  VisionConfig v;
  v.depth = f.positive("depth", kMaxLayers);
  v.hidden = f.positive("hidden_size");
  v.heads = f.positive("num_heads");
  v.ffn = f.positive("intermediate_size");
  v.patch_size = f.positive("patch_size");
  v.temporal_patch_size = f.positive("temporal_patch_size");
  v.in_channels = f.has("in_channels") ? f.positive("in_channels") : f.positive_or("in_chans", 3);
  v.spatial_merge_size = f.positive("spatial_merge_size");
  v.num_position_embeddings = f.positive("num_position_embeddings");
  v.out_hidden = f.positive("out_hidden_size");
  v.hidden_act = f.string_or("hidden_act", "gelu_pytorch_tanh");
  MB_CHECK(v.hidden % v.heads == 0,
           "{}: vision_config.hidden_size ({}) is not a multiple of num_heads ({})", f.source(),
           v.hidden, v.heads);
  if (f.has("deepstack_visual_indexes")) {
    const json& d = f.raw().at("deepstack_visual_indexes");
    MB_CHECK(d.is_array() && d.empty(),
             "{}: vision_config.deepstack_visual_indexes is {}; Qwen3.5 has no deepstack mergers "
             "and megabridge does not convert them",
             f.source(), d.dump());
  }
  return v;
}

std::optional<DType> parse_dtype_field(const json& j) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (j.contains(key) && j.at(key).is_string()) {
      if (auto t = dtype_from_user(j.at(key).get<std::string>())) return t;
    }
  }
  return std::nullopt;
}
}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& source) {
  MB_CHECK(j.is_object(), "{}: expected a JSON object at the top level", source);
  ModelConfig m;
  m.raw = j;
  MB_CHECK(j.contains("architectures") && j.at("architectures").is_array() &&
               !j.at("architectures").empty(),
           "{}: has no 'architectures' list; expected [\"{}\"] or [\"{}\"]", source, kDenseArch,
           kMoeArch);
  MB_CHECK(j.at("architectures").front().is_string(), "{}: architectures[0] is {}, not a name",
           source, j.at("architectures").front().dump());
  m.architecture = j.at("architectures").front().get<std::string>();
  if (m.architecture == kDenseArch)
    m.variant = Variant::Dense;
  else if (m.architecture == kMoeArch)
    m.variant = Variant::Moe;
  else
    throw Error("{}: unsupported architecture '{}'; megabridge converts {} and {}", source,
                m.architecture, kDenseArch, kMoeArch);
  m.model_type = j.value("model_type", std::string{});

  MB_CHECK(j.contains("text_config") && j.at("text_config").is_object(),
           "{}: has no text_config object", source);
  MB_CHECK(j.contains("vision_config") && j.at("vision_config").is_object(),
           "{}: has no vision_config object", source);
  const json& tj = j.at("text_config");
  Fields top(j, source, "config");
  Fields text(tj, source, "text_config");
  m.text = parse_text(text, m.variant);
  m.vision = parse_vision(Fields(j.at("vision_config"), source, "vision_config"));

  m.tie_top_level = top.optional_bool("tie_word_embeddings");
  m.tie_text_config = text.optional_bool("tie_word_embeddings");
  // Megatron-Bridge reads the top-level field: text_config inherits a wrong
  // default of true in some released configs (9B/27B). Presence of
  // lm_head.weight is cross-checked when the checkpoint is opened.
  m.tied = m.tie_top_level.value_or(m.tie_text_config.value_or(false));

  m.dtype = parse_dtype_field(j).value_or(parse_dtype_field(tj).value_or(DType::BF16));
  m.image_token_id = top.optional_int("image_token_id");
  m.video_token_id = top.optional_int("video_token_id");
  m.vision_start_token_id = top.optional_int("vision_start_token_id");
  m.vision_end_token_id = top.optional_int("vision_end_token_id");
  return m;
}

ModelConfig load_model_config(const std::filesystem::path& config_json) {
  const std::string text = read_text_file(config_json);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("{}: malformed JSON: {}", config_json.string(), e.what());
  }
  return parse_model_config(j, config_json.string());
}

}  // namespace mb
