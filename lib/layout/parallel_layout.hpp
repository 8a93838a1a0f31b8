// The Megatron-Core parallel layout (TP, PP, EP, ETP) and the divisibility
// rules a Qwen3.5 model must satisfy under it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/qwen35_config.hpp"

namespace mb {

struct ParallelLayout {
  uint64_t tp = 1;
  uint64_t pp = 1;
  uint64_t ep = 1;
  uint64_t etp = 1;
  // Uneven pipeline split, as Megatron-Core's num_layers_in_first/last_pipeline_stage.
  std::optional<uint64_t> first_stage_layers;
  std::optional<uint64_t> last_stage_layers;

  uint64_t num_shards() const { return tp * pp * ep; }
  std::string describe() const;  // "TP2·PP2·EP2·ETP1"
};

// One model-parallel rank's coordinates; every combination gets one shard file.
struct ShardCoord {
  uint64_t tp = 0, pp = 0, ep = 0;
  // Expert tensor-parallel rank. Megatron-Core's rank generator (order
  // tp-cp-ep-dp-pp) makes the ETP rank the TP rank modulo ETP.
  uint64_t etp_rank(const ParallelLayout& l) const { return tp % l.etp; }
  std::string file_name() const;  // mp_rank_{tp:02d}_{pp:03d}_{ep:03d}.h5
  bool operator==(const ShardCoord&) const = default;
};

struct LayerRange {
  uint64_t begin = 0, end = 0;  // global decoder layers [begin, end)
  uint64_t size() const { return end - begin; }
};

// Decoder layers per pipeline stage, following Megatron-Core: an even split,
// or fixed counts on the first/last stage with the rest split evenly.
std::vector<LayerRange> stage_layers(const ParallelLayout& l, uint64_t num_layers);

// Checks every divisibility rule at once and throws one error listing all
// violations, naming the value and the rule. Runs before any tensor I/O.
void validate_layout(const ParallelLayout& l, const ModelConfig& m);

std::vector<ShardCoord> all_shards(const ParallelLayout& l);

nlohmann::json layout_to_json(const ParallelLayout& l);
ParallelLayout layout_from_json(const nlohmann::json& j);

}  // namespace mb
