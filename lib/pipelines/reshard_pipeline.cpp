#include "pipelines/reshard_pipeline.hpp"

#include <chrono>
#include <memory>
#include <optional>

#include "checkpoint/manifest.hpp"
#include "checkpoint/manifest_check.hpp"
#include "checkpoint/megatron_checkpoint.hpp"
#include "checkpoint/rank_shards.hpp"
#include "checkpoint/shard_writer.hpp"
#include "checkpoint/side_by_side.hpp"
#include "checkpoint/staged_output.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "dist/hash_relay.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "engine/read_ahead.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/step_driver.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
// The target layout's shards, with segments that read the source shards: the
// HF-facing segments of a direct import, composed through the source's
// export index. Ops cancel: both sides store op(HF) in the same dtype.
ImportPlan build_reshard_plan(const MegatronCheckpoint& ck, const ParallelLayout& target, int world) {
  validate_layout(target, ck.model);
  ImportPlan p;
  p.config_json = ck.manifest.at("model").at("hf_config");
  p.model = ck.model;
  p.mtp_not_converted = ck.mtp_not_converted;
  p.layout = target;
  p.catalog = ck.source;
  p.experts = ck.experts;
  p.cast = ck.cast;
  p.world_size = world;
  const ExportIndex index = build_export_index(ck.shards, ck.source.tensors.size());
  for (const ShardCoord& c : all_shards(target)) {
    ShardPlan s;
    s.coord = c;
    s.tensors = plan_shard_tensors(ck.model, ck.source, ck.experts, target, c, ck.cast);
    for (LocalTensor& t : s.tensors) {
      // Every source of this tensor was stored with the same op and dtype.
      for (const Segment& g : t.segments) {
        MB_CHECK(index.op[g.src] == inverse(t.op) && index.stored_dtype[g.src] == t.dtype,
                 "internal: {} is stored differently in the source checkpoint", t.global_name);
      }
      t.segments = compose_through(t.segments, index);
      t.op = ElementOp::None;
      t.source_dtype = t.dtype;
      uint64_t area = 0;
      for (const auto& g : t.segments) area += g.rows * g.cols;
      MB_CHECK(area == t.rows() * t.cols(), "{} cannot be rebuilt from {}: {} of {} elements found",
               t.global_name, ck.dir.string(), area, t.rows() * t.cols());
    }
    p.shards.push_back(std::move(s));
  }
  assign_shards_to_ranks(p.shards, world);
  return p;
}

// Checksums checked from the bytes as read, not by a separate pass first
// (ReshardStep::check). Not with --resume: shards kept from the interrupted
// run are not read again, so their inputs would go unchecked.
bool checks_as_read(const ReshardOptions& opt, const MegatronCheckpoint& ck) {
  return opt.verify_checksums && !opt.resume && checksums_streamable(ck);
}

// How the source is read: a separate checksum pass shares the page cache
// with the reads (source_io_mode).
IoMode reshard_source_io(const ReshardOptions& opt, bool streamed) {
  return source_io_mode(opt.io, opt.verify_checksums && !streamed);
}

// The plan's segments read the source's canonical local tensors, each stored
// row-major (an HDF5 dataset, the pieces of a torch_dist chunk).
StorageReads planned_reads(const ReshardOptions& opt, const MegatronCheckpoint& ck,
                           const ImportPlan& plan) {
  const ExportIndex index = build_export_index(ck.shards, ck.source.tensors.size());
  std::vector<SourceGeometry> sources;
  sources.reserve(index.refs.size());
  for (const LocalTensorRef& r : index.refs) {
    const LocalTensor& t = ck.shards.at(r.shard).tensors.at(r.tensor);
    const uint64_t es = dtype_size(t.dtype);
    sources.push_back({0, cols_2d(t.shape) * es, es});
  }
  return storage_reads(plan, sources, reshard_source_io(opt, checks_as_read(opt, ck)),
                       opt.buffer_bytes, /*align=*/1);
}

// Shards in one layout -> another, as a Step for the driver (step_driver.hpp):
// the plan is a direct import's at the target layout, composed through the
// source's export index; the source the old shards; the sink HDF5 shards.
class ReshardStep : public Step {
 public:
  explicit ReshardStep(const ReshardOptions& opt) : opt_(opt), out_(opt.out, "reshard") {}

  // Rank 0 first makes sure the output is apart from the source.
  void open(MpiContext& mpi) override {
    if (mpi.is_root()) out_.check_apart_from({{opt_.src, "--megatron-path"}});
    ck_ = open_megatron_checkpoint(opt_.src);
  }

