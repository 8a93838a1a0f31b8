#include "layout/import_plan.hpp"

#include <algorithm>
#include <map>
#include <numeric>

#include "core/error.hpp"
#include "core/log.hpp"
#include "transforms/relayout.hpp"

namespace mb {
namespace {

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size())
    s.replace(pos, from.size(), to);
  return s;
}

// Placeholder values for one instantiation of a rule.
struct Indices {
  uint64_t layer_local = 0, layer_global = 0;  // {i}; vision block {j} uses the same
  uint64_t expert_local = 0, expert_global = 0;  // {e}
};

// The names a block uses on each side.
struct Prefixes {
  std::string megatron;  // may contain {i}
  std::string hf;        // may contain {i}
};

std::string fill(std::string tmpl, uint64_t layer, std::optional<uint64_t> expert) {
  tmpl = replace_all(std::move(tmpl), "{i}", std::to_string(layer));
  tmpl = replace_all(std::move(tmpl), "{j}", std::to_string(layer));
  if (expert) tmpl = replace_all(std::move(tmpl), "{e}", std::to_string(*expert));
  return tmpl;
}

bool is_expert_block(Block b) { return b == Block::ExpertsFused || b == Block::ExpertsPerExpert; }

// Everything one shard needs to instantiate rules.
class ShardExpander {
 public:
  ShardExpander(const ModelConfig& m, const HfCatalog& c, const ParallelLayout& l,
                const ShardCoord& coord, std::optional<DType> cast)
      : m_(m), c_(c), l_(l), coord_(coord), cast_(cast) {}

  void block(Block b, const Prefixes& pre, const Indices& idx, bool replica) {
    for (const MappingRule& rule : qwen35_mapping()) {
      if (rule.block != b) continue;
      if (is_expert_block(b)) {
        const uint64_t epr = m_.text.experts / l_.ep;
        for (uint64_t n = 0; n < epr; ++n) {
          Indices e = idx;
          e.expert_local = n;
          e.expert_global = coord_.ep * epr + n;
          instantiate(rule, pre, e, replica, true);
        }
      } else {
        instantiate(rule, pre, idx, replica, false);
      }
    }
  }

  std::vector<LocalTensor> take() { return std::move(out_); }

