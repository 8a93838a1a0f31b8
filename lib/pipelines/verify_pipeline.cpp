#include "pipelines/verify_pipeline.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>

#include "checkpoint/manifest.hpp"
#include "checkpoint/megatron_checkpoint.hpp"
#include "checkpoint/safetensors_source.hpp"
#include "checkpoint/torch_dist_source.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "engine/tensor_compare.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "pipelines/step_driver.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_megatron(const fs::path& p) { return fs::exists(p / kManifestName) || is_torch_dist_dir(p); }

// A staging directory (staged_output.hpp): "<out>.partial", or anything
// holding the job file that a staging directory carries until commit.
bool is_unfinished_output(const fs::path& p) {
  fs::path name = p.lexically_normal();
  if (!name.has_filename()) name = name.parent_path();
  const std::string n = name.filename().string();
  const std::string suffix = ".partial";
  return (n.size() > suffix.size() &&
          n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) ||
         fs::exists(p / ".megabridge-job");
}

// Balances items over ranks by size, largest first.
std::vector<int> assign(const std::vector<uint64_t>& sizes, int world) {
  std::vector<size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  std::vector<int> out(sizes.size(), 0);
  for (size_t i : order) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    out[i] = static_cast<int>(r);
    load[r] += sizes[i];
  }
  return out;
}

// HF with HF: the plan is both catalogues, read once by rank 0.
std::string plan_hf_hf(const VerifyOptions& opt) {
  return json{{"a", catalog_to_json(read_hf_catalog(opt.a))}, {"b", catalog_to_json(read_hf_catalog(opt.b))}}
      .dump();
}

void compare_hf_hf(const VerifyOptions& opt, const std::string& blob, MpiContext& mpi,
                   std::vector<std::string>& findings, uint64_t& compared) {
  const json j = json::parse(blob);
  const HfCatalog a = catalog_from_json(j.at("a")), b = catalog_from_json(j.at("b"));
  std::vector<std::pair<uint32_t, uint32_t>> common;
  for (uint32_t i = 0; i < a.tensors.size(); ++i) {
    const HfTensor* t = b.find(a.tensors[i].name);
    if (!t) {
      if (mpi.is_root()) findings.push_back(fmt::format("MISSING {}: in A only", a.tensors[i].name));
      continue;
    }
    common.emplace_back(i, static_cast<uint32_t>(t - b.tensors.data()));
  }
  if (mpi.is_root())
    for (const auto& t : b.tensors)
      if (!a.find(t.name)) findings.push_back(fmt::format("EXTRA   {}: in B only", t.name));
  std::vector<uint64_t> sizes;
  for (auto [i, k] : common) sizes.push_back(a.tensors[i].nbytes);
  const auto ranks = assign(sizes, mpi.size());
  SafetensorsSource sa(a), sb(b);
  const bool exact = opt.atol == 0 && opt.rtol == 0;
  std::vector<unsigned char> ba, bb;
  for (size_t c = 0; c < common.size(); ++c) {
    if (ranks[c] != mpi.rank()) continue;
    const HfTensor &x = a.tensors[common[c].first], &y = b.tensors[common[c].second];
    if (x.shape != y.shape) {
      findings.push_back(fmt::format("SHAPE   {}: A {} vs B {}", x.name, shape_str(x.shape), shape_str(y.shape)));
      continue;
    }
    if (x.dtype != y.dtype && (exact || !dtype_is_castable(x.dtype) || !dtype_is_castable(y.dtype))) {
      findings.push_back(fmt::format("DTYPE   {}: A {} vs B {}", x.name, dtype_name(x.dtype), dtype_name(y.dtype)));
      continue;
    }
    TensorCompare cmp(x.dtype, y.dtype, opt.atol, opt.rtol);
    const uint64_t rb = std::max(x.row_bytes(), y.row_bytes());
    const uint64_t block = std::max<uint64_t>(1, opt.buffer_bytes / 2 / std::max<uint64_t>(rb, 1));
    for (uint64_t r0 = 0; r0 < x.rows(); r0 += block) {
      const uint64_t n = std::min(block, x.rows() - r0);
      ba.resize(n * x.row_bytes());
      bb.resize(n * y.row_bytes());
      sa.read(common[c].first, r0, n, 0, x.cols(), ba.data(), x.row_bytes());
      sb.read(common[c].second, r0, n, 0, y.cols(), bb.data(), y.row_bytes());
      cmp.add(ba.data(), bb.data(), n * x.cols(), r0 * x.cols());
    }
    ++compared;
    if (cmp.differing()) findings.push_back(fmt::format("DIFF    {}: {}", x.name, cmp.describe(x.shape)));
  }
}

