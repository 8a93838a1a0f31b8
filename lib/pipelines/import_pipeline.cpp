#include "pipelines/import_pipeline.hpp"

#include <chrono>
#include <filesystem>
#include <optional>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/path_safety.hpp"
#include "dist/forwarder.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "layout/import_plan.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/copy_engine.hpp"
#include "pipelines/job_config.hpp"
#include "pipelines/manifest.hpp"
#include "pipelines/manifest_check.hpp"
#include "pipelines/read_once.hpp"
#include "pipelines/safetensors_source.hpp"
#include "pipelines/shard_writer.hpp"
#include "pipelines/staged_output.hpp"
#include "pipelines/torch_dist_output.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A shard an interrupted run already committed, if its bytes still match the
// checksum recorded when it was written.
std::optional<ShardResult> resume_shard(const StagedOutput& out, const std::string& file) {
  const std::string rec = out.done_record(file);
  const auto path = out.staging() / file;
  if (rec.empty() || !std::filesystem::exists(path)) return std::nullopt;
  ShardResult r = shard_result_from_json(json::parse(rec));
  if (std::filesystem::file_size(path) != r.bytes || hash_hex(hash_file(path)) != r.xxh3) {
    log::warn("resume: {} does not match its recorded checksum; writing it again", file);
    return std::nullopt;
  }
  return r;
}

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