 private:
  // Resolves an HF template to a source run: the whole tensor, or one slab of
  // a 3-D expert tensor for names ending in "[{e}]".
  RowRun source(const std::string& hf_name, const std::string& megatron_name, const Indices& idx,
                Shape& shape) {
    std::string name = hf_name;
    bool slab = false;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, "[{e}]") == 0) {
      name.resize(name.size() - 5);
      slab = true;
    }
    name = fill(name, idx.layer_global, idx.expert_global);
    const HfTensor* t = c_.find(name);
    MB_CHECK(t != nullptr, "Megatron parameter '{}' has no source: HF tensor '{}' is missing",
             megatron_name, name);
    const uint32_t id = static_cast<uint32_t>(t - c_.tensors.data());
    if (!slab) {
      shape = t->shape;
      return {id, 0, t->rows()};
    }
    MB_CHECK(t->shape.size() == 3 && t->shape[0] == m_.text.experts,
             "HF tensor '{}' has shape {}; expected [{} experts, rows, cols]", name,
             shape_str(t->shape), m_.text.experts);
    shape = {t->shape[1], t->shape[2]};
    return {id, idx.expert_global * t->shape[1], t->shape[1]};
  }

  void instantiate(const MappingRule& rule, const Prefixes& pre, const Indices& idx, bool replica,
                   bool expert) {
    LocalTensor lt;
    const std::string mrel(rule.megatron);
    lt.name = fill(pre.megatron + mrel, idx.layer_local, idx.expert_local);
    lt.global_name = fill(pre.megatron + mrel, idx.layer_global, idx.expert_global);
    lt.xform = rule.xform;
    lt.split = rule.split;
    lt.expert = expert;
    lt.op = rule.xform == Xform::NormMinusOne ? ElementOp::MinusOne : ElementOp::None;

    std::vector<RowRun> runs;
    std::vector<Shape> shapes;
    for (auto h : rule.hf) {
      Shape s;
      runs.push_back(source(pre.hf + std::string(h), lt.global_name, idx, s));
      shapes.push_back(std::move(s));
    }
    const DType sdt = c_.tensors[runs[0].src].dtype;
    for (const auto& r : runs)
      MB_CHECK(c_.tensors[r.src].dtype == sdt,
               "Megatron parameter '{}' combines HF tensors of different dtypes ({} is {}, {} is "
               "{}); pass a dtype to convert them",
               lt.global_name, c_.tensors[runs[0].src].name, dtype_name(sdt),
               c_.tensors[r.src].name, dtype_name(c_.tensors[r.src].dtype));
    lt.source_dtype = sdt;
    lt.dtype = sdt;
    if (cast_ && dtype_is_float(sdt)) {
      MB_CHECK(dtype_is_castable(sdt), "cannot convert '{}' from {} to {}", lt.global_name,
               dtype_name(sdt), dtype_name(*cast_));
      lt.dtype = *cast_;
    }

    const uint64_t N = expert ? l_.etp : l_.tp;
    const uint64_t part = expert ? coord_.etp_rank(l_) : coord_.tp;
    const Shape& s0 = shapes[0];
    const uint64_t cols = cols_2d(s0);
    RowMap map;
    Shape local = s0, global = s0;
    const TextConfig& t = m_.text;
    auto need_div = [&](uint64_t v, const char* what) {
      MB_CHECK(v % N == 0, "'{}': {} = {} is not divisible by the {} size {}", lt.global_name, what,
               v, expert ? "ETP" : "TP", N);
    };
    switch (rule.xform) {
      case Xform::Copy:
      case Xform::NormMinusOne:
        if (rule.split == Split::Column) {
          need_div(s0.at(0), "dim 0");
          map = chunk_rows({runs[0]}, N, part);
          local[0] = s0[0] / N;
        } else {
          map = {runs[0]};
        }
        break;
      case Xform::Qkvg:
        map = chunk_rows(qkvg_full(runs[0], runs[1], runs[2], t.heads, t.kv_heads, t.head_dim), N,
                         part);
        local = {t.qkv_rows() / N, cols};
        global = {t.qkv_rows(), cols};
        break;
      case Xform::GdnInProj:
        need_div(t.lin_key_heads, "linear_num_key_heads");
        need_div(t.lin_value_heads, "linear_num_value_heads");
        map = gdn_in_proj_local(runs[0], runs[1], runs[2], runs[3], t.key_dim(), t.value_dim(), N,
                                part);
        local = {t.in_proj_rows() / N, cols};
        global = {t.in_proj_rows(), cols};
        break;
      case Xform::GdnConv:
        map = gdn_conv_local(runs[0], t.key_dim(), t.value_dim(), N, part);
        local[0] = s0[0] / N;
        break;
      case Xform::Glu: {
        RowRun gate, up;
        if (runs.size() == 2) {
          gate = runs[0];
          up = runs[1];
        } else {  // one fused [2I, H] slab: rows [0, I) gate, [I, 2I) up
          MB_CHECK(runs[0].rows % 2 == 0, "'{}': fused gate/up slab has an odd row count {}",
                   lt.global_name, runs[0].rows);
          gate = sub_run(runs[0], 0, runs[0].rows / 2);
          up = sub_run(runs[0], runs[0].rows / 2, runs[0].rows / 2);
        }
        need_div(gate.rows, "FFN size");
        map = glu_local(gate, up, N, part);
        local = {2 * gate.rows / N, cols};
        global = {2 * gate.rows, cols};
        break;
      }
      case Xform::VisionQkv:
        map = chunk_rows(vision_qkv_full(runs[0], m_.vision.heads, m_.vision.head_dim()), N, part);
        local[0] = s0[0] / N;
        break;
    }
    uint64_t col0 = 0, ncols = cols;
    if (rule.split == Split::Row) {
      need_div(cols, "the last dim");
      ncols = cols / N;
      col0 = part * ncols;
      local.back() = ncols;
    }
    if (rule.split == Split::Column && rule.xform != Xform::Qkvg &&
        rule.xform != Xform::GdnInProj && rule.xform != Xform::Glu)
      global[0] = local[0] * N;
    if (rule.split == Split::Row) global.back() = cols;
    lt.shape = local;
    lt.global_shape = global;
    lt.segments = row_map_segments(map, col0, ncols);
    MB_CHECK(total_rows(map) == rows_2d(local),
             "internal: '{}' maps {} rows into a local tensor of {} rows", lt.global_name,
             total_rows(map), rows_2d(local));

    // One copy of each HF element is canonical: export reads it, replicas are
    // only checked, and torch_dist stores only it. Replicated tensors: TP rank
    // 0; expert tensors: the TP rank that equals the ETP rank; non-expert
    // tensors: one EP rank, taken in turn by HF tensor (its first source's
    // index in the sorted catalog), so that the EP ranks share the writing of
    // the non-expert tensors instead of EP rank 0 writing them all.
    const uint64_t ep_owner = lt.segments.empty() ? 0 : lt.segments.front().src % l_.ep;
    if (replica)
      lt.canonical = false;
    else if (expert)
      lt.canonical = coord_.tp < l_.etp;
    else
      lt.canonical = coord_.ep == ep_owner && (rule.split != Split::Replicated || coord_.tp == 0);
    out_.push_back(std::move(lt));
  }

  const ModelConfig& m_;
  const HfCatalog& c_;
  const ParallelLayout& l_;
  ShardCoord coord_;
  std::optional<DType> cast_;
  std::vector<LocalTensor> out_;
};

