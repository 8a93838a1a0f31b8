// The Qwen3.5 model geometry, parsed from a HuggingFace config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"

namespace mb {

enum class Variant { Dense, Moe };
enum class LayerType { LinearAttention /* GDN */, FullAttention /* gated attention */ };

struct TextConfig {
  uint64_t hidden = 0;        // H
  uint64_t num_layers = 0;    // L
  uint64_t vocab = 0;         // V
  uint64_t heads = 0;         // nh
  uint64_t kv_heads = 0;      // ng
  uint64_t head_dim = 0;      // hd
  uint64_t lin_key_heads = 0;    // nk
  uint64_t lin_value_heads = 0;  // nv
  uint64_t lin_key_dim = 0;      // dk
  uint64_t lin_value_dim = 0;    // dv
  uint64_t conv_kernel = 0;      // Kc
  uint64_t ffn = 0;              // F (dense only)
  uint64_t experts = 0;          // E (MoE only)
  uint64_t experts_per_tok = 0;  // top-k
  uint64_t moe_ffn = 0;          // I
  uint64_t shared_ffn = 0;       // Is
  uint64_t mtp_layers = 0;
  std::vector<LayerType> layer_types;
  bool layer_types_explicit = false;  // false: derived from full_attention_interval

  // Carried into the Megatron model config; they do not affect the weights.
  double rms_norm_eps = 1e-6;
  double rope_theta = 1e7;
  double partial_rotary_factor = 0.25;
  std::vector<int64_t> mrope_section{11, 11, 10};
  uint64_t max_position_embeddings = 0;
  double initializer_range = 0.02;
  double attention_dropout = 0.0;
  double router_aux_loss_coef = 1e-3;
  std::string hidden_act = "silu";
  std::optional<int64_t> bos_token_id, eos_token_id;

  uint64_t key_dim() const { return lin_key_heads * lin_key_dim; }      // Kd
  uint64_t value_dim() const { return lin_value_heads * lin_value_dim; }  // Vd
  uint64_t conv_dim() const { return 2 * key_dim() + value_dim(); }      // Cd
  uint64_t heads_per_group() const { return heads / kv_heads; }          // hpg
  uint64_t qkv_rows() const { return (2 * heads + 2 * kv_heads) * head_dim; }
  uint64_t in_proj_rows() const { return 2 * key_dim() + 2 * value_dim() + 2 * lin_value_heads; }
};

struct VisionConfig {
  uint64_t depth = 0;
  uint64_t hidden = 0;  // Hv
  uint64_t heads = 0;   // nhv
  uint64_t ffn = 0;     // Fv
  uint64_t patch_size = 0;
  uint64_t temporal_patch_size = 0;
  uint64_t in_channels = 0;
  uint64_t spatial_merge_size = 0;
  uint64_t num_position_embeddings = 0;
  uint64_t out_hidden = 0;
  std::string hidden_act = "gelu_pytorch_tanh";

  uint64_t head_dim() const { return hidden / heads; }
  uint64_t merger_hidden() const { return hidden * spatial_merge_size * spatial_merge_size; }
};

struct ModelConfig {
  Variant variant = Variant::Dense;
  std::string architecture;  // Qwen3_5ForConditionalGeneration / Qwen3_5MoeForConditionalGeneration
  std::string model_type;
  TextConfig text;
  VisionConfig vision;
  // Whether the output layer shares the embedding. Read from the top-level
  // field (as Megatron-Bridge does), falling back to text_config.
  bool tied = false;
  std::optional<bool> tie_top_level, tie_text_config;
  DType dtype = DType::BF16;  // torch_dtype / dtype, for the Megatron config
  // Special token ids copied into the Megatron config.
  std::optional<int64_t> image_token_id, video_token_id, vision_start_token_id, vision_end_token_id;
  nlohmann::json raw;  // the config.json as read, for the manifest and export

  bool is_moe() const { return variant == Variant::Moe; }
  bool is_attention(uint64_t layer) const {
    return text.layer_types.at(layer) == LayerType::FullAttention;
  }
};

// Parses a config.json document. `source` names the file in errors.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_model_config(const std::filesystem::path& config_json);

}  // namespace mb