// Compares what the engine produces (the expectation from HF) with the rows
// stored in the shard dataset.
class CompareSink : public RowSink {
 public:
  CompareSink(const Hdf5ShardReader& r, const LocalTensor& t, TensorCompare& cmp, bool hf_is_a)
      : r_(r), t_(t), cmp_(cmp), hf_is_a_(hf_is_a) {}
  void write(uint64_t row0, uint64_t rows, const void* expected) override {
    const uint64_t rb = t_.cols() * dtype_size(t_.dtype);
    buf_.resize(rows * rb);
    r_.read(t_.name, row0, rows, 0, t_.cols(), buf_.data(), rb);
    if (hf_is_a_)
      cmp_.add(expected, buf_.data(), rows * t_.cols(), row0 * t_.cols());
    else
      cmp_.add(buf_.data(), expected, rows * t_.cols(), row0 * t_.cols());
  }

 private:
  const Hdf5ShardReader& r_;
  const LocalTensor& t_;
  TensorCompare& cmp_;
  bool hf_is_a_;
  std::vector<unsigned char> buf_;
};

// Like CompareSink, for tensors read through a RowSource (torch_dist chunks).
class StoredCompareSink : public RowSink {
 public:
  StoredCompareSink(RowSource& src, uint32_t id, const LocalTensor& t, DType stored,
                    TensorCompare& cmp, bool hf_is_a)
      : src_(src), id_(id), t_(t), stored_(stored), cmp_(cmp), hf_is_a_(hf_is_a) {}
  void write(uint64_t row0, uint64_t rows, const void* expected) override {
    const uint64_t rb = t_.cols() * dtype_size(stored_);
    buf_.resize(rows * rb);
    src_.read(id_, row0, rows, 0, t_.cols(), buf_.data(), rb);
    if (hf_is_a_)
      cmp_.add(expected, buf_.data(), rows * t_.cols(), row0 * t_.cols());
    else
      cmp_.add(buf_.data(), expected, rows * t_.cols(), row0 * t_.cols());
  }

 private:
  RowSource& src_;
  uint32_t id_;
  const LocalTensor& t_;
  DType stored_;
  TensorCompare& cmp_;
  bool hf_is_a_;
  std::vector<unsigned char> buf_;
};

// HF with Megatron: the plan of what every shard must hold, derived from the
// HF checkpoint by rank 0; `notes` gets what does not match before any tensor is read.
std::string plan_hf_megatron(const fs::path& hf, const MegatronCheckpoint& ck, bool hf_is_a, int world,
                             std::string& notes) {
  const ModelConfig model = load_model_config(hf / "config.json");
  const ImportPlan plan =
      build_import_plan(model, read_hf_catalog(hf), {ck.layout, ck.cast, /*strict=*/false, world});
  // The config as an import of this HF checkpoint records it (without MTP
  // when the checkpoint holds none), against the one the checkpoint records.
  if (plan.config_json != ck.manifest.at("model").at("hf_config"))
    notes += fmt::format("CONFIG  {}/config.json differs from the config the checkpoint was "
                         "converted from\n", hf.string());
  for (const auto& u : plan.unconsumed)
    notes += fmt::format("{} {}: in the HF checkpoint only\n", hf_is_a ? "MISSING" : "EXTRA  ", u);
  const auto packed = json::to_msgpack(plan_to_json(plan));
  return std::string(packed.begin(), packed.end());
}