  std::string plan(MpiContext& mpi) override {
    out_.check_apart_from(checkpoint_files(*ck_));
    const json plan = plan_to_json(build_reshard_plan(*ck_, opt_.layout, mpi.size()));
    // What must match for a partial output to be resumed: the target plan's
    // inputs and the source's files (their checksums, from its manifest).
    json fp = plan;
    fp.erase("shards");
    fp["source_files"] = ck_->manifest.value("files", json());
    const std::string fps = fp.dump();
    fingerprint_ = hash_hex(hash_bytes(fps.data(), fps.size()));
    // --resume also needs the source files unchanged on disk (size, mtime,
    // ctime, inode), as import does: a rewritten shard may keep its name.
    source_ids_ = json::object();
    source_ids_[kManifestName] = file_identity(ck_->dir / kManifestName);
    for (const auto& f : ck_->manifest.at("files")) {
      const std::string name = f.at("path").get<std::string>();
      source_ids_[name] = file_identity(ck_->dir / name);
    }
    const auto packed = json::to_msgpack(plan);
    return std::string(packed.begin(), packed.end());
  }

  // A source with per-tensor (per-chunk) checksums is checked as it is read
  // (execute), not hashed whole here first (checks_as_read).
  std::string check(MpiContext& mpi) override {
    streamed_ = checks_as_read(opt_, *ck_);
    return validate_shard_files(*ck_, opt_.verify_checksums && !streamed_, mpi);
  }

  void prepare(MpiContext&) override {
    if (out_.prepare(opt_.overwrite, opt_.resume, fingerprint_, source_ids_))
      log::info("resuming the partial output in {}", out_.staging().string());
  }

  void receive(std::string blob, MpiContext& mpi) override {
    plan_ = plan_from_json(json::from_msgpack(blob));
    std::string().swap(blob);  // the plan is parsed; its bytes are not needed again
    uint64_t total_bytes = 0, total_tensors = 0;
    for (const auto& s : plan_.shards) {
      total_bytes += s.bytes_written();
      total_tensors += s.tensors.size();
    }
    progress_.emplace(mpi, "reshard", total_bytes, total_tensors);
  }

  void execute(MpiContext& mpi) override {
    const ExportIndex index = build_export_index(ck_->shards, ck_->source.tensors.size());
    const IoMode src_io = reshard_source_io(opt_, streamed_);
    // A source read directly takes its buffers (local_source_io_buffers) out
    // of the buffer, the direct writes of the output two write-behind buffers
    // for each shard open at once (side_by_side.hpp).
    const size_t open_at_once =
        shards_open_at_once(opt_.buffer_bytes, plan_.shards_of_rank(mpi.rank()).size());
    const int io_buffers =
        local_source_io_buffers(src_io) +
        (opt_.io != IoMode::Buffered
             ? 2 * static_cast<int>(largest_batch(plan_, mpi.rank(), opt_.buffer_bytes))
             : 0);
    const auto engine = make_copy_engine(opt_.device, engine_buffer_bytes(opt_.buffer_bytes, io_buffers));
    engine->on_block([&](uint64_t b) { progress_->add_bytes(b); });
    // Checked as read: each source's bytes (an HDF5 tensor's rows, a torch_dist
    // chunk's bytes) hashed by the ranks that read them, the hash state handed
    // from rank to rank (verify_chains.hpp); the source plans who hashes what
    // from every rank's reads. The relay is constructed on every rank
    // (collective), destroyed after the source.
    HashRelay relay(mpi);
    // Every rank's reads, as each will make them: its shards side by side.
    std::vector<SourceReads> reads;
    std::vector<std::pair<int, ConversionStep>> steps;
    if (streamed_) {
      steps = every_rank_steps(plan_, opt_.buffer_bytes);
      for (const auto& [r, st] : steps) reads.push_back({r, &st.segments});
    }
    const auto source = open_local_source(*ck_, index.refs, io_config(src_io, opt_.buffer_bytes),
                                          streamed_, {&relay, &reads});
    results_ = write_rank_shards(plan_, mpi.rank(), out_, opt_.resume, *engine, *source,
                                 io_config(opt_.io, opt_.buffer_bytes), open_at_once,
                                 {[&](uint64_t b) { progress_->add_bytes(b); },
                                  [&] {
                                    progress_->add_tensor();
                                    test_hook_after_tensor(mpi.rank());
                                  }});
    log_source_reads(*source, "reshard");
    if (streamed_) stream_problem_ = source_checksum_problem(*source, mpi.rank(), mpi.size());
  }

  std::string settle(MpiContext& mpi) override {
    progress_->finish();
    gathered_ = gather_shard_results(results_, mpi);
    corrupt_input_ = mpi.all_reduce_max(stream_problem_.empty() ? 0 : 1) > 0;
    return stream_problem_;
  }

