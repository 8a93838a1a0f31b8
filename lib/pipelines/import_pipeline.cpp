#include "pipelines/import_pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>

#include "checkpoint/manifest.hpp"
#include "checkpoint/manifest_check.hpp"
#include "checkpoint/rank_shards.hpp"
#include "checkpoint/safetensors_source.hpp"
#include "checkpoint/shard_writer.hpp"
#include "checkpoint/side_by_side.hpp"
#include "checkpoint/staged_output.hpp"
#include "checkpoint/torch_dist_output.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/path_safety.hpp"
#include "dist/forwarder.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "engine/copy_engine.hpp"
#include "engine/read_ahead.hpp"
#include "engine/read_once.hpp"
#include "layout/import_plan.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/job_config.hpp"
#include "pipelines/plan_report.hpp"
#include "pipelines/step_driver.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void copy_hf_side_files(const ImportPlan& plan, const fs::path& staging) {
  const fs::path dst = staging / "hf";
  fs::create_directories(dst);
  write_file_atomic(dst / "config.json", plan.config_json.dump(2) + "\n");
  for (const auto& f : plan.catalog.extra_files)
    copy_regular_file(resolve_inside(plan.catalog.dir, f, "extra file"), dst / f);
}

// Every file the import reads, by name inside the HF directory.
std::vector<std::string> source_file_names(const HfCatalog& c) {
  std::vector<std::string> names = {"config.json"};
  if (c.has_index) names.push_back("model.safetensors.index.json");
  names.insert(names.end(), c.files.begin(), c.files.end());
  names.insert(names.end(), c.extra_files.begin(), c.extra_files.end());
  return names;
}

// What identifies each source file's contents without reading them (size,
// mtime, ctime, inode): a resume after any of them changed is refused.
json source_identities(const HfCatalog& c) {
  json ids = json::object();
  for (const auto& name : source_file_names(c)) ids[name] = file_identity(c.dir / name);
  return ids;
}

}  // namespace

std::optional<DType> import_cast(const ImportOptions& opt, const ModelConfig& model) {
  return opt.dtype_model ? std::optional<DType>(model.dtype) : opt.dtype;
}

void set_import_dtype(ImportOptions& opt, const std::string& value) {
  opt.dtype_model = value == "model";
  opt.dtype = opt.dtype_model ? std::nullopt : parse_dtype_option(value);
}

namespace {

// HF safetensors -> HDF5 shards or a torch_dist checkpoint, as a Step for the
// driver (step_driver.hpp): the plan is the import plan; the source the HF
// files; the sink one HDF5 file per shard, one .distcp file per rank, or
// read-once forwarding.
class ImportStep : public Step {
 public:
  ImportStep(const ImportOptions& opt)
      : opt_(opt), out_(opt.out, "import"), dist_(opt.format == "torch_dist") {}

  void open(MpiContext& mpi) override {
    MB_CHECK(opt_.format == "hdf5" || opt_.format == "torch_dist",
             "unknown output format '{}' (supported: hdf5, torch_dist)", opt_.format);
    MB_CHECK(!(opt_.read_once && opt_.resume), "--read-once and --resume cannot be combined (read-once "
             "shards are all written together)");
    if (opt_.read_once && dist_ && mpi.is_root())
      log::info("torch_dist stores every element once, so each HF byte is read once already");
  }

