// The Qwen3.5 name map. One row per Megatron parameter kind: which HF tensors
// feed it, with which transform and which tensor-parallel split. Reviewed
// against Megatron-Bridge's Qwen35VLBridge/Qwen35VLMoEBridge mapping registry
// (spec qwen35-mapping.md §2); prefixes per block are listed in the header.
#include "model/qwen35_mapping.hpp"

namespace mb {

using B = Block;
using X = Xform;
using S = Split;

// clang-format off
const std::vector<MappingRule>& qwen35_mapping() {
  static const std::vector<MappingRule> table = {
    // block              Megatron (relative)                                   HF (relative)                                          transform        split
    {B::Embedding,        "embedding.word_embeddings.weight",                   {"model.language_model.embed_tokens.weight"},           X::Copy,         S::Column},
    {B::FinalNorm,        "decoder.final_layernorm.weight",                     {"model.language_model.norm.weight"},                   X::Copy,         S::Replicated},
    {B::OutputUntied,     "output_layer.weight",                                {"lm_head.weight"},                                     X::Copy,         S::Column},
    {B::OutputTied,       "output_layer.weight",                                {"model.language_model.embed_tokens.weight"},           X::Copy,         S::Column},

    // Gated DeltaNet mixer (input layernorm fused into in_proj).
    {B::GdnMixer,         "self_attention.in_proj.layer_norm_weight",           {"input_layernorm.weight"},                             X::Copy,         S::Replicated},
    {B::GdnMixer,         "self_attention.in_proj.weight",                      {"linear_attn.in_proj_qkv.weight", "linear_attn.in_proj_z.weight",
                                                                                 "linear_attn.in_proj_b.weight", "linear_attn.in_proj_a.weight"},
                                                                                                                                        X::GdnInProj,    S::Column},
    {B::GdnMixer,         "self_attention.conv1d.weight",                       {"linear_attn.conv1d.weight"},                          X::GdnConv,      S::Column},
    {B::GdnMixer,         "self_attention.A_log",                               {"linear_attn.A_log"},                                  X::Copy,         S::Column},
    {B::GdnMixer,         "self_attention.dt_bias",                             {"linear_attn.dt_bias"},                                X::Copy,         S::Column},
    {B::GdnMixer,         "self_attention.out_norm.weight",                     {"linear_attn.norm.weight"},                            X::NormMinusOne, S::Replicated},
    {B::GdnMixer,         "self_attention.out_proj.weight",                     {"linear_attn.out_proj.weight"},                        X::Copy,         S::Row},

    // Gated attention (input layernorm fused into linear_qkv).
    {B::AttnMixer,        "self_attention.linear_qkv.layer_norm_weight",        {"input_layernorm.weight"},                             X::Copy,         S::Replicated},
    {B::AttnMixer,        "self_attention.linear_qkv.weight",                   {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                                                 "self_attn.v_proj.weight"},                            X::Qkvg,         S::Column},
    {B::AttnMixer,        "self_attention.q_layernorm.weight",                  {"self_attn.q_norm.weight"},                            X::Copy,         S::Replicated},
    {B::AttnMixer,        "self_attention.k_layernorm.weight",                  {"self_attn.k_norm.weight"},                            X::Copy,         S::Replicated},
    {B::AttnMixer,        "self_attention.linear_proj.weight",                  {"self_attn.o_proj.weight"},                            X::Copy,         S::Row},

    // Dense SwiGLU MLP (pre-MLP layernorm fused into linear_fc1).
    {B::DenseMlp,         "mlp.linear_fc1.layer_norm_weight",                   {"post_attention_layernorm.weight"},                    X::Copy,         S::Replicated},
    {B::DenseMlp,         "mlp.linear_fc1.weight",                              {"mlp.gate_proj.weight", "mlp.up_proj.weight"},         X::Glu,          S::Column},
    {B::DenseMlp,         "mlp.linear_fc2.weight",                              {"mlp.down_proj.weight"},                               X::Copy,         S::Row},

    // MoE block: router, shared expert and its gate use the dense TP group.
    {B::MoeMlp,           "pre_mlp_layernorm.weight",                           {"post_attention_layernorm.weight"},                    X::Copy,         S::Replicated},
    {B::MoeMlp,           "mlp.router.weight",                                  {"mlp.gate.weight"},                                    X::Copy,         S::Replicated},
    {B::MoeMlp,           "mlp.shared_experts.linear_fc1.weight",               {"mlp.shared_expert.gate_proj.weight",
                                                                                 "mlp.shared_expert.up_proj.weight"},                   X::Glu,          S::Column},
    {B::MoeMlp,           "mlp.shared_experts.linear_fc2.weight",               {"mlp.shared_expert.down_proj.weight"},                 X::Copy,         S::Row},
    {B::MoeMlp,           "mlp.shared_experts.gate_weight",                     {"mlp.shared_expert_gate.weight"},                      X::Copy,         S::Replicated},

    // Routed experts (TEGroupedMLP), split over the expert TP group and placed by EP.
    {B::ExpertsFused,     "mlp.experts.linear_fc1.weight{e}",                   {"mlp.experts.gate_up_proj[{e}]"},                      X::Glu,          S::Column},
    {B::ExpertsFused,     "mlp.experts.linear_fc2.weight{e}",                   {"mlp.experts.down_proj[{e}]"},                         X::Copy,         S::Row},
    {B::ExpertsPerExpert, "mlp.experts.linear_fc1.weight{e}",                   {"mlp.experts.{e}.gate_proj.weight",
                                                                                 "mlp.experts.{e}.up_proj.weight"},                     X::Glu,          S::Column},
    {B::ExpertsPerExpert, "mlp.experts.linear_fc2.weight{e}",                   {"mlp.experts.{e}.down_proj.weight"},                   X::Copy,         S::Row},

    // MTP block around its inner (full-attention) layer.
    {B::MtpWrapper,       "eh_proj.weight",                                     {"fc.weight"},                                          X::Copy,         S::Column},
    {B::MtpWrapper,       "enorm.weight",                                       {"pre_fc_norm_embedding.weight"},                       X::Copy,         S::Replicated},
    {B::MtpWrapper,       "hnorm.weight",                                       {"pre_fc_norm_hidden.weight"},                          X::Copy,         S::Replicated},
    {B::MtpWrapper,       "final_layernorm.weight",                             {"norm.weight"},                                        X::Copy,         S::Replicated},

    // Vision tower outside the blocks (replicated except the merger linears).
    {B::VisionTower,      "patch_embed.proj.weight",                            {"patch_embed.proj.weight"},                            X::Copy,         S::Replicated},
    {B::VisionTower,      "patch_embed.proj.bias",                              {"patch_embed.proj.bias"},                              X::Copy,         S::Replicated},
    {B::VisionTower,      "pos_embed.weight",                                   {"pos_embed.weight"},                                   X::Copy,         S::Replicated},
    {B::VisionTower,      "merger.patch_norm.weight",                           {"merger.norm.weight"},                                 X::Copy,         S::Replicated},
    {B::VisionTower,      "merger.patch_norm.bias",                             {"merger.norm.bias"},                                   X::Copy,         S::Replicated},
    {B::VisionTower,      "merger.linear_fc1.weight",                           {"merger.linear_fc1.weight"},                           X::Copy,         S::Column},
    {B::VisionTower,      "merger.linear_fc1.bias",                             {"merger.linear_fc1.bias"},                             X::Copy,         S::Column},
    {B::VisionTower,      "merger.linear_fc2.weight",                           {"merger.linear_fc2.weight"},                           X::Copy,         S::Row},
    {B::VisionTower,      "merger.linear_fc2.bias",                             {"merger.linear_fc2.bias"},                             X::Copy,         S::Replicated},

    // Vision blocks: LayerNorm with bias, non-gated GELU MLP, biases everywhere.
    {B::VisionBlock,      "self_attention.linear_qkv.layer_norm_weight",        {"norm1.weight"},                                       X::Copy,         S::Replicated},
    {B::VisionBlock,      "self_attention.linear_qkv.layer_norm_bias",          {"norm1.bias"},                                         X::Copy,         S::Replicated},
    {B::VisionBlock,      "self_attention.linear_qkv.weight",                   {"attn.qkv.weight"},                                    X::VisionQkv,    S::Column},
    {B::VisionBlock,      "self_attention.linear_qkv.bias",                     {"attn.qkv.bias"},                                      X::VisionQkv,    S::Column},
    {B::VisionBlock,      "self_attention.linear_proj.weight",                  {"attn.proj.weight"},                                   X::Copy,         S::Row},
    {B::VisionBlock,      "self_attention.linear_proj.bias",                    {"attn.proj.bias"},                                     X::Copy,         S::Replicated},
    {B::VisionBlock,      "mlp.linear_fc1.layer_norm_weight",                   {"norm2.weight"},                                       X::Copy,         S::Replicated},
    {B::VisionBlock,      "mlp.linear_fc1.layer_norm_bias",                     {"norm2.bias"},                                         X::Copy,         S::Replicated},
    {B::VisionBlock,      "mlp.linear_fc1.weight",                              {"mlp.linear_fc1.weight"},                              X::Copy,         S::Column},
    {B::VisionBlock,      "mlp.linear_fc1.bias",                                {"mlp.linear_fc1.bias"},                                X::Copy,         S::Column},
    {B::VisionBlock,      "mlp.linear_fc2.weight",                              {"mlp.linear_fc2.weight"},                              X::Copy,         S::Row},
    {B::VisionBlock,      "mlp.linear_fc2.bias",                                {"mlp.linear_fc2.bias"},                                X::Copy,         S::Replicated},
  };
  return table;
}
// clang-format on

std::string_view block_name(Block b) {
  switch (b) {
    case B::Embedding: return "embedding";
    case B::FinalNorm: return "final_norm";
    case B::OutputUntied: return "output_untied";
    case B::OutputTied: return "output_tied";
    case B::GdnMixer: return "gdn_mixer";
    case B::AttnMixer: return "attention_mixer";
    case B::DenseMlp: return "dense_mlp";
    case B::MoeMlp: return "moe_mlp";
    case B::ExpertsFused: return "experts_fused";
    case B::ExpertsPerExpert: return "experts_per_expert";
    case B::MtpWrapper: return "mtp_wrapper";
    case B::VisionTower: return "vision_tower";
    case B::VisionBlock: return "vision_block";
  }
  return "?";
}

std::string_view xform_name(Xform x) {
  switch (x) {
    case X::Copy: return "copy";
    case X::NormMinusOne: return "norm_minus_one";
    case X::Qkvg: return "qkv_gated_interleave";
    case X::GdnInProj: return "gdn_in_proj";
    case X::GdnConv: return "gdn_conv1d";
    case X::Glu: return "glu";
    case X::VisionQkv: return "vision_qkv_interleave";
  }
  return "?";
}

std::string_view split_name(Split s) {
  switch (s) {
    case S::Replicated: return "replicated";
    case S::Column: return "column";
    case S::Row: return "row";
  }
  return "?";
}

}  // namespace mb
