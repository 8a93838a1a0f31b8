// The Qwen3.5 HF <-> Megatron-Core name map, as data (see qwen35_mapping.cpp
// for the table itself and spec qwen35-mapping.md §2 for its provenance).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace mb {

// How the Megatron tensor is built from its HF tensor(s) (spec §3).
enum class Xform : uint8_t {
  Copy,          // identity
  NormMinusOne,  // Megatron = HF - 1, computed in fp32 (GDN output norm)
  Qkvg,          // gated-attention q/gate/k/v per-group interleave
  GdnInProj,     // in_proj_qkv + in_proj_z + in_proj_b + in_proj_a, TP-major
  GdnConv,       // conv1d channels [Q|K|V], TP-major
  Glu,           // [gate; up] per TP chunk (sources: gate and up, or one [2I, H] slab)
  VisionQkv,     // vision [Q;K;V] to per-head [q;k;v]
};

// How the result is split over tensor-parallel ranks (spec §4).
enum class Split : uint8_t {
  Replicated,  // every rank holds the full tensor
  Column,      // dim 0 in contiguous chunks (for fused transforms: per component)
  Row,         // the last dim in contiguous chunks
};

// Where a rule applies. The planner places each block (spec §6):
//   Embedding        first PP stage; also the last stage when MTP is present
//   FinalNorm        last stage
//   OutputUntied     last stage, untied models
//   OutputTied       last stage of a tied model with PP > 1 (a replica of the embedding)
//   GdnMixer         decoder layers of type linear_attention
//   AttnMixer        decoder layers of type full_attention, and the MTP inner layer
//   DenseMlp         every layer of a dense model (and its MTP layer)
//   MoeMlp           every layer of an MoE model (and its MTP layer)
//   ExpertsFused     MoE experts stored as 3-D gate_up_proj / down_proj
//   ExpertsPerExpert MoE experts stored per expert
//   MtpWrapper       the MTP block around its inner layer, last stage
//   VisionTower      vision tensors outside the blocks, first stage
//   VisionBlock      each vision block, first stage
enum class Block : uint8_t {
  Embedding,
  FinalNorm,
  OutputUntied,
  OutputTied,
  GdnMixer,
  AttnMixer,
  DenseMlp,
  MoeMlp,
  ExpertsFused,
  ExpertsPerExpert,
  MtpWrapper,
  VisionTower,
  VisionBlock,
};

// One row of the table. Names are relative to the block's prefixes:
//   decoder layer  Megatron "language_model.decoder.layers.{i}."   HF "model.language_model.layers.{i}."
//   MTP layer      Megatron "language_model.mtp.layers.0.mtp_model_layer."  HF "mtp.layers.0."
//   MTP wrapper    Megatron "language_model.mtp.layers.0."          HF "mtp."
//   vision block   Megatron "vision_model.decoder.layers.{j}."      HF "model.visual.blocks.{j}."
//   vision tower   Megatron "vision_model."                         HF "model.visual."
//   global blocks  Megatron "language_model."                       HF full names
// In expert rules "{e}" is the expert id: local in the Megatron state_dict
// name, global in the Megatron-Bridge name and in HF names. An HF name ending
// in "[{e}]" means slab e of a 3-D tensor.
struct MappingRule {
  Block block;
  std::string_view megatron;
  std::vector<std::string_view> hf;
  Xform xform;
  Split split;
};

const std::vector<MappingRule>& qwen35_mapping();

std::string_view block_name(Block b);
std::string_view xform_name(Xform x);
std::string_view split_name(Split s);

}  // namespace mb
