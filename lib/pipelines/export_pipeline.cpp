#include "pipelines/export_pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <system_error>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "formats/safetensors/safetensors_header.hpp"
#include "pipelines/megatron_checkpoint.hpp"
#include "pipelines/shard_writer.hpp"
#include "pipelines/staged_output.hpp"

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
  // Files: the source's names and shard map, or a fresh split by size.
  std::vector<uint32_t> file_of(cat.tensors.size(), 0);
  if (same_files && !opt.max_shard_bytes && !src_files.empty()) {
    plan.files = src_files;
    plan.write_index = src_files.size() > 1 || ck.manifest.at("source").value("has_index", true);
    for (size_t i = 0; i < cat.tensors.size(); ++i) file_of[i] = cat.tensors[i].file;
  } else {
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
  }
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
  // Balance the ranks by bytes written, largest tensors first.
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
  return plan;
}

// One tensor's bytes in an output file that other ranks fill around it.
class FileRegionSink : public RowSink {
 public:
  FileRegionSink(RegionWriter& w, uint64_t offset, uint64_t row_bytes)
      : w_(w), offset_(offset), row_bytes_(row_bytes) {}
  void write(uint64_t row0, uint64_t rows, const void* data) override {
    w_.write_at(data, rows * row_bytes_, offset_ + row0 * row_bytes_);
  }

 private:
  RegionWriter& w_;
  uint64_t offset_, row_bytes_;
};

}  // namespace

