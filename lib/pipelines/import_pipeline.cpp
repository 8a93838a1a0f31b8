#include "pipelines/import_pipeline.hpp"

#include <chrono>
#include <filesystem>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "layout/import_plan.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/copy_engine.hpp"
#include "pipelines/manifest.hpp"
#include "pipelines/safetensors_source.hpp"
#include "pipelines/shard_writer.hpp"
#include "pipelines/staged_output.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void copy_hf_side_files(const ImportPlan& plan, const fs::path& staging) {
  const fs::path dst = staging / "hf";
  fs::create_directories(dst);
  write_file_atomic(dst / "config.json", plan.config_json.dump(2) + "\n");
  for (const auto& f : plan.catalog.extra_files)
    fs::copy_file(resolve_inside(plan.catalog.dir, f, "extra file"), dst / f,
                  fs::copy_options::overwrite_existing);
}

}  // namespace

int run_import(const ImportOptions& opt, MpiContext& mpi) {
  const auto t0 = std::chrono::steady_clock::now();
  const StagedOutput out(opt.out);
  MB_CHECK(opt.format == "hdf5", "unknown output format '{}' (supported: hdf5)", opt.format);

  // Rank 0 reads config.json, the index and every header once, plans, and
  // broadcasts the plan; a planning error is reported by rank 0 only and every
  // rank exits with the same code.
  std::string status, blob;
  if (mpi.is_root()) {
    try {
      const ModelConfig model = load_model_config(opt.hf_path / "config.json");
      validate_layout(opt.layout, model);  // before any tensor I/O
      HfCatalog catalog = read_hf_catalog(opt.hf_path);
      PlanRequest req{opt.layout, opt.dtype, opt.strict, mpi.size()};
      const ImportPlan plan = build_import_plan(model, std::move(catalog), req);
      out.prepare(opt.overwrite);
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

  const auto mine = plan.shards_of_rank(mpi.rank());
  std::vector<ShardResult> results;
  try {
    CopyEngine engine(opt.buffer_bytes);
    SafetensorsSource source(plan.catalog);
    for (size_t i : mine) {
      const ShardPlan& s = plan.shards[i];
      log::debug("writing {} ({} tensors, {})", s.coord.file_name(), s.tensors.size(),
                 human_bytes(static_cast<double>(s.bytes_written())));
      results.push_back(
          write_hdf5_shard(plan.layout, plan.model.architecture, s, out.staging(), engine, source));
    }
  } catch (const std::exception& e) {
    log::error("{}", e.what());
    mpi.abort(1);
  }

  const GatheredResults gathered = gather_shard_results(results, mpi);
  if (mpi.is_root()) {
    try {
      std::vector<ShardResult> all = gathered.results;
      std::sort(all.begin(), all.end(),
                [](const ShardResult& a, const ShardResult& b) { return a.file < b.file; });
      MB_CHECK(all.size() == plan.shards.size(), "internal: {} of {} shards reported",
               all.size(), plan.shards.size());
      copy_hf_side_files(plan, out.staging());
      write_file_atomic(out.staging() / "megatron_config.yaml",
                        megatron_config_yaml(plan.model, plan.layout));
      const json manifest = build_manifest(plan, opt.format, all, source_description(plan));
      write_file_atomic(out.staging() / kManifestName, manifest.dump(1) + "\n");
      out.commit();
      uint64_t written = 0, read = 0, tensors = 0;
      for (const auto& r : all) {
        written += r.bytes;
        read += r.bytes_read;
        tensors += r.tensors.size();
      }
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("import done: {}, {} shard files ({}) in {}", plan.layout.describe(), all.size(),
                human_bytes(static_cast<double>(written)), out.target().string());
      if (all.size() <= 16)
        for (const auto& r : all)
          log::info("  {:<24} {:>5} tensors {:>11}", r.file, r.tensors.size(),
                    human_bytes(static_cast<double>(r.bytes)));
      log::info("  manifest.json, megatron_config.yaml, hf/ (config.json and {} side files)",
                plan.catalog.extra_files.size());
      log::info("{} tensors from {} HF tensors: read {}, wrote {} in {:.2f} s ({:.2f} GB/s "
                "read); peak RSS per rank {}",
                tensors, plan.catalog.tensors.size(), human_bytes(static_cast<double>(read)),
                human_bytes(static_cast<double>(written)), secs,
                static_cast<double>(read) / secs / 1e9,
                human_bytes(static_cast<double>(gathered.max_rss)));
    } catch (const std::exception& e) {
      log::error("{}", e.what());
      mpi.abort(1);
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