void compare_hf_megatron(const VerifyOptions& opt, const fs::path& meg, bool hf_is_a,
                         const MegatronCheckpoint* ck, const std::string& blob, MpiContext& mpi,
                         std::vector<std::string>& findings, uint64_t& compared) {
  const ImportPlan plan = plan_from_json(json::from_msgpack(blob));
  SafetensorsSource source(plan.catalog);
  const auto engine_ptr = make_copy_engine(opt.device, opt.buffer_bytes);
  CopyEngine& engine = *engine_ptr;
  engine.allow_overflow(true);  // it recomputes what a conversion wrote, Inf included
  if (ck->format == "torch_dist") {
    // One copy of every element is stored: compare the canonical tensors.
    for (const auto& p : check_torch_dist(*ck, opt.verify_checksums, mpi.rank(), mpi.size()))
      findings.push_back("FILE    " + p);
    std::vector<LocalTensorRef> refs;
    for (uint32_t i = 0; i < plan.shards.size(); ++i)
      for (uint32_t k = 0; k < plan.shards[i].tensors.size(); ++k) refs.push_back({i, k});
    TorchDistSource stored(*ck, refs);
    uint32_t id = 0;
    std::vector<uint64_t> sizes;
    for (const auto& r : refs) sizes.push_back(plan.shards[r.shard].tensors[r.tensor].nbytes());
    const auto owner = assign(sizes, mpi.size());
    for (const auto& r : refs) {
      const uint32_t my = id++;
      const LocalTensor& t = plan.shards[r.shard].tensors[r.tensor];
      if (!t.canonical || owner[my] != mpi.rank()) continue;
      const LocalTensor& s = ck->shards.at(r.shard).tensors.at(r.tensor);
      MB_CHECK(s.name == t.name, "internal: plans disagree on {}", t.name);
      if (s.dtype != t.dtype && opt.atol == 0 && opt.rtol == 0) {
        findings.push_back(fmt::format("DTYPE   {}: HF gives {}, the checkpoint stores {} (compare with "
                                       "--atol/--rtol)", t.global_name, dtype_name(t.dtype), dtype_name(s.dtype)));
        continue;
      }
      try {
        TensorCompare cmp(hf_is_a ? t.dtype : s.dtype, hf_is_a ? s.dtype : t.dtype, opt.atol, opt.rtol);
        StoredCompareSink sink(stored, my, t, s.dtype, cmp, hf_is_a);
        engine.run({t.name, &t.segments, t.rows(), t.cols(), t.source_dtype, t.dtype, t.op}, source, sink);
        ++compared;
        if (cmp.differing())
          findings.push_back(fmt::format("DIFF    {}: {}", t.global_name, cmp.describe(t.shape)));
      } catch (const std::exception& e) {
        findings.push_back(fmt::format("FILE    {}: {}", t.global_name, e.what()));
      }
    }
    return;
  }
  for (size_t i = 0; i < plan.shards.size(); ++i) {
    const ShardPlan& s = plan.shards[i];
    if (s.rank != mpi.rank()) continue;
    for (const auto& p : check_shard_file(*ck, i, opt.verify_checksums)) findings.push_back("FILE    " + p);
    const fs::path path = meg / s.coord.file_name();
    if (!fs::exists(path)) continue;
    try {
      Hdf5ShardReader r(path);
      for (const LocalTensor& t : s.tensors) {
        const ShardDatasetInfo* d = r.find(t.name);
        if (!d || d->shape != t.shape || d->dtype != t.dtype) continue;  // reported above
        TensorCompare cmp(hf_is_a ? t.dtype : d->dtype, hf_is_a ? d->dtype : t.dtype, opt.atol, opt.rtol);
        CompareSink sink(r, t, cmp, hf_is_a);
        engine.run({t.name, &t.segments, t.rows(), t.cols(), t.source_dtype, t.dtype, t.op}, source, sink);
        ++compared;
        if (cmp.differing())
          findings.push_back(fmt::format("DIFF    {}:{} ({}): {}", s.coord.file_name(), t.name,
                                         t.global_name, cmp.describe(t.shape)));
      }
    } catch (const std::exception& e) {
      findings.push_back(fmt::format("FILE    {}: {}", path.string(), e.what()));
    }
  }
}

// Compares two checkpoints as a Step for the driver (step_driver.hpp): the
// plan is both catalogues (HF/HF) or what every shard must hold (HF/Megatron);
// every rank compares its share; rank 0 prints the findings. Nothing is written.
class VerifyStep : public Step {
 public:
  explicit VerifyStep(const VerifyOptions& opt) : opt_(opt) {}

