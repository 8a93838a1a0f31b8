#include "layout/parallel_layout.hpp"

#include <fmt/format.h>

#include <utility>

#include "core/error.hpp"

namespace mb {

std::string ParallelLayout::describe() const {
  std::string s = fmt::format("TP{}·PP{}·EP{}·ETP{}", tp, pp, ep, etp);
  if (first_stage_layers || last_stage_layers)
    s += fmt::format(" (first stage {}, last stage {} layers)",
                     first_stage_layers ? fmt::format("{}", *first_stage_layers) : "even",
                     last_stage_layers ? fmt::format("{}", *last_stage_layers) : "even");
  return s;
}

std::string ShardCoord::file_name() const {
  return fmt::format("mp_rank_{:02d}_{:03d}_{:03d}.h5", tp, pp, ep);
}

std::vector<ShardCoord> all_shards(const ParallelLayout& l) {
  std::vector<ShardCoord> out;
  for (uint64_t p = 0; p < l.pp; ++p)
    for (uint64_t e = 0; e < l.ep; ++e)
      for (uint64_t t = 0; t < l.tp; ++t) out.push_back({t, p, e});
  return out;
}

namespace {
// Returns an empty string when the split is valid, or what is wrong.
std::string stage_split_problem(const ParallelLayout& l, uint64_t L) {
  const uint64_t P = l.pp;
  if (P == 1) {
    if ((l.first_stage_layers && *l.first_stage_layers != L) ||
        (l.last_stage_layers && *l.last_stage_layers != L))
      return "first/last stage layer counts need PP > 1";
    return {};
  }
  uint64_t fixed = 0, fixed_stages = 0;
  // Each alone first, so that the sum below cannot wrap around.
  for (const auto& [n, which] :
       {std::pair{l.first_stage_layers, "first"}, std::pair{l.last_stage_layers, "last"}})
    if (n && *n > L)
      return fmt::format("the {} stage's {} layers exceed num_layers ({})", which, *n, L);
  if (l.first_stage_layers) {
    if (*l.first_stage_layers == 0) return "the first stage must hold at least one layer";
    fixed += *l.first_stage_layers;
    ++fixed_stages;
  }
  if (l.last_stage_layers) {
    if (*l.last_stage_layers == 0) return "the last stage must hold at least one layer";
    fixed += *l.last_stage_layers;
    ++fixed_stages;
  }
  if (fixed > L)
    return fmt::format("first + last stage layers ({}) exceed num_layers ({})", fixed, L);
  const uint64_t middle = L - fixed, middle_stages = P - fixed_stages;
  if (middle_stages == 0)
    return middle == 0 ? std::string{}
                       : fmt::format("{} layers are left for no middle stage", middle);
  if (middle % middle_stages != 0)
    return fmt::format("{} layers do not split evenly over {} pipeline stages", middle,
                       middle_stages);
  if (middle / middle_stages == 0) return fmt::format("a middle pipeline stage would hold no layer");
  return {};
}
}  // namespace

std::vector<LayerRange> stage_layers(const ParallelLayout& l, uint64_t L) {
  const std::string problem = stage_split_problem(l, L);
  MB_CHECK(problem.empty(), "pipeline split of {} layers over PP={}: {}", L, l.pp, problem);
  std::vector<uint64_t> counts(l.pp, 0);
  if (l.pp == 1) {
    counts[0] = L;
  } else {
    uint64_t fixed = 0, fixed_stages = 0;
    if (l.first_stage_layers) fixed += *l.first_stage_layers, ++fixed_stages;
    if (l.last_stage_layers) fixed += *l.last_stage_layers, ++fixed_stages;
    const uint64_t per = (l.pp - fixed_stages) ? (L - fixed) / (l.pp - fixed_stages) : 0;
    for (uint64_t p = 0; p < l.pp; ++p) counts[p] = per;
    if (l.first_stage_layers) counts.front() = *l.first_stage_layers;
    if (l.last_stage_layers) counts.back() = *l.last_stage_layers;
  }
  std::vector<LayerRange> out;
  uint64_t b = 0;
  for (uint64_t c : counts) {
    out.push_back({b, b + c});
    b += c;
  }
  return out;
}

void validate_layout(const ParallelLayout& l, const ModelConfig& m) {
  std::vector<std::string> problems;
  auto need = [&](bool ok, std::string what) {
    if (!ok) problems.push_back(std::move(what));
  };
  need(l.tp >= 1 && l.pp >= 1 && l.ep >= 1 && l.etp >= 1, "TP, PP, EP and ETP must all be >= 1");
  if (!problems.empty()) throw Error("invalid parallel layout {}: {}", l.describe(), problems[0]);

  const TextConfig& t = m.text;
  const uint64_t T = l.tp;
  auto divides = [&](uint64_t value, uint64_t by, const char* what, const char* by_name) {
    need(value % by == 0, fmt::format("{} = {} is not divisible by {} = {}", what, value, by_name, by));
  };
  divides(t.vocab, T, "vocab_size", "TP");  // the VL model has no vocab padding
  divides(t.heads, T, "num_attention_heads", "TP");
  divides(t.qkv_rows(), T, "linear_qkv rows (2·heads + 2·kv_heads)·head_dim", "TP");
  if (t.kv_heads < T)
    need(T % t.kv_heads == 0,
         fmt::format("TP = {} is larger than num_key_value_heads = {} but not a multiple of it "
                     "(Megatron-Core splits a KV group only evenly)",
                     T, t.kv_heads));
  else
    divides(t.kv_heads, T, "num_key_value_heads", "TP");
  divides(t.lin_key_heads, T, "linear_num_key_heads", "TP");
  divides(t.lin_value_heads, T, "linear_num_value_heads", "TP");
  if (t.mtp_layers > 0) divides(t.hidden, T, "hidden_size (MTP eh_proj rows)", "TP");
  if (m.is_moe()) {
    divides(t.shared_ffn, T, "shared_expert_intermediate_size", "TP");
    divides(t.experts, l.ep, "num_experts", "EP");
    divides(t.moe_ffn, l.etp, "moe_intermediate_size", "ETP");
    need(T % l.etp == 0, fmt::format("ETP = {} must divide TP = {} (supported: ETP = 1 or ETP = TP)",
                                     l.etp, T));
  } else {
    divides(t.ffn, T, "intermediate_size", "TP");
    need(l.ep == 1, fmt::format("EP = {} needs an MoE model; {} is dense", l.ep, m.architecture));
    need(l.etp == 1, fmt::format("ETP = {} needs an MoE model; {} is dense", l.etp, m.architecture));
  }
  const VisionConfig& v = m.vision;
  divides(v.heads, T, "vision num_heads", "TP");
  divides(v.ffn, T, "vision intermediate_size", "TP");
  divides(v.merger_hidden(), T, "vision merger hidden (hidden_size·spatial_merge_size²)", "TP");
  need(l.pp <= t.num_layers,
       fmt::format("PP = {} exceeds the number of decoder layers ({})", l.pp, t.num_layers));
  if (l.pp <= t.num_layers) {
    const std::string problem = stage_split_problem(l, t.num_layers);
    need(problem.empty(), fmt::format("pipeline split: {}", problem));
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("parallel layout {} does not fit {} ({} problem{}):",
                                  l.describe(), m.architecture, problems.size(),
                                  problems.size() > 1 ? "s" : "");
    for (const auto& p : problems) msg += "\n  - " + p;
    throw Error(msg);
  }
}

nlohmann::json layout_to_json(const ParallelLayout& l) {
  nlohmann::json j{{"tp", l.tp}, {"pp", l.pp}, {"ep", l.ep}, {"etp", l.etp}};
  j["first_stage_layers"] = l.first_stage_layers ? nlohmann::json(*l.first_stage_layers) : nullptr;
  j["last_stage_layers"] = l.last_stage_layers ? nlohmann::json(*l.last_stage_layers) : nullptr;
  return j;
}

ParallelLayout layout_from_json(const nlohmann::json& j) {
  ParallelLayout l;
  l.tp = j.at("tp").get<uint64_t>();
  l.pp = j.at("pp").get<uint64_t>();
  l.ep = j.at("ep").get<uint64_t>();
  l.etp = j.at("etp").get<uint64_t>();
  if (j.contains("first_stage_layers") && !j.at("first_stage_layers").is_null())
    l.first_stage_layers = j.at("first_stage_layers").get<uint64_t>();
  if (j.contains("last_stage_layers") && !j.at("last_stage_layers").is_null())
    l.last_stage_layers = j.at("last_stage_layers").get<uint64_t>();
  return l;
}

}  // namespace mb