struct Rect {
  uint64_t r0, r1, c0, c1;
};

// Checks that the canonical rectangles of one HF tensor tile it exactly.
void check_tiling(const HfTensor& t, std::vector<Rect>& rects, const std::string& first_user) {
  uint64_t area = 0;
  for (const auto& r : rects) {
    MB_CHECK(r.r1 <= t.rows() && r.c1 <= t.cols(),
             "internal: a copy of HF tensor '{}' reads rows [{}, {}) cols [{}, {}) of a {}x{} view",
             t.name, r.r0, r.r1, r.c0, r.c1, t.rows(), t.cols());
    area += (r.r1 - r.r0) * (r.c1 - r.c0);
  }
  std::sort(rects.begin(), rects.end(),
            [](const Rect& a, const Rect& b) { return a.r0 != b.r0 ? a.r0 < b.r0 : a.c0 < b.c0; });
  for (size_t i = 0; i < rects.size(); ++i)
    for (size_t k = i + 1; k < rects.size() && rects[k].r0 < rects[i].r1; ++k)
      MB_CHECK(rects[k].c0 >= rects[i].c1 || rects[k].c1 <= rects[i].c0,
               "internal: HF tensor '{}' elements [{}, {}) x [{}, {}) would be produced twice "
               "(first used by {})",
               t.name, rects[k].r0, std::min(rects[i].r1, rects[k].r1),
               std::max(rects[i].c0, rects[k].c0), std::min(rects[i].c1, rects[k].c1), first_user);
  MB_CHECK(area == t.rows() * t.cols(),
           "internal: the conversion covers {} of the {} elements of HF tensor '{}' (used by {})",
           area, t.rows() * t.cols(), t.name, first_user);
}

}  // namespace

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

