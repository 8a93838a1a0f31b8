#include "pipelines/export_pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <system_error>

#include "checkpoint/megatron_checkpoint.hpp"
#include "checkpoint/shard_writer.hpp"
#include "checkpoint/staged_output.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/hash_relay.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "engine/read_ahead.hpp"
#include "formats/safetensors/safetensors_header.hpp"
#include "pipelines/step_driver.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    throw Error("bad size '{}' (expected e.g. 5GB, 500MB or a byte count)", s);
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  static const std::map<std::string, double> units = {
      {"", 1},       {"B", 1},          {"KB", 1e3},          {"MB", 1e6},
      {"GB", 1e9},   {"TB", 1e12},      {"KIB", 1024.0},      {"MIB", 1048576.0},
      {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  auto it = units.find(unit);
  MB_CHECK(it != units.end() && v > 0, "bad size '{}' (expected e.g. 5GB, 500MB or a byte count)", s);
  // Checked in floating point first: converting a double outside uint64's
  // range is undefined behaviour ("99999999999999999999GB", "inf", "nan").
  const double bytes = v * it->second;
  constexpr double kMax = 4611686018427387904.0;  // 2^62 bytes (4 EiB)
  MB_CHECK(std::isfinite(bytes) && bytes >= 1 && bytes <= kMax,
           "size '{}' is out of range: expected 1 byte to 4 EiB (e.g. 5GB)", s);
  return static_cast<uint64_t>(bytes);
}

namespace {

// One HF tensor to write: where it goes and where its elements come from.
struct ExportTensor {
  std::string name;
  Shape shape;
  DType dtype = DType::BF16;         // as written
  DType stored_dtype = DType::BF16;  // in the shards
  ElementOp op = ElementOp::None;
  uint32_t file = 0;
  uint64_t offset = 0;  // absolute, in the file
  int rank = 0;
  std::vector<Segment> segments;  // src indexes ExportPlan::refs

  uint64_t nbytes() const { return numel(shape) * dtype_size(dtype); }
};

struct ExportPlan {
  std::vector<std::string> files;
  std::vector<std::string> headers;  // the safetensors prefix of each file
  std::vector<ExportTensor> tensors;
  std::vector<LocalTensorRef> refs;
  // model.safetensors.index.json, unless the source had none and the export
  // keeps its single file (transformers' save_pretrained of a small model).
  bool write_index = true;
};

// Byte offsets inside each file, in the reference writer's order, and each
// file's header. Deterministic, so every rank computes the same layout.
void lay_out_files(ExportPlan& plan) {
  plan.headers.assign(plan.files.size(), {});
  for (uint32_t f = 0; f < plan.files.size(); ++f) {
    std::vector<SafetensorsEntry> entries;
    std::map<std::string, size_t> idx;
    for (size_t i = 0; i < plan.tensors.size(); ++i)
      if (plan.tensors[i].file == f) {
        idx[plan.tensors[i].name] = i;
        entries.push_back({plan.tensors[i].name, plan.tensors[i].dtype, plan.tensors[i].shape, 0, 0});
      }
    sort_like_safetensors(entries);
    plan.headers[f] = build_safetensors_header(entries, {{"format", "pt"}});
    for (const auto& e : entries) plan.tensors[idx[e.name]].offset = plan.headers[f].size() + e.begin;
  }
}

json to_json(const ExportPlan& p) {
  json ts = json::array();
  for (const auto& t : p.tensors)
    ts.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", dtype_name(t.dtype)},
                  {"stored", dtype_name(t.stored_dtype)}, {"op", op_name(t.op)}, {"file", t.file},
                  {"offset", t.offset}, {"rank", t.rank}, {"segments", segments_to_json(t.segments)}});
  json refs = json::array();
  for (const auto& r : p.refs) refs.push_back({r.shard, r.tensor});
  return {{"files", p.files},
          {"tensors", std::move(ts)},
          {"refs", std::move(refs)},
          {"write_index", p.write_index}};
}

