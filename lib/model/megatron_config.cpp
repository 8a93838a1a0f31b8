#include "model/megatron_config.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

namespace mb {
namespace {
// make_vocab_size_divisible_by: the largest power of two <= 128 dividing V.
uint64_t vocab_divisor(uint64_t v) {
  uint64_t d = 128;
  while (d > 1 && v % d != 0) d /= 2;
  return d;
}
}  // namespace

void emit_parallel_sizes(YAML::Emitter& y, const ParallelLayout& l) {
  y << YAML::Key << "tensor_model_parallel_size" << YAML::Value << l.tp;
  y << YAML::Key << "pipeline_model_parallel_size" << YAML::Value << l.pp;
  y << YAML::Key << "expert_model_parallel_size" << YAML::Value << l.ep;
  y << YAML::Key << "expert_tensor_parallel_size" << YAML::Value << l.etp;
  if (l.first_stage_layers)
    y << YAML::Key << "num_layers_in_first_pipeline_stage" << YAML::Value << *l.first_stage_layers;
  if (l.last_stage_layers)
    y << YAML::Key << "num_layers_in_last_pipeline_stage" << YAML::Value << *l.last_stage_layers;
}

std::string megatron_config_yaml(const ModelConfig& m, const ParallelLayout& l,
                                 uint64_t mtp_not_converted) {
  const TextConfig& t = m.text;
  YAML::Emitter y;
  y << YAML::Comment("Megatron-Core model configuration derived from the HF config.json by megabridge")
    << YAML::Newline;
  y << YAML::BeginMap;
  y << YAML::Key << "provider" << YAML::Value
    << (m.is_moe() ? "Qwen35VLMoEModelProvider" : "Qwen35VLModelProvider");
  y << YAML::Key << "hf_architecture" << YAML::Value << m.architecture;

  y << YAML::Key << "language_model" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "num_layers" << YAML::Value << t.num_layers;
  y << YAML::Key << "hidden_size" << YAML::Value << t.hidden;
  if (!m.is_moe()) y << YAML::Key << "ffn_hidden_size" << YAML::Value << t.ffn;
  y << YAML::Key << "num_attention_heads" << YAML::Value << t.heads;
  y << YAML::Key << "num_query_groups" << YAML::Value << t.kv_heads;
  y << YAML::Key << "kv_channels" << YAML::Value << t.head_dim;
  y << YAML::Key << "vocab_size" << YAML::Value << t.vocab;
  y << YAML::Key << "make_vocab_size_divisible_by" << YAML::Value << vocab_divisor(t.vocab);
  y << YAML::Key << "should_pad_vocab" << YAML::Value << false;
  y << YAML::Key << "seq_length" << YAML::Value << t.max_position_embeddings;
  y << YAML::Key << "layernorm_epsilon" << YAML::Value << t.rms_norm_eps;
  y << YAML::Key << "init_method_std" << YAML::Value << t.initializer_range;
  y << YAML::Key << "attention_dropout" << YAML::Value << t.attention_dropout;
  y << YAML::Key << "hidden_dropout" << YAML::Value << 0.0;
  y << YAML::Key << "add_qkv_bias" << YAML::Value << false;
  y << YAML::Key << "add_bias_linear" << YAML::Value << false;
  y << YAML::Key << "rotary_base" << YAML::Value << t.rope_theta;
  y << YAML::Key << "rotary_percent" << YAML::Value << t.partial_rotary_factor;
  y << YAML::Key << "mrope_section" << YAML::Value << YAML::Flow << t.mrope_section;
  y << YAML::Key << "position_embedding_type" << YAML::Value << "mrope";
  y << YAML::Key << "activation_func" << YAML::Value << t.hidden_act;
  y << YAML::Key << "gated_linear_unit" << YAML::Value << true;
  y << YAML::Key << "normalization" << YAML::Value << "RMSNorm";
  y << YAML::Key << "layernorm_zero_centered_gamma" << YAML::Value << true;
  y << YAML::Key << "qk_layernorm" << YAML::Value << true;
  y << YAML::Key << "attention_output_gate" << YAML::Value << true;
  y << YAML::Key << "experimental_attention_variant" << YAML::Value << "gated_delta_net";
  std::vector<int> pattern;  // 1 = linear attention (GDN), 0 = full attention
  for (auto lt : t.layer_types) pattern.push_back(lt == LayerType::LinearAttention ? 1 : 0);
  y << YAML::Key << "linear_attention_freq" << YAML::Value << YAML::Flow << pattern;
  y << YAML::Key << "linear_conv_kernel_dim" << YAML::Value << t.conv_kernel;
  y << YAML::Key << "linear_key_head_dim" << YAML::Value << t.lin_key_dim;
  y << YAML::Key << "linear_value_head_dim" << YAML::Value << t.lin_value_dim;
  y << YAML::Key << "linear_num_key_heads" << YAML::Value << t.lin_key_heads;
  y << YAML::Key << "linear_num_value_heads" << YAML::Value << t.lin_value_heads;
  y << YAML::Key << "share_embeddings_and_output_weights" << YAML::Value << m.tied;
  if (t.mtp_layers > 0) {
    y << YAML::Key << "mtp_num_layers" << YAML::Value << t.mtp_layers;
    y << YAML::Key << "mtp_loss_scaling_factor" << YAML::Value << 0.1;
  } else if (mtp_not_converted > 0 || m.raw.value("text_config", nlohmann::json::object())
                                          .contains("mtp_num_hidden_layers")) {
    // Megatron-Bridge maps text_config.mtp_num_hidden_layers to mtp_num_layers
    // as is; 0 builds no MTP block (and no embedding on the last stage).
    y << YAML::Key << "mtp_num_layers" << YAML::Value << 0;
    if (mtp_not_converted > 0)  // on the same line, after the value
      y << YAML::Comment(
          fmt::format("config.json declared {} MTP layer(s) but the HF checkpoint "
                      "held no mtp.* tensor: converted without MTP",
                      mtp_not_converted));
  } else {
    y << YAML::Key << "mtp_num_layers" << YAML::Value << YAML::Null;
  }
  if (m.is_moe()) {
    y << YAML::Key << "num_moe_experts" << YAML::Value << t.experts;
    y << YAML::Key << "moe_router_topk" << YAML::Value << t.experts_per_tok;
    y << YAML::Key << "moe_ffn_hidden_size" << YAML::Value << t.moe_ffn;
    y << YAML::Key << "moe_shared_expert_intermediate_size" << YAML::Value << t.shared_ffn;
    y << YAML::Key << "moe_aux_loss_coeff" << YAML::Value << t.router_aux_loss_coef;
    y << YAML::Key << "moe_shared_expert_gate" << YAML::Value << true;
    y << YAML::Key << "moe_grouped_gemm" << YAML::Value << true;
    y << YAML::Key << "moe_router_load_balancing_type" << YAML::Value << "global_aux_loss";
    y << YAML::Key << "moe_router_pre_softmax" << YAML::Value << false;
    y << YAML::Key << "moe_token_dispatcher_type" << YAML::Value << "alltoall";
    y << YAML::Key << "moe_permute_fusion" << YAML::Value << true;
    y << YAML::Key << "moe_router_dtype" << YAML::Value << "fp32";
  }
  if (t.bos_token_id) y << YAML::Key << "bos_token_id" << YAML::Value << *t.bos_token_id;
  if (t.eos_token_id) y << YAML::Key << "eos_token_id" << YAML::Value << *t.eos_token_id;
  y << YAML::Key << "params_dtype" << YAML::Value << std::string(dtype_torch_name(m.dtype));
  y << YAML::Key << "bf16" << YAML::Value << (m.dtype == DType::BF16);
  y << YAML::Key << "fp16" << YAML::Value << (m.dtype == DType::F16);
  y << YAML::Key << "hetereogenous_dist_checkpoint" << YAML::Value << true;
  y << YAML::EndMap;

  for (const auto& [key, value] :
       {std::pair{"image_token_id", m.image_token_id}, std::pair{"video_token_id", m.video_token_id},
        std::pair{"vision_start_token_id", m.vision_start_token_id},
        std::pair{"vision_end_token_id", m.vision_end_token_id}})
    if (value) y << YAML::Key << key << YAML::Value << *value;

  const VisionConfig& v = m.vision;
  y << YAML::Key << "vision_model" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "num_layers" << YAML::Value << v.depth;
  y << YAML::Key << "hidden_size" << YAML::Value << v.hidden;
  y << YAML::Key << "num_attention_heads" << YAML::Value << v.heads;
  y << YAML::Key << "num_query_groups" << YAML::Value << v.heads;
  y << YAML::Key << "kv_channels" << YAML::Value << v.head_dim();
  y << YAML::Key << "ffn_hidden_size" << YAML::Value << v.ffn;
  y << YAML::Key << "patch_size" << YAML::Value << v.patch_size;
  y << YAML::Key << "temporal_patch_size" << YAML::Value << v.temporal_patch_size;
  y << YAML::Key << "in_channels" << YAML::Value << v.in_channels;
  y << YAML::Key << "spatial_merge_size" << YAML::Value << v.spatial_merge_size;
  y << YAML::Key << "num_position_embeddings" << YAML::Value << v.num_position_embeddings;
  y << YAML::Key << "out_hidden_size" << YAML::Value << v.out_hidden;
  y << YAML::Key << "deepstack_visual_indexes" << YAML::Value << YAML::Flow << std::vector<int>{};
  y << YAML::Key << "add_bias_linear" << YAML::Value << true;
  y << YAML::Key << "add_qkv_bias" << YAML::Value << true;
  y << YAML::Key << "normalization" << YAML::Value << "LayerNorm";
  y << YAML::Key << "layernorm_epsilon" << YAML::Value << 1e-6;
  y << YAML::Key << "activation_func" << YAML::Value << "gelu_tanh";
  y << YAML::Key << "gated_linear_unit" << YAML::Value << false;
  y << YAML::Key << "layernorm_zero_centered_gamma" << YAML::Value << false;
  y << YAML::EndMap;

  y << YAML::Key << "parallelism" << YAML::Value << YAML::BeginMap;
  emit_parallel_sizes(y, l);
  y << YAML::EndMap;
  y << YAML::EndMap;
  return std::string(y.c_str()) + "\n";
}

}  // namespace mb
