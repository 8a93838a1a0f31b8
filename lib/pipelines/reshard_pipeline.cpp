#include "pipelines/reshard_pipeline.hpp"

#include <chrono>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "model/megatron_config.hpp"
#include "pipelines/manifest.hpp"
#include "pipelines/manifest_check.hpp"
#include "pipelines/megatron_checkpoint.hpp"
#include "pipelines/shard_writer.hpp"
#include "pipelines/staged_output.hpp"

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
}  // namespace

int run_reshard(const ReshardOptions& opt, MpiContext& mpi) {
  const auto t0 = std::chrono::steady_clock::now();
  const StagedOutput out(opt.out, "reshard");
  std::string status = "ok", blob;
  std::optional<MegatronCheckpoint> ck;
  try {
    if (mpi.is_root()) out.check_apart_from({{opt.src, "--megatron-path"}});
    ck = open_megatron_checkpoint(opt.src);
    if (mpi.is_root()) {
      out.check_apart_from(checkpoint_files(*ck));
      const auto packed = json::to_msgpack(plan_to_json(build_reshard_plan(*ck, opt.layout, mpi.size())));
      blob.assign(packed.begin(), packed.end());
    }
  } catch (const std::exception& e) {
    status = e.what();
  }
  for (const auto& s : mpi.all_gather(status))
    if (s != "ok") {
      if (mpi.is_root()) log::error("{}", s);
      return 2;
    }
  const std::string problem = validate_shard_files(*ck, opt.verify_checksums, mpi);
  if (!problem.empty()) {
    if (mpi.is_root()) log::error("{}", problem);
    return 2;
  }
  status = "ok";
  if (mpi.is_root()) {
    try {
      out.prepare(opt.overwrite);
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
  std::string().swap(blob);  // the plan is parsed; its bytes are not needed again
  const ExportIndex index = build_export_index(ck->shards, ck->source.tensors.size());

  uint64_t total_bytes = 0, total_tensors = 0;
  for (const auto& s : plan.shards) {
    total_bytes += s.bytes_written();
    total_tensors += s.tensors.size();
  }
  Progress progress(mpi, "reshard", total_bytes, total_tensors);
  std::vector<ShardResult> results;
  try {
    const IoMode src_io = source_io_mode(opt.io, opt.verify_checksums);
    // A torch_dist source read directly takes its window out of the buffer.
    const int io_buffers = ck->format == "torch_dist" && src_io != IoMode::Buffered ? 1 : 0;
    const auto engine_ptr = make_copy_engine(opt.device, engine_buffer_bytes(opt.buffer_bytes, io_buffers));
    CopyEngine& engine = *engine_ptr;
    engine.on_block([&](uint64_t b) { progress.add_bytes(b); });
    const auto source_ptr = open_local_source(*ck, index.refs, io_config(src_io, opt.buffer_bytes));
    RowSource& source = *source_ptr;
    for (size_t i : plan.shards_of_rank(mpi.rank()))
      results.push_back(write_hdf5_shard(plan.layout, plan.model.architecture, plan.shards[i],
                                         out.staging(), engine, source,
                                         [&] {
                                           progress.add_tensor();
                                           test_hook_after_tensor(mpi.rank());
                                         }));
  } catch (const std::exception& e) {
    mpi.fail(e.what(), out.staging());
  }
  progress.finish();
  const GatheredResults gathered = gather_shard_results(results, mpi);
  if (mpi.is_root()) {
    try {
      // The HF side (config, tokenizer files, source description) carries over.
      fs::create_directories(out.staging() / "hf");
      // Only config.json and the known side files, each a regular file.
      for (const auto& e : fs::directory_iterator(ck->dir / "hf")) {
        const std::string name = e.path().filename().string();
        std::string why;
        if (name != "config.json" && !is_hf_side_file(name)) {
          log::warn("{}: not a known HF side file; not carried into the output", e.path().string());
        } else if (!side_file_is_safe(ck->dir / "hf", name, why)) {
          log::warn("{}: {}; not carried into the output", e.path().string(), why);
        } else {
          copy_regular_file(e.path(), out.staging() / "hf" / name);
        }
      }
      write_file_atomic(out.staging() / "megatron_config.yaml",
                        megatron_config_yaml(plan.model, plan.layout, plan.mtp_not_converted));
      const json files = manifest_files(gathered.results);
      check_files_complete(out.staging(), files);
      const json manifest = build_manifest(plan, "hdf5", files, ck->manifest.at("source"));
      write_file_atomic(out.staging() / kManifestName, manifest.dump(1) + "\n");
      out.commit();
      uint64_t bytes = 0;
      for (const auto& r : gathered.results) bytes += r.bytes;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("reshard done: {} -> {}: {} shard files ({}) under {}, {:.2f} s, peak RSS per rank {}",
                ck->layout.describe(), plan.layout.describe(), gathered.results.size(),
                human_bytes(static_cast<double>(bytes)), out.target().string(), secs,
                human_bytes(static_cast<double>(gathered.max_rss)));
    } catch (const std::exception& e) {
      mpi.fail(e.what(), out.staging());
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