std::vector<LocalTensor> plan_shard_tensors(const ModelConfig& m, const HfCatalog& catalog,
                                            const ExpertLayouts& experts, const ParallelLayout& l,
                                            const ShardCoord& coord, std::optional<DType> cast) {
  ShardExpander x(m, catalog, l, coord, cast);
  const auto stages = stage_layers(l, m.text.num_layers);
  const bool first = coord.pp == 0, last = coord.pp + 1 == l.pp;
  const bool mtp = m.text.mtp_layers > 0;
  const Prefixes lm{"language_model.", ""};

  // Stage 0 owns the embedding. Megatron-Core also builds one on the MTP stage;
  // when that is a later stage it is a replica of the same HF tensor.
  if (first || (last && mtp)) x.block(Block::Embedding, lm, {}, /*replica=*/!first);

  const Prefixes layer{"language_model.decoder.layers.{i}.", "model.language_model.layers.{i}."};
  const LayerRange range = stages.at(coord.pp);
  for (uint64_t g = range.begin; g < range.end; ++g) {
    const Indices idx{g - range.begin, g, 0, 0};
    x.block(m.is_attention(g) ? Block::AttnMixer : Block::GdnMixer, layer, idx, false);
    if (m.is_moe()) {
      x.block(Block::MoeMlp, layer, idx, false);
      x.block(experts.main == ExpertLayout::Fused ? Block::ExpertsFused : Block::ExpertsPerExpert,
              layer, idx, false);
    } else {
      x.block(Block::DenseMlp, layer, idx, false);
    }
  }

  if (last) {
    x.block(Block::FinalNorm, lm, {}, false);
    if (!m.tied)
      x.block(Block::OutputUntied, lm, {}, false);
    else if (l.pp > 1)  // with PP > 1 the last stage holds its own copy of the tied weight
      x.block(Block::OutputTied, lm, {}, /*replica=*/true);
    if (mtp) {
      MB_CHECK(m.text.mtp_layers == 1,
               "mtp_num_hidden_layers = {}: only one MTP layer has a known HF naming",
               m.text.mtp_layers);
      x.block(Block::MtpWrapper, {"language_model.mtp.layers.0.", "mtp."}, {}, false);
      const Prefixes inner{"language_model.mtp.layers.0.mtp_model_layer.", "mtp.layers.0."};
      x.block(Block::AttnMixer, inner, {}, false);  // the MTP layer is always full attention
      if (m.is_moe()) {
        x.block(Block::MoeMlp, inner, {}, false);
        x.block(experts.mtp == ExpertLayout::Fused ? Block::ExpertsFused : Block::ExpertsPerExpert,
                inner, {}, false);
      } else {
        x.block(Block::DenseMlp, inner, {}, false);
      }
    }
  }

  if (first) {  // the vision tower runs on the first stage, with the LM's TP
    x.block(Block::VisionTower, {"vision_model.", "model.visual."}, {}, false);
    const Prefixes vb{"vision_model.decoder.layers.{j}.", "model.visual.blocks.{j}."};
    for (uint64_t j = 0; j < m.vision.depth; ++j) x.block(Block::VisionBlock, vb, {j, j, 0, 0}, false);
  }
  return x.take();
}

void assign_shards_to_ranks(std::vector<ShardPlan>& shards, int world_size, bool canonical_only) {
  MB_CHECK(world_size >= 1, "internal: world size {}", world_size);
  auto weight = [&](size_t i) {
    return canonical_only ? shards[i].canonical_bytes() : shards[i].bytes_written();
  };
  std::vector<size_t> order(shards.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return weight(a) > weight(b); });
  std::vector<uint64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<size_t> count(static_cast<size_t>(world_size), 0);
  for (size_t i : order) {
    size_t best = 0;
    for (size_t r = 1; r < load.size(); ++r)
      if (load[r] < load[best] || (load[r] == load[best] && count[r] < count[best])) best = r;
    shards[i].rank = static_cast<int>(best);
    load[best] += weight(i);
    ++count[best];
  }
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

  // Strict accounting: each HF element is produced by exactly one canonical
  // copy, and every HF tensor is consumed.
  std::vector<std::vector<Rect>> rects(p.catalog.tensors.size());
  std::vector<const std::string*> user(p.catalog.tensors.size(), nullptr);
  for (const auto& s : p.shards)
    for (const auto& t : s.tensors) {
      if (!t.canonical) continue;
      for (const auto& g : t.segments) {
        rects[g.src].push_back({g.src_row, g.src_row + g.rows, g.src_col, g.src_col + g.cols});
        if (!user[g.src]) user[g.src] = &t.global_name;
      }
    }
  std::vector<std::string> unconsumed;
  for (size_t i = 0; i < p.catalog.tensors.size(); ++i) {
    if (rects[i].empty()) {
      unconsumed.push_back(p.catalog.tensors[i].name);
      continue;
    }
    check_tiling(p.catalog.tensors[i], rects[i], *user[i]);
  }
  if (!unconsumed.empty()) {
    std::string msg = fmt::format("{} HF tensor{} in {} {} not consumed by the Qwen3.5 mapping:",
                                  unconsumed.size(), unconsumed.size() > 1 ? "s" : "",
                                  p.catalog.dir.string(), unconsumed.size() > 1 ? "are" : "is");
    for (size_t i = 0; i < unconsumed.size() && i < 20; ++i) {
      const HfTensor* t = p.catalog.find(unconsumed[i]);
      msg += fmt::format("\n  - {} ({} {}, in {})", t->name, dtype_name(t->dtype),
                         shape_str(t->shape), p.catalog.files[t->file]);
    }
    if (unconsumed.size() > 20) msg += fmt::format("\n  ... and {} more", unconsumed.size() - 20);
    if (req.strict) throw Error("{}\n(pass --not-strict to convert anyway without them)", msg);
    log::warn("{}\n(--not-strict: they are left out)", msg);
  }
  p.unconsumed = std::move(unconsumed);
  (void)unknown;  // every unknown tensor is also unconsumed, reported above
  assign_shards_to_ranks(p.shards, req.world_size);
  return p;
}