  // Rank 0 reads config.json, the index and every header once, and plans.
  std::string plan(MpiContext& mpi) override {
    out_.check_apart_from({{opt_.hf_path, "--hf-path"}});
    const ModelConfig model = load_model_config(opt_.hf_path / "config.json");
    validate_layout(opt_.layout, model);  // before any tensor I/O
    HfCatalog catalog = read_hf_catalog(opt_.hf_path);
    PlanRequest req{opt_.layout, import_cast(opt_, model), opt_.strict, mpi.size()};
    ImportPlan plan = build_import_plan(model, std::move(catalog), req);
    // torch_dist stores each element once: balance by the canonical bytes.
    if (dist_) assign_shards_to_ranks(plan.shards, mpi.size(), /*canonical_only=*/true);
    // What must match for a partial output to be resumed: the plan's
    // inputs, and for torch_dist the rank count (files are per rank).
    json fp = plan_to_json(plan);
    fp.erase("shards");
    fp["format"] = opt_.format;
    fp["ranks"] = dist_ ? mpi.size() : 0;
    const std::string fps = fp.dump();
    fingerprint_ = hash_hex(hash_bytes(fps.data(), fps.size()));
    // A source file reached through a symlink may live anywhere: the
    // output must not hold it either.
    std::vector<NamedPath> files;
    for (const auto& name : source_file_names(plan.catalog))
      files.push_back({plan.catalog.dir / name, "source file"});
    out_.check_apart_from(files);
    source_ids_ = source_identities(plan.catalog);
    // The directory too: its listing decides which side files are copied.
    sources_ = {plan.catalog.dir};
    for (const auto& f : files) sources_.push_back(f.path);
    const auto packed = json::to_msgpack(plan_to_json(plan));
    return std::string(packed.begin(), packed.end());
  }

  void prepare(MpiContext&) override {
    if (out_.prepare(opt_.overwrite, opt_.resume, fingerprint_, source_ids_))
      log::info("resuming the partial output in {}", out_.staging().string());
    if (dist_) fs::create_directories(out_.staging() / kTorchDistIterDir);
  }

  void receive(std::string blob, MpiContext& mpi) override {
    plan_ = plan_from_json(json::from_msgpack(blob));
    uint64_t total_bytes = 0, total_tensors = 0;
    for (const auto& s : plan_.shards)
      for (const auto& t : s.tensors)
        if (!dist_ || t.canonical) {
          total_bytes += t.nbytes();
          ++total_tensors;
        }
    progress_.emplace(mpi, "import", total_bytes, total_tensors);
  }

  void execute(MpiContext& mpi) override {
    // The direct I/O buffers (a read bounce buffer and, but in read-once
    // mode, the read-ahead slots; for torch_dist an append buffer, for HDF5
    // the two buffers of the write-behind of each shard open at once) come
    // out of the configured buffer.
    const IoConfig io = io_config(opt_.io, opt_.buffer_bytes);
    const bool direct = opt_.io != IoMode::Buffered;
    open_at_once_ = shards_open_at_once(opt_.buffer_bytes, plan_.shards_of_rank(mpi.rank()).size());
    const int hdf5_buffers =
        1 + 2 * static_cast<int>(largest_batch(plan_, mpi.rank(), opt_.buffer_bytes));
    const auto engine = make_copy_engine(
        opt_.device,
        engine_buffer_bytes(opt_.buffer_bytes, !direct          ? 0
                                               : opt_.read_once ? 1
                                               : dist_          ? 2 + kDirectReadSlots
                                                                : hdf5_buffers + kDirectReadSlots));
    engine->allow_overflow(opt_.allow_overflow);
    engine->on_block([&](uint64_t b) { progress_->add_bytes(b); });
    SafetensorsSource source(plan_.catalog, io);
    if (dist_)
      write_distcp(mpi, *engine, source, io);
    else if (opt_.read_once)
      write_read_once(mpi, io, direct);
    else
      write_shards(mpi, *engine, source);
    if (!opt_.read_once) log_source_reads(source, "import");
  }

  std::string settle(MpiContext& mpi) override {
    progress_->finish();
    read_once_total_ = mpi.all_reduce_sum(read_once_storage_);
    gathered_ = gather_shard_results(results_, mpi);
    dist_gathered_ = mpi.gather(dist_ ? dist_file_result_to_json(dist_result_).dump() : "");
    return {};
  }

