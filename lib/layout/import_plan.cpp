// build_import_plan() and the plan's byte counts. The steps are each in their
// own file: rule expansion (import_plan_rules.cpp), the canonical-copy policy
// (import_plan_canonical.cpp), the tiling check (import_plan_tiling.cpp), rank
// assignment (import_plan_ranks.cpp), serialisation (import_plan_json.cpp).
#include "layout/import_plan.hpp"

#include "core/log.hpp"
#include "layout/import_plan_internal.hpp"

namespace mb {

uint64_t LocalTensor::source_bytes() const {
  uint64_t n = 0;
  for (const auto& s : segments) n += s.rows * s.cols;
  return n * dtype_size(source_dtype);
}

uint64_t ShardPlan::bytes_written() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.nbytes();
  return n;
}

uint64_t ShardPlan::canonical_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors)
    if (t.canonical) n += t.nbytes();
  return n;
}

uint64_t ShardPlan::bytes_read() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.source_bytes();
  return n;
}

std::vector<size_t> ImportPlan::shards_of_rank(int rank) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < shards.size(); ++i)
    if (shards[i].rank == rank) out.push_back(i);
  return out;
}

ImportPlan build_import_plan(const ModelConfig& declared, HfCatalog catalog,
                             const PlanRequest& req) {
  const MtpPresence mtp = mtp_presence(declared, catalog);
  const ModelConfig m = mtp.absent() ? without_mtp(declared) : declared;
  if (mtp.absent())
    log::warn(
        "{}: config.json declares {} MTP layer{} (text_config.mtp_num_hidden_layers) but the "
        "checkpoint has no mtp.* tensor (as transformers' save_pretrained writes it): "
        "converting the model without MTP (mtp_num_layers 0)",
        catalog.dir.string(), mtp.declared, mtp.declared > 1 ? "s" : "");
  validate_layout(req.layout, m);
  ImportPlan p;
  p.mtp_not_converted = mtp.absent() ? mtp.declared : 0;
  p.config_json = m.raw;
  p.model = m;
  p.layout = req.layout;
  p.cast = req.cast;
  p.world_size = req.world_size;
  p.experts = detect_expert_layouts(catalog);
  std::vector<std::string> unknown = check_hf_checkpoint(m, catalog, p.experts);
  p.catalog = std::move(catalog);

  for (const ShardCoord& c : all_shards(req.layout)) {
    ShardPlan s;
    s.coord = c;
    s.tensors = plan_shard_tensors(m, p.catalog, p.experts, req.layout, c, req.cast);
    p.shards.push_back(std::move(s));
  }

  p.unconsumed = account_hf_elements(p, req.strict);
  (void)unknown;  // every unknown tensor is also unconsumed, reported by account_hf_elements
  assign_shards_to_ranks(p.shards, req.world_size);
  return p;
}

}  // namespace mb
