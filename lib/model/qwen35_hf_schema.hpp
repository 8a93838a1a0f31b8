// The HF side of a Qwen3.5 checkpoint: every tensor name, shape and official
// dtype that config.json implies (spec qwen35-hf-format.md §2). Used to check
// a checkpoint before converting it, and to write synthetic ones.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/shape.hpp"
#include "model/qwen35_config.hpp"

namespace mb {

struct HfCatalog;

enum class ExpertLayout { Fused, PerExpert };

struct ExpertLayouts {
  ExpertLayout main = ExpertLayout::Fused;    // decoder layers
  ExpertLayout mtp = ExpertLayout::PerExpert;  // the MTP layer (per-expert in Qwen3.5-35B-A3B)
};

std::string_view expert_layout_name(ExpertLayout l);
ExpertLayout expert_layout_from_name(std::string_view s);

struct HfTensorSpec {
  std::string name;
  Shape shape;
  DType dtype;  // as in the official release: F32 for A_log and the GDN norm, else config dtype
};

std::vector<HfTensorSpec> qwen35_hf_schema(const ModelConfig& m, const ExpertLayouts& experts,
                                           bool with_lm_head);

// Detects fused vs per-expert storage from the tensor names, separately for
// the decoder layers and for the MTP layer (as Megatron-Bridge does). A mix of
// both in one part is an error. Parts without experts get the defaults.
ExpertLayouts detect_expert_layouts(const HfCatalog& c);

// The MTP layer that config.json declares, against what the checkpoint holds.
// transformers' save_pretrained drops every `mtp.*` tensor (it does not model
// the layer) but keeps text_config.mtp_num_hidden_layers, so a model fine-tuned
// and saved with transformers declares an MTP layer it does not have.
struct MtpPresence {
  uint64_t declared = 0;  // text_config.mtp_num_hidden_layers
  uint64_t stored = 0;    // tensors named mtp.* in the checkpoint
  // Declared but not a single tensor stored: converted without MTP. (Some
  // tensors stored but not all is an incomplete checkpoint, refused by
  // check_hf_checkpoint.)
  bool absent() const { return declared > 0 && stored == 0; }
};
MtpPresence mtp_presence(const ModelConfig& m, const HfCatalog& c);

// The model without its MTP layer: mtp_layers 0, and
// text_config.mtp_num_hidden_layers 0 in the raw config.json that travels with
// the conversion (manifest, hf/config.json, export), so that every later step
// sees the model that was converted.
ModelConfig without_mtp(const ModelConfig& m);

// Checks the checkpoint against the schema: every expected tensor present with
// the expected shape, lm_head.weight consistent with tie_word_embeddings, and
// returns the names the schema does not know (unconsumed tensors).
std::vector<std::string> check_hf_checkpoint(const ModelConfig& m, const HfCatalog& c,
                                             const ExpertLayouts& experts);

}  // namespace mb