  void commit(MpiContext&) override {
    const Listing l = dist_ ? list_distcp() : list_shards();
    // A source rewritten while it was read gives an output that is
    // neither the old checkpoint nor the new one.
    const json ids_now = source_identities(plan_.catalog);
    for (const auto& [name, id] : source_ids_.items())
      MB_CHECK(ids_now.at(name) == id,
               "source file {} changed while it was being converted; nothing was committed: run "
               "the import again",
               (plan_.catalog.dir / name).string());
    copy_hf_side_files(plan_, out_.staging());
    write_file_atomic(out_.staging() / "megatron_config.yaml",
                      megatron_config_yaml(plan_.model, plan_.layout, plan_.mtp_not_converted));
    check_files_complete(out_.staging(), l.files);
    const json manifest = build_manifest(plan_, opt_.format, l.files, source_description(plan_));
    write_file_atomic(out_.staging() / kManifestName, manifest.dump(1) + "\n");
    out_.commit();
    report(l);
  }

  fs::path staging() const override { return out_.staging(); }
  std::vector<fs::path> sources() const override { return sources_; }

  std::string summary(const std::string& blob, int) const override {
    const ImportPlan p = plan_from_json(json::from_msgpack(blob));
    return fmt::format("import to {} ({})\n", out_.target().string(), opt_.format) +
           plan_report(p, /*per_shard=*/false);
  }

 private:
  struct Listing {
    json files;
    uint64_t written = 0, read = 0, tensors = 0;
    std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> rows;  // file, tensors, bytes
  };

  void after_tensor(MpiContext& mpi) {
    progress_->add_tensor();
    test_hook_after_tensor(mpi.rank());
  }

  // torch_dist: this rank's one .distcp file, kept on resume when its bytes
  // still match the checksum recorded when it was written.
  void write_distcp(MpiContext& mpi, CopyEngine& engine, SafetensorsSource& source, const IoConfig& io) {
    const std::string name = fmt::format("{}/__{}_0.distcp", kTorchDistIterDir, mpi.rank());
    if (opt_.resume) {
      const std::string rec = out_.done_record(name);
      if (!rec.empty()) {
        DistFileResult r = dist_file_result_from_json(json::parse(rec));
        if (r.file.empty() || dist_file_intact(out_.staging() / r.file, r)) {
          dist_result_ = std::move(r);
          log::info("resume: keeping {}", name);
          return;
        }
      }
    }
    dist_result_ = write_distcp_file(plan_, mpi.rank(), out_.staging(), engine, source, io,
                                     [&] { after_tensor(mpi); });
    out_.mark_done(name, dist_file_result_to_json(dist_result_).dump());
  }

  void write_read_once(MpiContext& mpi, const IoConfig& io, bool direct) {
    // With a GPU engine, forward over NCCL when every rank has its own
    // device (collective: all ranks take this branch together); else MPI.
    std::unique_ptr<Forwarder> forwarder;
#ifdef MEGABRIDGE_HAVE_NCCL
    if (opt_.device != "cpu") {
      std::string why;
      forwarder = make_nccl_forwarder(mpi, opt_.buffer_bytes, &why);
      if (!forwarder && mpi.is_root()) log::info("read-once: forwarding over MPI, not NCCL: {}", why);
    }
#endif
    if (!forwarder) forwarder = make_mpi_forwarder(mpi);
    log::debug("read-once: forwarding with {}", forwarder->name());
    ReadOnceStats stats;
    results_ = run_read_once_hdf5(plan_, mpi, *forwarder, out_.staging(),
                                  engine_buffer_bytes(opt_.buffer_bytes, direct ? 1 : 0), io,
                                  *progress_, stats, opt_.allow_overflow);
    log::debug("read-once: read {} from storage, sent {}, received {}",
               human_bytes(static_cast<double>(stats.storage_bytes)),
               human_bytes(static_cast<double>(stats.sent_bytes)),
               human_bytes(static_cast<double>(stats.received_bytes)));
    read_once_storage_ = stats.storage_bytes;
  }

  void write_shards(MpiContext& mpi, CopyEngine& engine, SafetensorsSource& source) {
    results_ = write_rank_shards(
        plan_, mpi.rank(), out_, opt_.resume, engine, source, io_config(opt_.io, opt_.buffer_bytes),
        open_at_once_, {[&](uint64_t b) { progress_->add_bytes(b); }, [&] { after_tensor(mpi); }});
  }