nlohmann::json local_tensor_to_json(const LocalTensor& t) {
  return {{"name", t.name},
          {"global_name", t.global_name},
          {"shape", t.shape},
          {"global_shape", t.global_shape},
          {"dtype", dtype_name(t.dtype)},
          {"source_dtype", dtype_name(t.source_dtype)},
          {"op", op_name(t.op)},
          {"xform", static_cast<int>(t.xform)},
          {"split", static_cast<int>(t.split)},
          {"expert", t.expert},
          {"canonical", t.canonical},
          {"segments", segments_to_json(t.segments)}};
}

LocalTensor local_tensor_from_json(const nlohmann::json& j) {
  LocalTensor t;
  t.name = j.at("name").get<std::string>();
  t.global_name = j.at("global_name").get<std::string>();
  t.shape = j.at("shape").get<Shape>();
  t.global_shape = j.at("global_shape").get<Shape>();
  t.dtype = *dtype_from_name(j.at("dtype").get<std::string>());
  t.source_dtype = *dtype_from_name(j.at("source_dtype").get<std::string>());
  t.op = op_from_name(j.at("op").get<std::string>());
  t.xform = static_cast<Xform>(j.at("xform").get<int>());
  t.split = static_cast<Split>(j.at("split").get<int>());
  t.expert = j.at("expert").get<bool>();
  t.canonical = j.at("canonical").get<bool>();
  t.segments = segments_from_json(j.at("segments"));
  return t;
}

nlohmann::json plan_to_json(const ImportPlan& p) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& s : p.shards) {
    nlohmann::json ts = nlohmann::json::array();
    for (const auto& t : s.tensors) ts.push_back(local_tensor_to_json(t));
    shards.push_back({{"tp", s.coord.tp}, {"pp", s.coord.pp}, {"ep", s.coord.ep},
                      {"rank", s.rank}, {"tensors", std::move(ts)}});
  }
  return {{"config", p.config_json},
          {"layout", layout_to_json(p.layout)},
          {"catalog", catalog_to_json(p.catalog)},
          {"experts", {{"main", expert_layout_name(p.experts.main)},
                       {"mtp", expert_layout_name(p.experts.mtp)}}},
          {"cast", p.cast ? nlohmann::json(dtype_name(*p.cast)) : nlohmann::json(nullptr)},
          {"unconsumed", p.unconsumed},
          {"mtp_not_converted", p.mtp_not_converted},
          {"world_size", p.world_size},
          {"shards", std::move(shards)}};
}

ImportPlan plan_from_json(const nlohmann::json& j) {
  ImportPlan p;
  p.config_json = j.at("config");
  p.model = parse_model_config(p.config_json, "config.json (broadcast)");
  p.layout = layout_from_json(j.at("layout"));
  p.catalog = catalog_from_json(j.at("catalog"));
  p.experts.main = expert_layout_from_name(j.at("experts").at("main").get<std::string>());
  p.experts.mtp = expert_layout_from_name(j.at("experts").at("mtp").get<std::string>());
  if (!j.at("cast").is_null()) p.cast = dtype_from_name(j.at("cast").get<std::string>());
  p.unconsumed = j.at("unconsumed").get<std::vector<std::string>>();
  p.mtp_not_converted = j.at("mtp_not_converted").get<uint64_t>();
  p.world_size = j.at("world_size").get<int>();
  for (const auto& sj : j.at("shards")) {
    ShardPlan s;
    s.coord = {sj.at("tp").get<uint64_t>(), sj.at("pp").get<uint64_t>(), sj.at("ep").get<uint64_t>()};
    s.rank = sj.at("rank").get<int>();
    for (const auto& tj : sj.at("tensors")) s.tensors.push_back(local_tensor_from_json(tj));
    p.shards.push_back(std::move(s));
  }
  return p;
}

}  // namespace mb