ExportPlan from_json(const json& j) {
  ExportPlan p;
  p.files = j.at("files").get<std::vector<std::string>>();
  p.write_index = j.at("write_index").get<bool>();
  for (const auto& t : j.at("tensors")) {
    ExportTensor x;
    x.name = t.at("name").get<std::string>();
    x.shape = t.at("shape").get<Shape>();
    x.dtype = *dtype_from_name(t.at("dtype").get<std::string>());
    x.stored_dtype = *dtype_from_name(t.at("stored").get<std::string>());
    x.op = op_from_name(t.at("op").get<std::string>());
    x.file = t.at("file").get<uint32_t>();
    x.offset = t.at("offset").get<uint64_t>();
    x.rank = t.at("rank").get<int>();
    x.segments = segments_from_json(t.at("segments"));
    p.tensors.push_back(std::move(x));
  }
  for (const auto& r : j.at("refs")) p.refs.push_back({r.at(0).get<uint32_t>(), r.at(1).get<uint32_t>()});
  lay_out_files(p);
  return p;
}

// The HF tensors to produce: the source's own list when the expert layouts are
// unchanged, otherwise the schema of the requested layouts.
json target_tensors(const MegatronCheckpoint& ck, const ExpertLayouts& target, bool& same_files) {
  const json& src = ck.manifest.at("source");
  std::set<std::string> unconsumed;
  for (const auto& u : src.at("unconsumed")) unconsumed.insert(u.get<std::string>());
  if (!unconsumed.empty())
    log::warn("{} HF tensor(s) were left out at import (--not-strict) and cannot be exported, e.g. {}",
              unconsumed.size(), *unconsumed.begin());
  json out = json::array();
  if (target.main == ck.experts.main && target.mtp == ck.experts.mtp) {
    same_files = true;
    for (const auto& t : src.at("tensors"))
      if (!unconsumed.count(t.at("name").get<std::string>())) out.push_back(t);
    return out;
  }
  same_files = false;
  std::map<std::string, std::string> dtypes;  // source dtype per name, and per expert block
  for (const auto& t : src.at("tensors")) {
    const std::string n = t.at("name").get<std::string>();
    dtypes[n] = t.at("dtype").get<std::string>();
    const auto e = n.find(".experts.");
    if (e != std::string::npos) dtypes.emplace(n.substr(0, e), t.at("dtype").get<std::string>());
  }
  for (const auto& s : qwen35_hf_schema(ck.model, target, ck.source.find("lm_head.weight") != nullptr)) {
    std::string dt = std::string(dtype_name(s.dtype));
    if (auto it = dtypes.find(s.name); it != dtypes.end()) {
      dt = it->second;
    } else if (auto e = s.name.find(".experts."); e != std::string::npos) {
      if (auto jt = dtypes.find(s.name.substr(0, e)); jt != dtypes.end()) dt = jt->second;
    }
    out.push_back({{"name", s.name}, {"dtype", dt}, {"shape", s.shape}, {"file", ""}});
  }
  return out;
}

// The output files (plan.files, plan.write_index) and each HF tensor's file:
// the source's names and shard map, or a fresh split by size.
std::vector<uint32_t> assign_export_files(ExportPlan& plan, const MegatronCheckpoint& ck,
                                          const HfCatalog& cat,
                                          const std::vector<std::string>& src_files,
                                          bool keep_source_files, const ExportOptions& opt) {
  std::vector<uint32_t> file_of(cat.tensors.size(), 0);
  if (keep_source_files && !src_files.empty()) {
    plan.files = src_files;
    plan.write_index = src_files.size() > 1 || ck.manifest.at("source").value("has_index", true);
    for (size_t i = 0; i < cat.tensors.size(); ++i) file_of[i] = cat.tensors[i].file;
    return file_of;
  }
  const uint64_t limit = opt.max_shard_bytes.value_or(5ull << 30);
  std::vector<std::vector<size_t>> groups(1);
  uint64_t fill = 0;
  for (size_t i = 0; i < cat.tensors.size(); ++i) {
    if (fill > 0 && fill + cat.tensors[i].nbytes > limit) {
      groups.emplace_back();
      fill = 0;
    }
    groups.back().push_back(i);
    fill += cat.tensors[i].nbytes;
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    plan.files.push_back(
        fmt::format("model.safetensors-{:05d}-of-{:05d}.safetensors", g + 1, groups.size()));
    for (size_t i : groups[g]) file_of[i] = static_cast<uint32_t>(g);
  }
  return file_of;
}

