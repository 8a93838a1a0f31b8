// The import plan: for every model-parallel rank (TP, PP, EP), the exact list
// of tensors its Megatron-Core state_dict holds, and for each of them the
// byte-range copies from the HF checkpoint that build it. Rank 0 builds it and
// broadcasts it; every rank then executes its share.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/shape.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "layout/parallel_layout.hpp"
#include "model/qwen35_config.hpp"
#include "model/qwen35_hf_schema.hpp"
#include "model/qwen35_mapping.hpp"
#include "transforms/elementwise.hpp"
#include "transforms/segment.hpp"

namespace mb {

struct LocalTensor {
  std::string name;         // as this rank's state_dict names it (local layer / expert index)
  std::string global_name;  // Megatron-Bridge name: global layer index, global expert id
  Shape shape;              // local shape
  Shape global_shape;       // shape with the TP (or ETP) split undone
  DType dtype = DType::BF16;         // as stored in the shard
  DType source_dtype = DType::BF16;  // of its HF sources
  ElementOp op = ElementOp::None;
  Xform xform = Xform::Copy;
  Split split = Split::Replicated;
  bool expert = false;     // split over ETP and placed by EP
  bool canonical = false;  // the one copy of its HF elements that export reads
  std::vector<Segment> segments;  // Segment::src indexes ImportPlan::catalog.tensors

  uint64_t rows() const { return rows_2d(shape); }
  uint64_t cols() const { return cols_2d(shape); }
  uint64_t nbytes() const { return numel(shape) * dtype_size(dtype); }
  uint64_t source_bytes() const;  // bytes its segments read
};

struct ShardPlan {
  ShardCoord coord;
  int rank = 0;  // the MPI rank that writes it
  std::vector<LocalTensor> tensors;
  uint64_t bytes_written() const;
  uint64_t canonical_bytes() const;
  uint64_t bytes_read() const;
};

struct PlanRequest {
  ParallelLayout layout;
  std::optional<DType> cast;  // convert every floating-point tensor to this dtype
  bool strict = true;         // unconsumed HF tensors are errors (else warnings)
  int world_size = 1;
};

struct ImportPlan {
  nlohmann::json config_json;  // config.json as read; `model` is parsed from it
  ModelConfig model;
  ParallelLayout layout;
  HfCatalog catalog;
  ExpertLayouts experts;
  std::optional<DType> cast;
  std::vector<ShardPlan> shards;
  std::vector<std::string> unconsumed;  // HF tensors left out (only when not strict)
  // MTP layers config.json declared that the checkpoint does not hold (no
  // mtp.* tensor at all, as transformers saves): `model` and `config_json`
  // are then the model without MTP, which is what was converted.
  uint64_t mtp_not_converted = 0;
  int world_size = 1;

  std::vector<size_t> shards_of_rank(int rank) const;
};

// Builds the plan. A checkpoint without any mtp.* tensor whose config.json
// declares an MTP layer is planned without MTP (one warning; see
// ImportPlan::mtp_not_converted). Throws on any accounting failure: a
// Megatron parameter with no HF source, an HF tensor nothing consumes (unless
// !strict), or HF elements that the canonical copies do not cover exactly once.
ImportPlan build_import_plan(const ModelConfig& m, HfCatalog catalog, const PlanRequest& req);

// The tensors of one shard, without segments' bytes being read: used by the
// plan itself and by export/verify/reshard to know what a shard must contain.
std::vector<LocalTensor> plan_shard_tensors(const ModelConfig& m, const HfCatalog& catalog,
                                            const ExpertLayouts& experts, const ParallelLayout& l,
                                            const ShardCoord& coord, std::optional<DType> cast);

// Assigns shards to ranks, largest first onto the least-loaded rank. With
// canonical_only the load counts only canonical copies (torch_dist writes no replicas).
void assign_shards_to_ranks(std::vector<ShardPlan>& shards, int world_size,
                            bool canonical_only = false);

nlohmann::json plan_to_json(const ImportPlan& p);
ImportPlan plan_from_json(const nlohmann::json& j);
nlohmann::json local_tensor_to_json(const LocalTensor& t);
LocalTensor local_tensor_from_json(const nlohmann::json& j);

}  // namespace mb