  void open(MpiContext&) override {
    for (const auto& p : {opt_.a, opt_.b}) {
      MB_CHECK(fs::is_directory(p), "{} is not a directory", p.string());
      MB_CHECK(!is_unfinished_output(p),
               "{} is an unfinished output, the staging directory of an interrupted or failed "
               "job: resume it (the same import with --resume) or run the job again; verify "
               "reads finished outputs only",
               p.string());
    }
    const bool am = is_megatron(opt_.a), bm = is_megatron(opt_.b);
    MB_CHECK(!(am && bm),
             "both {} and {} are Megatron checkpoints; verify compares HF with HF or HF with "
             "Megatron (export one of them first)",
             opt_.a.string(), opt_.b.string());
    if (!am && !bm) return;
    hf_is_a_ = bm;
    hf_ = bm ? opt_.a : opt_.b;
    meg_ = bm ? opt_.b : opt_.a;
    ForeignCheckpointOptions foreign;
    foreign.hf_config = opt_.hf_config.empty() ? hf_ / "config.json" : opt_.hf_config;
    foreign.experts = detect_expert_layouts(read_hf_catalog(hf_));
    ck_ = open_megatron_checkpoint(meg_, &foreign);
  }

  std::string plan(MpiContext& mpi) override {
    return ck_ ? plan_hf_megatron(hf_, *ck_, hf_is_a_, mpi.size(), notes_) : plan_hf_hf(opt_);
  }

  void receive(std::string blob, MpiContext&) override { blob_ = std::move(blob); }

  void execute(MpiContext& mpi) override {
    // Rank 0's notes from planning come first.
    for (size_t p = 0, q; p < notes_.size(); p = q + 1) {
      q = notes_.find('\n', p);
      findings_.push_back(notes_.substr(p, q - p));
    }
    if (ck_)
      compare_hf_megatron(opt_, meg_, hf_is_a_, &*ck_, blob_, mpi, findings_, compared_);
    else
      compare_hf_hf(opt_, blob_, mpi, findings_, compared_);
  }

  std::string settle(MpiContext& mpi) override {
    const json mine = {{"findings", findings_}, {"compared", compared_}};
    gathered_ = mpi.gather(mine.dump());
    return {};
  }

  void commit(MpiContext&) override {
    std::vector<std::string> every;
    uint64_t total = 0;
    for (const auto& g : gathered_) {
      const json j = json::parse(g);
      for (const auto& f : j.at("findings")) every.push_back(f.get<std::string>());
      total += j.at("compared").get<uint64_t>();
    }
    std::sort(every.begin(), every.end());
    std::string out = fmt::format("verify A={} B={} ({})\n", opt_.a.string(), opt_.b.string(),
                                  opt_.atol == 0 && opt_.rtol == 0
                                      ? std::string("bit-exact")
                                      : fmt::format("atol {:g}, rtol {:g}", opt_.atol, opt_.rtol));
    for (const auto& f : every) out += f + "\n";
    if (every.empty())
      out += fmt::format("OK: {} tensors compared, all identical\n", total);
    else
      out += fmt::format("FAILED: {} problem(s); {} tensors compared\n", every.size(), total);
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    code_ = every.empty() ? 0 : 1;
  }

  // 0 identical, 1 differences found.
  int exit_code() const override { return code_; }

  std::string summary(const std::string& blob, int) const override {
    if (!ck_) {
      const json j = json::parse(blob);
      return fmt::format("verify {} ({} tensors) with {} ({} tensors), tensor by tensor\n",
                         opt_.a.string(), j.at("a").at("tensors").size(), opt_.b.string(),
                         j.at("b").at("tensors").size());
    }
    const ImportPlan p = plan_from_json(json::from_msgpack(blob));
    uint64_t tensors = 0;
    for (const auto& s : p.shards) tensors += s.tensors.size();
    return fmt::format("verify {} with {} ({}, {}): {} stored tensors through the mapping\n",
                       hf_.string(), meg_.string(), ck_->format, ck_->layout.describe(), tensors);
  }

 private:
  const VerifyOptions& opt_;
  fs::path hf_, meg_;
  bool hf_is_a_ = false;
  std::optional<MegatronCheckpoint> ck_;
  std::string notes_, blob_;
  std::vector<std::string> findings_, gathered_;
  uint64_t compared_ = 0;
  int code_ = 0;
};

}  // namespace

std::unique_ptr<Step> make_verify_step(const VerifyOptions& opt) {
  return std::make_unique<VerifyStep>(opt);
}

int run_verify(const VerifyOptions& opt, MpiContext& mpi) {
  VerifyStep step(opt);
  return run_step(step, mpi);
}

}  // namespace mb