// Balances the ranks by bytes written, largest tensors first.
void balance_export_ranks(ExportPlan& plan, int world) {
  std::vector<size_t> order(plan.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return plan.tensors[a].nbytes() > plan.tensors[b].nbytes();
  });
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  for (size_t i : order) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    plan.tensors[i].rank = static_cast<int>(r);
    load[r] += plan.tensors[i].nbytes();
  }
}

ExportPlan build_export_plan(const MegatronCheckpoint& ck, const ExportOptions& opt, int world) {
  if (ck.foreign && ck.mtp_not_converted > 0)
    log::warn(
        "{}: {} declares {} MTP layer(s) but the checkpoint holds no MTP key: exporting the "
        "model without MTP (config.json with mtp_num_hidden_layers 0)",
        ck.dir.string(), opt.hf_config.string(), ck.mtp_not_converted);
  ExpertLayouts target = ck.experts;
  if (opt.experts) target.main = *opt.experts;
  if (opt.mtp_experts) target.mtp = *opt.mtp_experts;
  bool same_files = false;
  const json tensors = target_tensors(ck, target, same_files);
  const auto src_files = ck.manifest.at("source").at("files").get<std::vector<std::string>>();
  HfCatalog cat = virtual_catalog(tensors, src_files);

  // The Megatron tensors do not depend on the HF expert layout, so planning
  // against the target catalogue gives segments into the same shard datasets.
  std::vector<ShardPlan> shards;
  for (size_t i = 0; i < ck.shards.size(); ++i) {
    ShardPlan s;
    s.coord = ck.shards[i].coord;
    s.tensors = plan_shard_tensors(ck.model, cat, target, ck.layout, s.coord, ck.cast);
    MB_CHECK(s.tensors.size() == ck.shards[i].tensors.size(),
             "internal: expert layout changes the Megatron tensors of {}", s.coord.file_name());
    shards.push_back(std::move(s));
  }
  const ExportIndex index = build_export_index(shards, cat.tensors.size());

  ExportPlan plan;
  plan.refs = index.refs;
  const std::vector<uint32_t> file_of =
      assign_export_files(plan, ck, cat, src_files, same_files && !opt.max_shard_bytes, opt);
  for (size_t i = 0; i < cat.tensors.size(); ++i) {
    const HfTensor& h = cat.tensors[i];
    ExportTensor t;
    t.name = h.name;
    t.shape = h.shape;
    t.dtype = opt.dtype.value_or(h.dtype);
    t.stored_dtype = index.stored_dtype[i];
    t.op = index.op[i];
    t.file = file_of[i];
    const Segment whole{static_cast<uint32_t>(i), 0, 0, 0, 0, h.rows(), h.cols()};
    t.segments = compose_through({whole}, index);
    uint64_t area = 0;
    for (const auto& s : t.segments) area += s.rows * s.cols;
    MB_CHECK(area == h.rows() * h.cols(),
             "HF tensor '{}' cannot be rebuilt: the checkpoint holds {} of its {} elements",
             h.name, area, h.rows() * h.cols());
    plan.tensors.push_back(std::move(t));
  }
  lay_out_files(plan);
  balance_export_ranks(plan, world);
  return plan;
}

// One tensor's bytes in an output file that other ranks fill around it.
// One tensor's region of an output file, its rows in order, through the
// file's write-behind writer.
class FileRegionSink : public RowSink {
 public:
  FileRegionSink(StreamingRegionWriter& w, const std::string& tensor, uint64_t row_bytes)
      : w_(w), tensor_(tensor), row_bytes_(row_bytes) {}
  void write(uint64_t row0, uint64_t rows, const void* data) override {
    MB_CHECK(row0 == next_row_, "internal: {}: rows from {} written after row {}", tensor_, row0,
             next_row_);
    w_.write(data, rows * row_bytes_);
    next_row_ += rows;
  }

 private:
  StreamingRegionWriter& w_;
  const std::string& tensor_;
  uint64_t row_bytes_, next_row_ = 0;
};

}  // namespace

namespace {

// Megatron shards -> HF safetensors, as a Step for the driver
// (step_driver.hpp): the plan says which rank writes which HF tensor where;
// the source is the shard files; the sink regions of the output files that
// rank 0 creates at full size.
class ExportStep : public Step {
 public:
  explicit ExportStep(const ExportOptions& opt) : opt_(opt), out_(opt.hf_path, "export") {}