int run_import(const ImportOptions& opt, MpiContext& mpi) {
  const auto t0 = std::chrono::steady_clock::now();
  const StagedOutput out(opt.out, "import");
  MB_CHECK(opt.format == "hdf5" || opt.format == "torch_dist",
           "unknown output format '{}' (supported: hdf5, torch_dist)", opt.format);
  const bool dist = opt.format == "torch_dist";
  MB_CHECK(!(opt.read_once && opt.resume), "--read-once and --resume cannot be combined (read-once "
           "shards are all written together)");
  if (opt.read_once && dist && mpi.is_root())
    log::info("torch_dist stores every element once, so each HF byte is read once already");

  // Rank 0 reads config.json, the index and every header once, plans, and
  // broadcasts the plan; a planning error is reported by rank 0 only and every
  // rank exits with the same code.
  std::string status, blob;
  json source_ids;  // rank 0: the identity of every source file when the job started
  if (mpi.is_root()) {
    try {
      out.check_apart_from({{opt.hf_path, "--hf-path"}});
      const ModelConfig model = load_model_config(opt.hf_path / "config.json");
      validate_layout(opt.layout, model);  // before any tensor I/O
      HfCatalog catalog = read_hf_catalog(opt.hf_path);
      PlanRequest req{opt.layout, import_cast(opt, model), opt.strict, mpi.size()};
      ImportPlan plan = build_import_plan(model, std::move(catalog), req);
      // torch_dist stores each element once: balance by the canonical bytes.
      if (dist) assign_shards_to_ranks(plan.shards, mpi.size(), /*canonical_only=*/true);
      // What must match for a partial output to be resumed: the plan's
      // inputs, and for torch_dist the rank count (files are per rank).
      json fp = plan_to_json(plan);
      fp.erase("shards");
      fp["format"] = opt.format;
      fp["ranks"] = dist ? mpi.size() : 0;
      const std::string fps = fp.dump();
      // A source file reached through a symlink may live anywhere: the
      // output must not hold it either.
      std::vector<NamedPath> files;
      for (const auto& name : source_file_names(plan.catalog))
        files.push_back({plan.catalog.dir / name, "source file"});
      out.check_apart_from(files);
      source_ids = source_identities(plan.catalog);
      const bool resumed = out.prepare(opt.overwrite, opt.resume,
                                       hash_hex(hash_bytes(fps.data(), fps.size())), source_ids);
      if (resumed) log::info("resuming the partial output in {}", out.staging().string());
      if (dist) std::filesystem::create_directories(out.staging() / kTorchDistIterDir);
      const auto packed = json::to_msgpack(plan_to_json(plan));
      blob.assign(packed.begin(), packed.end());
      status = "ok";
    } catch (const std::exception& e) {
      status = e.what();
    }
  }
  mpi.broadcast(status);
  if (status != "ok") {
    if (mpi.is_root()) log::error("{}", status);
    return 2;
  }
  mpi.broadcast(blob);
  const ImportPlan plan = plan_from_json(json::from_msgpack(blob));
  blob.clear();
  blob.shrink_to_fit();

  uint64_t total_bytes = 0, total_tensors = 0;
  for (const auto& s : plan.shards)
    for (const auto& t : s.tensors)
      if (!dist || t.canonical) {
        total_bytes += t.nbytes();
        ++total_tensors;
      }
  Progress progress(mpi, "import", total_bytes, total_tensors);
  std::vector<ShardResult> results;
  DistFileResult dist_result;
  uint64_t read_once_storage = 0;
  try {
    // The direct I/O buffers (a read bounce buffer; for torch_dist an append
    // buffer too) come out of the configured buffer.
    const IoConfig io = io_config(opt.io, opt.buffer_bytes);
    const bool direct = opt.io != IoMode::Buffered;
    const auto engine_ptr =
        make_copy_engine(opt.device, engine_buffer_bytes(opt.buffer_bytes, !direct ? 0 : dist ? 2 : 1));
    CopyEngine& engine = *engine_ptr;
    engine.allow_overflow(opt.allow_overflow);
    engine.on_block([&](uint64_t b) { progress.add_bytes(b); });
    SafetensorsSource source(plan.catalog, io);
    const std::string dist_name = fmt::format("{}/__{}_0.distcp", kTorchDistIterDir, mpi.rank());
    std::optional<DistFileResult> kept;
    if (dist && opt.resume) {
      const std::string rec = out.done_record(dist_name);
      if (!rec.empty()) {
        DistFileResult r = dist_file_result_from_json(json::parse(rec));
        if (r.file.empty() || (std::filesystem::exists(out.staging() / r.file) &&
                               hash_hex(hash_file(out.staging() / r.file)) == r.xxh3)) {
          kept = std::move(r);
          log::info("resume: keeping {}", dist_name);
        }
      }
    }
    if (kept) {
      dist_result = *kept;
    } else if (dist) {
      dist_result = write_distcp_file(plan, mpi.rank(), out.staging(), engine, source, io,
                                      [&] {
                                           progress.add_tensor();
                                           test_hook_after_tensor(mpi.rank());
                                         });
      out.mark_done(dist_name, dist_file_result_to_json(dist_result).dump());
    } else if (opt.read_once) {
      // With a GPU engine, forward over NCCL when every rank has its own
      // device (collective: all ranks take this branch together); else MPI.
      std::unique_ptr<Forwarder> forwarder;
#ifdef MEGABRIDGE_HAVE_NCCL
      if (opt.device != "cpu") {
        std::string why;
        forwarder = make_nccl_forwarder(mpi, opt.buffer_bytes, &why);
        if (!forwarder && mpi.is_root()) log::info("read-once: forwarding over MPI, not NCCL: {}", why);
      }
#endif
      if (!forwarder) forwarder = make_mpi_forwarder(mpi);
      log::debug("read-once: forwarding with {}", forwarder->name());
      ReadOnceStats stats;
      results = run_read_once_hdf5(plan, mpi, *forwarder, out.staging(),
                                   engine_buffer_bytes(opt.buffer_bytes, direct ? 1 : 0), io,
                                   progress, stats, opt.allow_overflow);
      log::debug("read-once: read {} from storage, sent {}, received {}",
                 human_bytes(static_cast<double>(stats.storage_bytes)),
                 human_bytes(static_cast<double>(stats.sent_bytes)),
                 human_bytes(static_cast<double>(stats.received_bytes)));
      read_once_storage = stats.storage_bytes;
    } else {
      for (size_t i : plan.shards_of_rank(mpi.rank())) {
        const ShardPlan& s = plan.shards[i];
        if (opt.resume) {
          if (auto r = resume_shard(out, s.coord.file_name())) {
            log::info("resume: keeping {}", s.coord.file_name());
            progress.add_bytes(s.bytes_written());
            results.push_back(std::move(*r));
            continue;
          }
        }
        log::debug("writing {} ({} tensors, {})", s.coord.file_name(), s.tensors.size(),
                   human_bytes(static_cast<double>(s.bytes_written())));
        results.push_back(write_hdf5_shard(plan.layout, plan.model.architecture, s, out.staging(),
                                           engine, source, [&] {
                                           progress.add_tensor();
                                           test_hook_after_tensor(mpi.rank());
                                         }));
        out.mark_done(results.back().file, shard_result_to_json(results.back()).dump());
      }
    }
  } catch (const std::exception& e) {
    mpi.fail(e.what(), out.staging());
  }
  progress.finish();
  const uint64_t read_once_total = mpi.all_reduce_sum(read_once_storage);

  const GatheredResults gathered = gather_shard_results(results, mpi);
  const auto dist_gathered = mpi.gather(dist ? dist_file_result_to_json(dist_result).dump() : "");
  if (mpi.is_root()) {
    try {
      json files;
      uint64_t written = 0, read = 0, tensors = 0;
      std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> listing;
      if (dist) {
        std::vector<DistFileResult> all;
        for (const auto& g : dist_gathered) all.push_back(dist_file_result_from_json(json::parse(g)));
        finish_torch_dist(plan, all, out.staging());
        files = json::array();
        for (const auto& r : all) {
          read += r.bytes_read;
          if (r.file.empty()) continue;
          uint64_t n = 0;
          for (const auto& it : r.items) n += it.object ? 0 : 1;
          files.push_back({{"path", r.file}, {"bytes", r.bytes}, {"xxh3", r.xxh3}, {"tensor_count", n},
                           {"object_count", r.items.size() - n}});
          written += r.bytes;
          tensors += n;
          listing.push_back({r.file, {n, r.bytes}});
        }
      } else {
        std::vector<ShardResult> all = gathered.results;
        MB_CHECK(all.size() == plan.shards.size(), "internal: {} of {} shards reported",
                 all.size(), plan.shards.size());
        files = manifest_files(all);
        for (const auto& r : all) {
          written += r.bytes;
          read += opt.read_once ? 0 : r.bytes_read;
          tensors += r.tensors.size();
          listing.push_back({r.file, {r.tensors.size(), r.bytes}});
        }
      }
      if (opt.read_once) read = read_once_total;
      std::sort(listing.begin(), listing.end());
      // A source rewritten while it was read gives an output that is
      // neither the old checkpoint nor the new one.
      const json ids_now = source_identities(plan.catalog);
      for (const auto& [name, id] : source_ids.items())
        MB_CHECK(ids_now.at(name) == id,
                 "source file {} changed while it was being converted; nothing was committed: run "
                 "the import again",
                 (plan.catalog.dir / name).string());
      copy_hf_side_files(plan, out.staging());
      write_file_atomic(out.staging() / "megatron_config.yaml",
                        megatron_config_yaml(plan.model, plan.layout, plan.mtp_not_converted));
      check_files_complete(out.staging(), files);
      const json manifest = build_manifest(plan, opt.format, files, source_description(plan));
      write_file_atomic(out.staging() / kManifestName, manifest.dump(1) + "\n");
      out.commit();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("import done: {} {}, {} files ({}) in {}", opt.format, plan.layout.describe(),
                listing.size(), human_bytes(static_cast<double>(written)), out.target().string());
      if (listing.size() <= 16)
        for (const auto& [file, nb] : listing)
          log::info("  {:<28} {:>5} tensors {:>11}", file, nb.first,
                    human_bytes(static_cast<double>(nb.second)));
      log::info("  manifest.json, megatron_config.yaml, hf/ (config.json and {} side files)",
                plan.catalog.extra_files.size());
      log::info("{} tensors from {} HF tensors: read {}, wrote {} in {:.2f} s ({:.2f} GB/s "
                "read); peak RSS per rank {}",
                tensors, plan.catalog.tensors.size(), human_bytes(static_cast<double>(read)),
                human_bytes(static_cast<double>(written)), secs,
                static_cast<double>(read) / secs / 1e9,
                human_bytes(static_cast<double>(gathered.max_rss)));
    } catch (const std::exception& e) {
      mpi.fail(e.what(), out.staging());
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