  // Other failures keep the partial output for --resume; shards converted
  // from a corrupt input are not worth keeping.
  void discard() override {
    if (!corrupt_input_) return;
    std::error_code ec;
    fs::remove_all(out_.staging(), ec);
  }

  void commit(MpiContext&) override {
    // The HF side (config, tokenizer files, source description) carries over.
    fs::create_directories(out_.staging() / "hf");
    // Only config.json and the known side files, each a regular file.
    for (const auto& e : fs::directory_iterator(ck_->dir / "hf")) {
      const std::string name = e.path().filename().string();
      std::string why;
      if (name != "config.json" && !is_hf_side_file(name)) {
        log::warn("{}: not a known HF side file; not carried into the output", e.path().string());
      } else if (!side_file_is_safe(ck_->dir / "hf", name, why)) {
        log::warn("{}: {}; not carried into the output", e.path().string(), why);
      } else {
        copy_regular_file(e.path(), out_.staging() / "hf" / name);
      }
    }
    write_file_atomic(out_.staging() / "megatron_config.yaml",
                      megatron_config_yaml(plan_.model, plan_.layout, plan_.mtp_not_converted));
    const json files = manifest_files(gathered_.results);
    check_files_complete(out_.staging(), files);
    const json manifest = build_manifest(plan_, "hdf5", files, ck_->manifest.at("source"));
    write_file_atomic(out_.staging() / kManifestName, manifest.dump(1) + "\n");
    out_.commit();
    uint64_t bytes = 0;
    for (const auto& r : gathered_.results) bytes += r.bytes;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    log::info("reshard done: {} -> {}: {} shard files ({}) under {}, {:.2f} s, peak RSS per rank {}",
              ck_->layout.describe(), plan_.layout.describe(), gathered_.results.size(),
              human_bytes(static_cast<double>(bytes)), out_.target().string(), secs,
              human_bytes(static_cast<double>(gathered_.max_rss)));
  }

  // Not plan_report(): a reshard plan's segments index the source shards, not HF tensors.
  fs::path staging() const override { return out_.staging(); }

  std::string summary(const std::string& blob, int world) const override {
    const ImportPlan p = plan_from_json(json::from_msgpack(blob));
    std::vector<uint64_t> load(static_cast<size_t>(world), 0);
    for (const auto& s : p.shards) load[static_cast<size_t>(s.rank)] += s.bytes_written();
    const uint64_t once = canonical_bytes(*ck_);
    const StorageReads r = planned_reads(opt_, *ck_, p);
    const auto x = [&](uint64_t b) {
      return static_cast<double>(b) / static_cast<double>(std::max<uint64_t>(once, 1));
    };
    return fmt::format("reshard {} ({}) -> {} ({}): {} shard files\n", opt_.src.string(),
                       ck_->layout.describe(), out_.target().string(), p.layout.describe(),
                       p.shards.size()) +
           fmt::format(
               "storage --io {}: reads {} ({:.3f}x the source's tensors) with the ranks "
               "on one node, {} ({:.3f}x) with a node per rank\n",
               io_mode_name(opt_.io), human_bytes(static_cast<double>(r.one_node())),
               x(r.one_node()), human_bytes(static_cast<double>(r.node_per_rank())),
               x(r.node_per_rank())) +
           balance_report(load, "writes");
  }

  std::vector<fs::path> sources() const override { return checkpoint_sources(*ck_); }

 private:
  const ReshardOptions& opt_;
  const StagedOutput out_;
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  std::optional<MegatronCheckpoint> ck_;
  std::string fingerprint_;
  json source_ids_;  // rank 0: each source file's identity when the job planned
  ImportPlan plan_;
  std::optional<Progress> progress_;
  std::vector<ShardResult> results_;
  GatheredResults gathered_;
  bool streamed_ = false;       // checksums checked from the bytes as read
  std::string stream_problem_;  // what that found
  bool corrupt_input_ = false;  // on any rank: nothing written is worth resuming
};

}  // namespace

std::unique_ptr<Step> make_reshard_step(const ReshardOptions& opt) {
  return std::make_unique<ReshardStep>(opt);
}

StorageReads reshard_storage_reads(const ReshardOptions& opt, const MegatronCheckpoint& src,
                                   int world) {
  return planned_reads(opt, src, build_reshard_plan(src, opt.layout, world));
}

int run_reshard(const ReshardOptions& opt, MpiContext& mpi) {
  ReshardStep step(opt);
  return run_step(step, mpi);
}

}  // namespace mb