  // Every rank opens the checkpoint (it is small: the manifest).
  // Rank 0 first makes sure the output is apart from every input.
  void open(MpiContext& mpi) override {
    if (mpi.is_root())
      out_.check_apart_from(
          {{opt_.megatron_path, "--megatron-path"}, {opt_.hf_config, "--hf-config"}});
    ForeignCheckpointOptions foreign;
    foreign.hf_config = opt_.hf_config;
    if (opt_.experts) foreign.experts.main = *opt_.experts;
    if (opt_.mtp_experts) foreign.experts.mtp = *opt_.mtp_experts;
    ck_ = open_megatron_checkpoint(opt_.megatron_path, &foreign);
  }

  // Rank 0 keeps its plan for prepare().
  std::string plan(MpiContext& mpi) override {
    out_.check_apart_from(checkpoint_files(*ck_));
    root_plan_ = build_export_plan(*ck_, opt_, mpi.size());
    const auto packed = json::to_msgpack(to_json(*root_plan_));
    return std::string(packed.begin(), packed.end());
  }

  // Nothing is written unless every shard file is present and of this layout.
  // The checksums are checked beside the conversion (settle): reading every
  // file once more before starting would add a full read of the checkpoint
  // when it is not in the page cache. Nothing is committed unless they match.
  std::string check(MpiContext& mpi) override {
    return validate_shard_files(*ck_, /*checksums=*/false, mpi);
  }

  // Rank 0 creates every file with its header at full size; then all ranks
  // fill in their tensors. The plan is parsed here too (rank 0 has it).
  void prepare(MpiContext&) override {
    out_.prepare(opt_.overwrite);
    const ExportPlan& plan = *root_plan_;
    for (size_t f = 0; f < plan.files.size(); ++f) {
      const fs::path path = resolve_inside(out_.staging(), plan.files[f], "output file");
      File file(path, File::Mode::Write);
      file.pwrite_exact(plan.headers[f].data(), plan.headers[f].size(), 0);
      uint64_t end = plan.headers[f].size();
      for (const auto& t : plan.tensors)
        if (t.file == f) end = std::max(end, t.offset + t.nbytes());
      file.truncate(end);
    }
  }

  void receive(std::string blob, MpiContext& mpi) override {
    plan_ = from_json(json::from_msgpack(blob));
    std::string().swap(blob);  // the plan is parsed; its bytes are not needed again
    uint64_t total_bytes = 0;
    for (const auto& t : plan_.tensors) total_bytes += t.nbytes();
    progress_.emplace(mpi, "export", total_bytes, plan_.tensors.size());
    // An HDF5 checkpoint with per-tensor checksums is checked as it is read
    // (execute); others are hashed whole beside the conversion.
    streamed_ = opt_.verify_checksums && checksums_streamable(*ck_);
    if (opt_.verify_checksums && !streamed_) {
      auto check = [this, &mpi] { return checksum_problems(*ck_, mpi.rank(), mpi.size()); };
      try {
        checksums_ = std::async(std::launch::async, check);
      } catch (const std::system_error&) {
        // No thread under load: the checksums run after the conversion (settle).
        checksums_ = std::async(std::launch::deferred, check);
      }
    }
  }

  void execute(MpiContext& mpi) override;

  std::string settle(MpiContext& mpi) override {
    progress_->finish();
    std::string corrupt = stream_problem_;
    if (checksums_.valid()) {
      try {
        const auto found = checksums_.get();
        if (!found.empty()) corrupt = found.front();
      } catch (const std::exception& e) {
        corrupt = e.what();
      }
    }
    // Tensor bytes each rank wrote into each file, summed over ranks before
    // commit: every byte of every file must have been written.
    file_written_all_ = mpi.gather(json(file_written_).dump());
    total_written_ = mpi.all_reduce_sum(written_);
    total_tensors_ = mpi.all_reduce_sum(tensors_);
    max_rss_ = mpi.all_reduce_max(peak_rss_bytes());
    return corrupt;
  }

  void discard() override {
    std::error_code ec;
    fs::remove_all(out_.staging(), ec);
  }

  void commit(MpiContext&) override;

  fs::path staging() const override { return out_.staging(); }

