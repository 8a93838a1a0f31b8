// Rule expansion of the import plan: the mapping table (qwen35_mapping.hpp)
// instantiated for one model-parallel shard, each rule turned into the local
// tensors it yields and their segments.
#include "core/error.hpp"
#include "layout/import_plan_internal.hpp"
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
  uint64_t layer_local = 0, layer_global = 0;    // {i}; vision block {j} uses the same
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

bool is_expert_block(Block b) {
  return b == Block::ExpertsFused || b == Block::ExpertsPerExpert;
}

// One local tensor's re-layout: the source rows in order, the column window,
// and its local and global shapes.
struct Relayout {
  RowMap map;
  uint64_t col0 = 0, ncols = 0;
  Shape local, global;
};

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

  // The stored dtype: the sources' (all the same), or the cast's for floats.
  void set_dtypes(LocalTensor& lt, const std::vector<RowRun>& runs) const {
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
  }

  static void need_div(uint64_t v, const char* what, const std::string& name, uint64_t n,
                       bool expert) {
    MB_CHECK(v % n == 0, "'{}': {} = {} is not divisible by the {} size {}", name, what, v,
             expert ? "ETP" : "TP", n);
  }

  // The rows of this rank's part (part of n) of the rule's transform, and
  // its local and global shapes before any row-parallel column split.
  Relayout row_map(const MappingRule& rule, const std::vector<RowRun>& runs, const Shape& s0,
                   const std::string& name, bool expert) const {
    const uint64_t n = expert ? l_.etp : l_.tp;
    const uint64_t part = expert ? coord_.etp_rank(l_) : coord_.tp;
    const uint64_t cols = cols_2d(s0);
    const TextConfig& t = m_.text;
    Relayout r;
    r.local = s0;
    r.global = s0;
    switch (rule.xform) {
      case Xform::Copy:
      case Xform::NormMinusOne:
        if (rule.split == Split::Column) {
          need_div(s0.at(0), "dim 0", name, n, expert);
          r.map = chunk_rows({runs[0]}, n, part);
          r.local[0] = s0[0] / n;
        } else {
          r.map = {runs[0]};
        }
        break;
      case Xform::Qkvg:
        r.map = chunk_rows(qkvg_full(runs[0], runs[1], runs[2], t.heads, t.kv_heads, t.head_dim), n,
                           part);
        r.local = {t.qkv_rows() / n, cols};
        r.global = {t.qkv_rows(), cols};
        break;
      case Xform::GdnInProj:
        need_div(t.lin_key_heads, "linear_num_key_heads", name, n, expert);
        need_div(t.lin_value_heads, "linear_num_value_heads", name, n, expert);
        r.map = gdn_in_proj_local(runs[0], runs[1], runs[2], runs[3], t.key_dim(), t.value_dim(), n,
                                  part);
        r.local = {t.in_proj_rows() / n, cols};
        r.global = {t.in_proj_rows(), cols};
        break;
      case Xform::GdnConv:
        r.map = gdn_conv_local(runs[0], t.key_dim(), t.value_dim(), n, part);
        r.local[0] = s0[0] / n;
        break;
      case Xform::Glu:
        glu_row_map(runs, name, n, part, expert, cols, r);
        break;
      case Xform::VisionQkv:
        r.map =
            chunk_rows(vision_qkv_full(runs[0], m_.vision.heads, m_.vision.head_dim()), n, part);
        r.local[0] = s0[0] / n;
        break;
    }
    return r;
  }

  // SwiGLU: [gate; up] from two tensors, or from one fused [2I, H] slab.
  static void glu_row_map(const std::vector<RowRun>& runs, const std::string& name, uint64_t n,
                          uint64_t part, bool expert, uint64_t cols, Relayout& r) {
    RowRun gate, up;
    if (runs.size() == 2) {
      gate = runs[0];
      up = runs[1];
    } else {  // one fused [2I, H] slab: rows [0, I) gate, [I, 2I) up
      MB_CHECK(runs[0].rows % 2 == 0, "'{}': fused gate/up slab has an odd row count {}", name,
               runs[0].rows);
      gate = sub_run(runs[0], 0, runs[0].rows / 2);
      up = sub_run(runs[0], runs[0].rows / 2, runs[0].rows / 2);
    }
    need_div(gate.rows, "FFN size", name, n, expert);
    r.map = glu_local(gate, up, n, part);
    r.local = {2 * gate.rows / n, cols};
    r.global = {2 * gate.rows, cols};
  }

  // row_map() plus the column window of a row-parallel split.
  Relayout relayout(const MappingRule& rule, const std::vector<RowRun>& runs, const Shape& s0,
                    const std::string& name, bool expert) const {
    const uint64_t n = expert ? l_.etp : l_.tp;
    const uint64_t part = expert ? coord_.etp_rank(l_) : coord_.tp;
    const uint64_t cols = cols_2d(s0);
    Relayout r = row_map(rule, runs, s0, name, expert);
    r.col0 = 0, r.ncols = cols;
    if (rule.split == Split::Row) {
      need_div(cols, "the last dim", name, n, expert);
      r.ncols = cols / n;
      r.col0 = part * r.ncols;
      r.local.back() = r.ncols;
    }
    if (rule.split == Split::Column && rule.xform != Xform::Qkvg &&
        rule.xform != Xform::GdnInProj && rule.xform != Xform::Glu)
      r.global[0] = r.local[0] * n;
    if (rule.split == Split::Row) r.global.back() = cols;
    return r;
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
    set_dtypes(lt, runs);

    const Relayout r = relayout(rule, runs, shapes[0], lt.global_name, expert);
    lt.shape = r.local;
    lt.global_shape = r.global;
    lt.segments = row_map_segments(r.map, r.col0, r.ncols);
    MB_CHECK(total_rows(r.map) == rows_2d(r.local),
             "internal: '{}' maps {} rows into a local tensor of {} rows", lt.global_name,
             total_rows(r.map), rows_2d(r.local));
    lt.canonical = is_canonical_copy(coord_, l_, rule.split, expert, replica, lt.segments);
    out_.push_back(std::move(lt));
  }

  const ModelConfig& m_;
  const HfCatalog& c_;
  const ParallelLayout& l_;
  ShardCoord coord_;
  std::optional<DType> cast_;
  std::vector<LocalTensor> out_;
};

