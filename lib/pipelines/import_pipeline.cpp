#include "pipelines/import_pipeline.hpp"

#include <sys/resource.h>

#include <chrono>
#include <filesystem>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "layout/import_plan.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/copy_engine.hpp"
#include "pipelines/manifest.hpp"
#include "pipelines/safetensors_source.hpp"
#include "pipelines/staged_output.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class Hdf5DatasetSink : public RowSink {
 public:
  explicit Hdf5DatasetSink(Hdf5ShardWriter& w) : w_(w) {}
  void write(uint64_t row0, uint64_t rows, const void* data) override { w_.write_rows(row0, rows, data); }

 private:
  Hdf5ShardWriter& w_;
};

ShardResult write_hdf5_shard(const ImportPlan& plan, const ShardPlan& shard, const fs::path& dir,
                             CopyEngine& engine, SafetensorsSource& source) {
  const std::string name = shard.coord.file_name();
  const fs::path tmp = dir / (name + ".tmp"), final_path = dir / name;
  ShardFileInfo info;
  info.tp_rank = shard.coord.tp;
  info.pp_rank = shard.coord.pp;
  info.ep_rank = shard.coord.ep;
  info.etp_rank = shard.coord.etp_rank(plan.layout);
  info.tp_size = plan.layout.tp;
  info.pp_size = plan.layout.pp;
  info.ep_size = plan.layout.ep;
  info.etp_size = plan.layout.etp;
  info.extra["architecture"] = plan.model.architecture;
  info.extra["megabridge_version"] = MEGABRIDGE_VERSION;

  ShardResult result;
  result.coord = shard.coord;
  result.file = name;
  const uint64_t read_before = source.bytes_read();
  {
    Hdf5ShardWriter w(tmp, info);
    Hdf5DatasetSink sink(w);
    for (const LocalTensor& t : shard.tensors) {
      w.begin_dataset({t.name, t.global_name, t.shape, t.global_shape, t.dtype, {}});
      CopyJob job{t.name, &t.segments, t.rows(), t.cols(), t.source_dtype, t.dtype, t.op};
      CopyResult r;
      try {
        r = engine.run(job, source, sink);
      } catch (...) {
        rethrow_with_context(fmt::format("writing {} of {}", t.name, name));
      }
      if (r.not_invertible > 0)
        log::warn("{}: {} element(s) of {} do not survive {} and back bit-exactly in {} "
                  "(values below 0.5 in magnitude); the Megatron side is still correct",
                  name, r.not_invertible, t.global_name, op_name(t.op), dtype_name(t.dtype));
      w.end_dataset(hash_hex(r.xxh3));
      result.tensors.push_back({t.name, hash_hex(r.xxh3)});
    }
    w.close();
  }
  {
    File f(tmp, File::Mode::ReadWrite);
    f.fsync();
  }
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  MB_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), final_path.string(), ec.message());
  result.bytes = fs::file_size(final_path);
  result.xxh3 = hash_hex(hash_file(final_path));
  result.bytes_read = source.bytes_read() - read_before;
  return result;
}

uint64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

void copy_hf_side_files(const ImportPlan& plan, const fs::path& staging) {
  const fs::path dst = staging / "hf";
  fs::create_directories(dst);
  write_file_atomic(dst / "config.json", plan.config_json.dump(2) + "\n");
  for (const auto& f : plan.catalog.extra_files)
    fs::copy_file(resolve_inside(plan.catalog.dir, f, "extra file"), dst / f,
                  fs::copy_options::overwrite_existing);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
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
      results.push_back(write_hdf5_shard(plan, s, out.staging(), engine, source));
    }
  } catch (const std::exception& e) {
    log::error("{}", e.what());
    mpi.abort(1);
  }

  json mine_json = json::array();
  for (const auto& r : results) mine_json.push_back(shard_result_to_json(r));
  const json stats = {{"results", mine_json}, {"rss", peak_rss_bytes()}};
  const auto gathered = mpi.gather(stats.dump());
  if (mpi.is_root()) {
    try {
      std::vector<ShardResult> all;
      uint64_t max_rss = 0, read = 0;
      for (const auto& g : gathered) {
        const json j = json::parse(g);
        for (const auto& r : j.at("results")) all.push_back(shard_result_from_json(r));
        max_rss = std::max(max_rss, j.at("rss").get<uint64_t>());
      }
      MB_CHECK(all.size() == plan.shards.size(), "internal: {} of {} shards reported",
               all.size(), plan.shards.size());
      copy_hf_side_files(plan, out.staging());
      write_file_atomic(out.staging() / "megatron_config.yaml",
                        megatron_config_yaml(plan.model, plan.layout));
      const json manifest = build_manifest(plan, opt.format, all);
      write_file_atomic(out.staging() / kManifestName, manifest.dump(1) + "\n");
      out.commit();
      uint64_t written = 0, tensors = 0;
      for (const auto& r : all) {
        written += r.bytes;
        read += r.bytes_read;
        tensors += r.tensors.size();
      }
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("import done: {} shard files ({}) for {} in {}", all.size(),
                human_bytes(static_cast<double>(written)),
                plan.layout.describe(), out.target().string());
      if (all.size() <= 16)
        for (const auto& r : all)
          log::info("  {}  {} tensors  {}", (out.target() / r.file).string(), r.tensors.size(),
                    human_bytes(static_cast<double>(r.bytes)));
      log::info("{} tensors, {} read from {} HF tensors, {:.2f} s, {:.2f} GB/s, peak RSS per rank "
                "{}",
                tensors, human_bytes(static_cast<double>(read)), plan.catalog.tensors.size(), secs,
                static_cast<double>(read) / secs / 1e9, human_bytes(static_cast<double>(max_rss)));
    } catch (const std::exception& e) {
      log::error("{}", e.what());
      mpi.abort(1);
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