  std::string summary(const std::string& blob, int world) const override {
    const ExportPlan p = from_json(json::from_msgpack(blob));
    std::vector<uint64_t> load(static_cast<size_t>(world), 0);
    for (const auto& t : p.tensors) load[static_cast<size_t>(t.rank)] += t.nbytes();
    return fmt::format("export {} -> {}: {} tensors in {} files\n", opt_.megatron_path.string(),
                       out_.target().string(), p.tensors.size(), p.files.size()) +
           balance_report(load, "writes");
  }

  std::vector<fs::path> sources() const override {
    std::vector<fs::path> s = checkpoint_sources(*ck_);
    if (!opt_.hf_config.empty()) s.push_back(opt_.hf_config);
    return s;
  }

 private:
  const ExportOptions& opt_;
  const StagedOutput out_;
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  std::optional<MegatronCheckpoint> ck_;
  std::optional<ExportPlan> root_plan_;
  ExportPlan plan_;
  std::optional<Progress> progress_;
  std::future<std::vector<std::string>> checksums_;
  bool streamed_ = false;       // checksums checked from the bytes as read
  std::string stream_problem_;  // what that found
  uint64_t written_ = 0, tensors_ = 0, total_written_ = 0, total_tensors_ = 0, max_rss_ = 0;
  std::vector<uint64_t> file_written_;          // this rank's tensor bytes per output file
  std::vector<std::string> file_written_all_;  // rank 0: every rank's, gathered in settle

};

void ExportStep::execute(MpiContext& mpi) {
  // A separate checksum pass (not streamed) shares the page cache with the reads.
  const IoMode src_io = source_io_mode(opt_.io, opt_.verify_checksums && !streamed_);
  // The direct I/O buffers (the source's read windows and read-ahead slots,
  // local_source_io_buffers; the output's two write-behind buffers) are taken
  // out of the configured buffer.
  const int io_buffers = local_source_io_buffers(src_io) + (opt_.io != IoMode::Buffered ? 2 : 0);
  const auto engine = make_copy_engine(opt_.device, engine_buffer_bytes(opt_.buffer_bytes, io_buffers));
  engine->allow_overflow(opt_.allow_overflow);
  engine->on_block([&](uint64_t b) { progress_->add_bytes(b); });
  file_written_.assign(plan_.files.size(), 0);
  // Checked as read: each source's bytes (an HDF5 tensor's rows, a torch_dist
  // chunk's bytes) hashed by the ranks that read them, the hash state handed
  // from rank to rank (verify_chains.hpp); the source plans who hashes what
  // from every rank's reads. The relay is constructed on every rank
  // (collective), destroyed after the source.
  HashRelay relay(mpi);
  std::vector<SourceReads> reads;
  if (streamed_) {
    for (const ExportTensor& t : plan_.tensors) reads.push_back({t.rank, &t.segments});
  }
  const auto source = open_local_source(*ck_, plan_.refs, io_config(src_io, opt_.buffer_bytes),
                                        streamed_, {&relay, &reads});
  std::map<uint32_t, RegionFile> files;
  // The writes of one tensor overlap the reads of the next (write-behind); one
  // writer at a time, for the file of the tensor being written, so that its
  // two buffers are all the memory writing takes.
  std::unique_ptr<StreamingRegionWriter> writer;
  uint32_t writer_file = UINT32_MAX;
  // The reads of what follows are issued while a block is converted and
  // written (the source loads them directly, on a helper thread), also
  // within a tensor: an HF tensor of fused experts is hundreds of chunks,
  // read one after another.
  std::vector<const std::vector<Segment>*> jobs;
  for (const ExportTensor& t : plan_.tensors)
    if (t.rank == mpi.rank()) jobs.push_back(&t.segments);
  ReadAhead ahead(*source, std::move(jobs), kReadAheadBytes, /*follows_reads=*/true);
  size_t next = 0;
  for (const ExportTensor& t : plan_.tensors) {
    if (t.rank != mpi.rank()) continue;
    ahead.before(next++);
    auto it = files.find(t.file);
    if (it == files.end())
      it = files.emplace(t.file, RegionFile(out_.staging() / plan_.files[t.file], opt_.io)).first;
    if (writer_file != t.file) {
      if (writer) writer->finish();
      writer.reset();
      writer = std::make_unique<StreamingRegionWriter>(
          it->second, it->second.direct() ? direct_io_chunk_bytes(opt_.buffer_bytes) : 0);
      writer_file = t.file;
    }
    writer->begin(t.offset, t.offset + t.nbytes());
    FileRegionSink sink(*writer, t.name, cols_2d(t.shape) * dtype_size(t.dtype));
    CopyJob job{t.name, &t.segments, rows_2d(t.shape), cols_2d(t.shape), t.stored_dtype, t.dtype, t.op};
    try {
      engine->run(job, ahead, sink);
      writer->end();
    } catch (...) {
      rethrow_with_context(fmt::format("exporting {}", t.name));
    }
    file_written_[t.file] += t.nbytes();
    written_ += t.nbytes();
    ++tensors_;
    progress_->add_tensor();
    test_hook_after_tensor(mpi.rank());
  }
  if (writer) writer->finish();
  writer.reset();
  log_source_reads(*source, "export");
  for (auto& [f, file] : files) file.file().fsync();
  if (streamed_) stream_problem_ = source_checksum_problem(*source, mpi.rank(), mpi.size());
}

void ExportStep::commit(MpiContext&) {
  json weight_map = json::object();
  uint64_t total = 0;
  for (const auto& t : plan_.tensors) {
    weight_map[t.name] = plan_.files[t.file];
    total += t.nbytes();
  }
  MB_CHECK(total_tensors_ == plan_.tensors.size(), "internal: {} of {} tensors written",
           total_tensors_, plan_.tensors.size());
  // Every byte of every file written, and each file of its final size.
  std::vector<uint64_t> done(plan_.files.size(), 0), want(plan_.files.size(), 0),
      end(plan_.files.size(), 0);
  for (const auto& g : file_written_all_) {
    const auto v = json::parse(g).get<std::vector<uint64_t>>();
    for (size_t f = 0; f < v.size() && f < done.size(); ++f) done[f] += v[f];
  }
  for (const auto& t : plan_.tensors) {
    want[t.file] += t.nbytes();
    end[t.file] = std::max(end[t.file], t.offset + t.nbytes());
  }
  for (size_t f = 0; f < plan_.files.size(); ++f) {
    end[f] = std::max<uint64_t>(end[f], plan_.headers[f].size());
    const fs::path path = out_.staging() / plan_.files[f];
    MB_CHECK(done[f] == want[f], "internal: {}: {} of its {} tensor bytes were written; not committed",
             path.string(), done[f], want[f]);
    MB_CHECK(fs::file_size(path) == end[f], "internal: {} has {} bytes, expected {}; not committed",
             path.string(), fs::file_size(path), end[f]);
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  if (plan_.write_index)
    write_file_atomic(out_.staging() / "model.safetensors.index.json", index.dump(2) + "\n");
  write_file_atomic(out_.staging() / "config.json",
                    ck_->manifest.at("model").at("hf_config").dump(2) + "\n");
  for (const auto& f : ck_->source.extra_files) {
    const fs::path from = resolve_inside(ck_->dir / "hf", f, "extra file");
    std::string why;
    if (!is_hf_side_file(f))
      log::warn("{}: {} is not a known HF side file; not carried into the export", from.string(), f);
    else if (!fs::exists(fs::symlink_status(from)))
      log::warn("{} is missing; {} is not carried into the export", from.string(), f);
    else if (!side_file_is_safe(ck_->dir / "hf", f, why))
      log::warn("{}: {}; not carried into the export", from.string(), why);
    else
      copy_regular_file(from, out_.staging() / f);
  }
  out_.commit();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  log::info("export done: {} tensors in {} files ({}) under {}", plan_.tensors.size(),
            plan_.files.size(), human_bytes(static_cast<double>(total_written_)),
            out_.target().string());
  log::info("{:.2f} s, {:.2f} GB/s, peak RSS per rank {}", secs,
            static_cast<double>(total_written_) / secs / 1e9,
            human_bytes(static_cast<double>(max_rss_)));
}

}  // namespace

std::unique_ptr<Step> make_export_step(const ExportOptions& opt) {
  return std::make_unique<ExportStep>(opt);
}

int run_export(const ExportOptions& opt, MpiContext& mpi) {
  ExportStep step(opt);
  return run_step(step, mpi);
}

}  // namespace mb