  Listing list_distcp() const {
    Listing l;
    std::vector<DistFileResult> all;
    for (const auto& g : dist_gathered_) all.push_back(dist_file_result_from_json(json::parse(g)));
    finish_torch_dist(plan_, all, out_.staging());
    l.files = json::array();
    for (const auto& r : all) {
      l.read += r.bytes_read;
      if (r.file.empty()) continue;
      uint64_t n = 0;
      for (const auto& it : r.items) n += it.object ? 0 : 1;
      // Each tensor chunk's checksum, so that export and reshard check the
      // file from the bytes as they read them (formats/torch_dist/distcp_checksum.hpp).
      json ts = json::array();
      for (const DataRegion& d : dist_data_regions(r)) ts.push_back({{"name", d.name}, {"xxh3", d.xxh3}});
      l.files.push_back({{"path", r.file},
                         {"bytes", r.bytes},
                         {"xxh3", r.xxh3},
                         {"checksum", r.checksum.empty() ? std::string("xxh3-64") : r.checksum},
                         {"tensor_count", n},
                         {"object_count", r.items.size() - n},
                         {"tensors", std::move(ts)}});
      l.written += r.bytes;
      l.tensors += n;
      l.rows.push_back({r.file, {n, r.bytes}});
    }
    return l;
  }

  Listing list_shards() const {
    Listing l;
    const std::vector<ShardResult>& all = gathered_.results;
    MB_CHECK(all.size() == plan_.shards.size(), "internal: {} of {} shards reported", all.size(),
             plan_.shards.size());
    l.files = manifest_files(all);
    for (const auto& r : all) {
      l.written += r.bytes;
      l.read += opt_.read_once ? 0 : r.bytes_read;
      l.tensors += r.tensors.size();
      l.rows.push_back({r.file, {r.tensors.size(), r.bytes}});
    }
    if (opt_.read_once) l.read = read_once_total_;
    return l;
  }

  void report(Listing l) const {
    std::sort(l.rows.begin(), l.rows.end());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    log::info("import done: {} {}, {} files ({}) in {}", opt_.format, plan_.layout.describe(),
              l.rows.size(), human_bytes(static_cast<double>(l.written)), out_.target().string());
    if (l.rows.size() <= 16)
      for (const auto& [file, nb] : l.rows)
        log::info("  {:<28} {:>5} tensors {:>11}", file, nb.first,
                  human_bytes(static_cast<double>(nb.second)));
    log::info("  manifest.json, megatron_config.yaml, hf/ (config.json and {} side files)",
              plan_.catalog.extra_files.size());
    log::info("{} tensors from {} HF tensors: read {}, wrote {} in {:.2f} s ({:.2f} GB/s "
              "read); peak RSS per rank {}",
              l.tensors, plan_.catalog.tensors.size(), human_bytes(static_cast<double>(l.read)),
              human_bytes(static_cast<double>(l.written)), secs,
              static_cast<double>(l.read) / secs / 1e9,
              human_bytes(static_cast<double>(gathered_.max_rss)));
  }

  const ImportOptions& opt_;
  const StagedOutput out_;
  const bool dist_;
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  std::string fingerprint_;
  json source_ids_;  // rank 0: the identity of every source file when the job planned
  std::vector<fs::path> sources_;  // rank 0: what the import reads, for sources()
  ImportPlan plan_;
  std::optional<Progress> progress_;
  std::vector<ShardResult> results_;
  size_t open_at_once_ = 1;  // HDF5 shards written side by side
  DistFileResult dist_result_;
  uint64_t read_once_storage_ = 0, read_once_total_ = 0;
  GatheredResults gathered_;
  std::vector<std::string> dist_gathered_;
};

}  // namespace

std::unique_ptr<Step> make_import_step(const ImportOptions& opt) {
  return std::make_unique<ImportStep>(opt);
}

int run_import(const ImportOptions& opt, MpiContext& mpi) {
  ImportStep step(opt);
  return run_step(step, mpi);
}

}  // namespace mb