int run_export(const ExportOptions& opt, MpiContext& mpi) {
  const auto t0 = std::chrono::steady_clock::now();
  const StagedOutput out(opt.hf_path, "export");
  // Every rank opens the checkpoint (it is small: the manifest); rank 0 plans.
  std::string status = "ok", blob;
  std::optional<MegatronCheckpoint> ck;
  try {
    if (mpi.is_root())
      out.check_apart_from({{opt.megatron_path, "--megatron-path"}, {opt.hf_config, "--hf-config"}});
    ForeignCheckpointOptions foreign;
    foreign.hf_config = opt.hf_config;
    if (opt.experts) foreign.experts.main = *opt.experts;
    if (opt.mtp_experts) foreign.experts.mtp = *opt.mtp_experts;
    ck = open_megatron_checkpoint(opt.megatron_path, &foreign);
    if (mpi.is_root()) {
      out.check_apart_from(checkpoint_files(*ck));
      const auto packed = json::to_msgpack(to_json(build_export_plan(*ck, opt, mpi.size())));
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
  // Nothing is written unless every shard file is present and of this layout.
  // The checksums are checked beside the conversion (below): reading every
  // file once more before starting would add a full read of the checkpoint
  // when it is not in the page cache. Nothing is committed unless they match.
  const std::string problem = validate_shard_files(*ck, /*checksums=*/false, mpi);
  if (!problem.empty()) {
    if (mpi.is_root()) log::error("{}", problem);
    return 2;
  }
  mpi.broadcast(blob);
  const ExportPlan plan = from_json(json::from_msgpack(blob));
  std::string().swap(blob);  // the plan is parsed; its bytes are not needed again

  // Rank 0 creates every file with its header at full size; then all ranks
  // fill in their tensors.
  status = "ok";
  if (mpi.is_root()) {
    try {
      out.prepare(opt.overwrite);
      for (size_t f = 0; f < plan.files.size(); ++f) {
        const fs::path path = resolve_inside(out.staging(), plan.files[f], "output file");
        File file(path, File::Mode::Write);
        file.pwrite_exact(plan.headers[f].data(), plan.headers[f].size(), 0);
        uint64_t end = plan.headers[f].size();
        for (const auto& t : plan.tensors)
          if (t.file == f) end = std::max(end, t.offset + t.nbytes());
        file.truncate(end);
      }
    } catch (const std::exception& e) {
      status = e.what();
    }
  }
  mpi.broadcast(status);
  if (status != "ok") {
    if (mpi.is_root()) log::error("{}", status);
    return 2;
  }

  uint64_t written = 0, tensors = 0, total_bytes = 0;
  // Tensor bytes this rank wrote into each file, summed over ranks before
  // commit: every byte of every file must have been written.
  std::vector<uint64_t> file_written(plan.files.size(), 0);
  for (const auto& t : plan.tensors) total_bytes += t.nbytes();
  Progress progress(mpi, "export", total_bytes, plan.tensors.size());
  std::future<std::vector<std::string>> checksums;
  if (opt.verify_checksums) {
    auto check = [&ck, &mpi] { return checksum_problems(*ck, mpi.rank(), mpi.size()); };
    try {
      checksums = std::async(std::launch::async, check);
    } catch (const std::system_error&) {
      checksums =
          std::async(std::launch::deferred, check);  // no thread under load: after the conversion
    }
  }
  try {
    const IoMode src_io = source_io_mode(opt.io, opt.verify_checksums);
    // The direct I/O buffers (a torch_dist source's read window, the output's
    // write buffer) are taken out of the configured buffer.
    const int io_buffers = (ck->format == "torch_dist" && src_io != IoMode::Buffered ? 1 : 0) +
                           (opt.io != IoMode::Buffered ? 1 : 0);
    const auto engine_ptr =
        make_copy_engine(opt.device, engine_buffer_bytes(opt.buffer_bytes, io_buffers));
    CopyEngine& engine = *engine_ptr;
    engine.allow_overflow(opt.allow_overflow);
    engine.on_block([&](uint64_t b) { progress.add_bytes(b); });
    const auto source_ptr = open_local_source(*ck, plan.refs, io_config(src_io, opt.buffer_bytes));
    RowSource& source = *source_ptr;
    std::map<uint32_t, RegionFile> files;
    AlignedBuffer write_buffer;  // for direct writes, allocated with the first file that takes them
    for (const ExportTensor& t : plan.tensors) {
      if (t.rank != mpi.rank()) continue;
      auto it = files.find(t.file);
      if (it == files.end()) {
        it = files.emplace(t.file, RegionFile(out.staging() / plan.files[t.file], opt.io)).first;
        if (it->second.direct() && write_buffer.size() == 0)
          write_buffer = AlignedBuffer(direct_io_chunk_bytes(opt.buffer_bytes));
      }
      RegionWriter region(it->second, t.offset, t.offset + t.nbytes(), write_buffer);
      FileRegionSink sink(region, t.offset, cols_2d(t.shape) * dtype_size(t.dtype));
      CopyJob job{t.name, &t.segments, rows_2d(t.shape), cols_2d(t.shape), t.stored_dtype, t.dtype, t.op};
      try {
        engine.run(job, source, sink);
        region.finish();
      } catch (...) {
        rethrow_with_context(fmt::format("exporting {}", t.name));
      }
      file_written[t.file] += t.nbytes();
      written += t.nbytes();
      ++tensors;
      progress.add_tensor();
      test_hook_after_tensor(mpi.rank());
    }
    for (auto& [f, file] : files) file.file().fsync();
  } catch (const std::exception& e) {
    mpi.fail(e.what(), out.staging());
  }
  progress.finish();
  std::string corrupt;
  if (checksums.valid()) {
    try {
      const auto found = checksums.get();
      if (!found.empty()) corrupt = found.front();
    } catch (const std::exception& e) {
      corrupt = e.what();
    }
  }
  for (const auto& c : mpi.all_gather(corrupt))
    if (!c.empty()) {
      mpi.barrier();
      if (mpi.is_root()) {
        log::error("{}", c);
        std::error_code ec;
        fs::remove_all(out.staging(), ec);  // never committed; the target is untouched
      }
      return 2;
    }
  const auto file_written_all = mpi.gather(json(file_written).dump());
  const uint64_t total_written = mpi.all_reduce_sum(written);
  const uint64_t total_tensors = mpi.all_reduce_sum(tensors);
  const uint64_t max_rss = mpi.all_reduce_max(peak_rss_bytes());

  if (mpi.is_root()) {
    try {
      json weight_map = json::object();
      uint64_t total = 0;
      for (const auto& t : plan.tensors) {
        weight_map[t.name] = plan.files[t.file];
        total += t.nbytes();
      }
      MB_CHECK(total_tensors == plan.tensors.size(), "internal: {} of {} tensors written",
               total_tensors, plan.tensors.size());
      // Every byte of every file written, and each file of its final size.
      std::vector<uint64_t> done(plan.files.size(), 0), want(plan.files.size(), 0),
          end(plan.files.size(), 0);
      for (const auto& g : file_written_all) {
        const auto v = json::parse(g).get<std::vector<uint64_t>>();
        for (size_t f = 0; f < v.size() && f < done.size(); ++f) done[f] += v[f];
      }
      for (const auto& t : plan.tensors) {
        want[t.file] += t.nbytes();
        end[t.file] = std::max(end[t.file], t.offset + t.nbytes());
      }
      for (size_t f = 0; f < plan.files.size(); ++f) {
        end[f] = std::max<uint64_t>(end[f], plan.headers[f].size());
        const fs::path path = out.staging() / plan.files[f];
        MB_CHECK(done[f] == want[f],
                 "internal: {}: {} of its {} tensor bytes were written; not committed",
                 path.string(), done[f], want[f]);
        MB_CHECK(fs::file_size(path) == end[f],
                 "internal: {} has {} bytes, expected {}; not committed", path.string(),
                 fs::file_size(path), end[f]);
      }
      const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      if (plan.write_index)
        write_file_atomic(out.staging() / "model.safetensors.index.json", index.dump(2) + "\n");
      write_file_atomic(out.staging() / "config.json",
                        ck->manifest.at("model").at("hf_config").dump(2) + "\n");
      for (const auto& f : ck->source.extra_files) {
        const fs::path from = resolve_inside(ck->dir / "hf", f, "extra file");
        std::string why;
        if (!is_hf_side_file(f))
          log::warn("{}: {} is not a known HF side file; not carried into the export", from.string(), f);
        else if (!fs::exists(fs::symlink_status(from)))
          log::warn("{} is missing; {} is not carried into the export", from.string(), f);
        else if (!side_file_is_safe(ck->dir / "hf", f, why))
          log::warn("{}: {}; not carried into the export", from.string(), why);
        else
          copy_regular_file(from, out.staging() / f);
      }
      out.commit();
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("export done: {} tensors in {} files ({}) under {}", plan.tensors.size(),
                plan.files.size(), human_bytes(static_cast<double>(total_written)),
                out.target().string());
      log::info("{:.2f} s, {:.2f} GB/s, peak RSS per rank {}", secs,
                static_cast<double>(total_written) / secs / 1e9,
                human_bytes(static_cast<double>(max_rss)));
    } catch (const std::exception& e) {
      mpi.fail(e.what(), out.staging());
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