// The decoder layers of one pipeline stage, and the MTP layer on the last.
void expand_decoder(ShardExpander& x, const ModelConfig& m, const ExpertLayouts& experts,
                    const LayerRange& range) {
  const Prefixes layer{"language_model.decoder.layers.{i}.", "model.language_model.layers.{i}."};
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
}

void expand_mtp(ShardExpander& x, const ModelConfig& m, const ExpertLayouts& experts) {
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

}  // namespace

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

  expand_decoder(x, m, experts, stages.at(coord.pp));

  if (last) {
    x.block(Block::FinalNorm, lm, {}, false);
    if (!m.tied)
      x.block(Block::OutputUntied, lm, {}, false);
    else if (l.pp > 1)  // with PP > 1 the last stage holds its own copy of the tied weight
      x.block(Block::OutputTied, lm, {}, /*replica=*/true);
    if (mtp) expand_mtp(x, m, experts);
  }

  if (first) {  // the vision tower runs on the first stage, with the LM's TP
    x.block(Block::VisionTower, {"vision_model.", "model.visual."}, {}, false);
    const Prefixes vb{"vision_model.decoder.layers.{j}.", "model.visual.blocks.{j}."};
    for (uint64_t j = 0; j < m.vision.depth; ++j)
      x.block(Block::VisionBlock, vb, {j, j, 0, 0}, false);
  }
  return x.take();
}

}  // namespace mb
