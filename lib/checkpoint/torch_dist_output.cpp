#include "checkpoint/torch_dist_output.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "engine/read_ahead.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/distcp_checksum.hpp"
#include "formats/torch_dist/pickle.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "model/bridge_run_config.hpp"
#include "model/qwen35_dist_keys.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Streams a chunk into its archive.
class ArchiveSink : public RowSink {
 public:
  explicit ArchiveSink(TorchSaveTensorWriter& w, uint64_t row_bytes) : w_(w), row_bytes_(row_bytes) {}
  void write(uint64_t, uint64_t rows, const void* data) override { w_.write(data, rows * row_bytes_); }

 private:
  TorchSaveTensorWriter& w_;
  uint64_t row_bytes_;
};

// The segments of rows [row0, row0+rows) of a tensor, renumbered from 0.
std::vector<Segment> slice_rows(const std::vector<Segment>& segs, uint64_t row0, uint64_t rows) {
  std::vector<Segment> out;
  for (const Segment& s : segs) {
    const uint64_t a = std::max(row0, s.dst_row), b = std::min(row0 + rows, s.dst_row + s.rows);
    if (a >= b) continue;
    Segment x = s;
    x.src_row += a - s.dst_row;
    x.dst_row = a - row0;
    x.rows = b - a;
    out.push_back(x);
  }
  return out;
}

// torch.save([torch.empty(0, dtype=torch.uint8)]): the _extra_state payload of
// TransformerEngine >= 2 modules without FP8, accepted by every such module.
const std::string& empty_extra_state_archive() {
  static const std::string bytes = [] {
    pickle::Writer w;
    w.empty_list();
    pickle_tensor(w, "0", DType::U8, {0});
    w.append();
    return torch_save_archive(w.finish(), {std::string()});
  }();
  return bytes;
}

}  // namespace

std::string common_pt_pickle() {
  pickle::Writer w;
  w.empty_dict();
  w.mark();
  w.string("checkpoint_version");
  w.floating(3.0);
  w.string("iteration");
  w.integer(0);
  w.string("content_metadata");
  w.empty_dict();
  w.mark();
  w.string("singleton_local_shards");
  w.boolean(false);
  w.string("chained_optim_avoid_prefix");
  w.boolean(true);
  w.setitems();
  w.setitems();
  return w.finish();
}

namespace {
// common.pt as a Megatron-Bridge import writes it (spec §1.4).
std::string common_pt() { return torch_save_archive(common_pt_pickle(), {}, "common"); }
}  // namespace

DistFileResult write_distcp_file(const ImportPlan& plan, int rank, const fs::path& out_dir,
                                 CopyEngine& engine, RowSource& source, const IoConfig& io,
                                 const std::function<void()>& on_tensor) {
  DistFileResult r;
  const std::string rel = fmt::format("{}/__{}_0.distcp", kTorchDistIterDir, rank);
  r.file = rel;
  const fs::path path = out_dir / rel;
  const uint64_t read_before = source.bytes_read();
  // The file is written front to back, so its region checksum
  // (formats/torch_dist/distcp_checksum.hpp) is taken from the bytes as they
  // are written: `gap` hashes the bytes since the last tensor's data, each
  // tensor's data has its own hash (also recorded per item in the manifest).
  RegionChecksumBuilder regions;
  Hasher gap;
  uint64_t pos = 0, gap_start = 0;
  auto close_gap = [&](uint64_t end) {
    if (end > gap_start) regions.add(gap_start, end - gap_start, gap.digest());
    gap = Hasher();
  };
  {
    AppendFile f(path, io.mode, io.chunk_bytes);
    // Objects first, then tensors, as Megatron orders a bucket.
    for (size_t si : plan.shards_of_rank(rank)) {
      const ShardPlan& s = plan.shards[si];
      for (const LocalTensor& t : s.tensors)
        for (const std::string& key : dist_extra_states(t, plan.model, plan.layout, s.coord)) {
          const std::string& bytes = empty_extra_state_archive();
          f.append(bytes.data(), bytes.size());
          gap.update(bytes.data(), bytes.size());
          r.items.push_back({key, true, {}, {}, {}, DType::U8, pos, bytes.size(), 0, 0, {}});
          pos += bytes.size();
        }
    }
    // Every chunk this rank writes, in order, with its segments, so that the
    // reads of the next ones are asked for ahead (ReadAhead).
    struct Chunk {
      DistPiece piece;
      std::vector<Segment> segs;
    };
    std::vector<std::pair<const LocalTensor*, std::vector<Chunk>>> tensors;
    std::vector<const std::vector<Segment>*> jobs;
    for (size_t si : plan.shards_of_rank(rank)) {
      const ShardPlan& s = plan.shards[si];
      for (const LocalTensor& t : s.tensors) {
        if (!t.canonical) continue;
        auto& [tensor, chunks] = tensors.emplace_back(&t, std::vector<Chunk>{});
        for (DistPiece& p : dist_pieces(t, plan.model, plan.layout, s.coord)) {
          std::vector<Segment> segs = slice_rows(t.segments, p.row0, p.rows);
          chunks.push_back({std::move(p), std::move(segs)});
        }
      }
    }
    for (auto& [tensor, chunks] : tensors)
      for (const Chunk& c : chunks) jobs.push_back(&c.segs);
    // The conversion reads through `ahead`, which asks for what follows as
    // it reads (a chunk larger than the limit is asked for as it is read).
    ReadAhead ahead(source, std::move(jobs), kReadAheadBytes, /*follows_reads=*/true);
    size_t job = 0;
    for (const auto& [tensor, chunks] : tensors) {
      const LocalTensor& t = *tensor;
      for (const Chunk& c : chunks) {
        const DistPiece& p = c.piece;
        const std::vector<Segment>& segs = c.segs;
        ahead.before(job++);
        Hasher data;
        TorchSaveTensorWriter w(f, pos, t.dtype, p.sizes, &gap, &data);
        uint64_t data_bytes = dtype_size(t.dtype);
        for (uint64_t n : p.sizes) data_bytes *= n;
        const uint64_t data_offset = w.data_offset();
        if (data_bytes > 0) {
          close_gap(data_offset);
          gap_start = data_offset + data_bytes;
        }
        ArchiveSink sink(w, t.cols() * dtype_size(t.dtype));
        try {
          engine.run({p.key, &segs, p.rows, t.cols(), t.source_dtype, t.dtype, t.op}, ahead, sink);
        } catch (...) {
          rethrow_with_context(fmt::format("writing {} of {} into {}", p.key, t.global_name, rel));
        }
        const uint64_t len = w.finish();
        const uint64_t data_hash = data.digest();
        if (data_bytes > 0) regions.add(data_offset, data_bytes, data_hash);
        r.items.push_back({p.key, false, p.offsets, p.sizes, p.global_shape, t.dtype, pos, len,
                           data_offset, data_bytes, hash_hex(data_hash)});
        pos += len;
      }
      if (on_tensor) on_tensor();
    }
    f.finish();
    if (r.items.empty()) {
      fs::remove(path);
      r.file.clear();
      return r;
    }
  }
  close_gap(pos);
  r.bytes = fs::file_size(path);
  MB_CHECK(r.bytes == pos, "internal: {} has {} bytes but {} were written in order", path.string(), r.bytes,
           pos);
  r.xxh3 = hash_hex(regions.digest());
  r.checksum = kDistcpRegionChecksum;
  r.bytes_read = source.bytes_read() - read_before;
  return r;
}

void finish_torch_dist(const ImportPlan& plan, const std::vector<DistFileResult>& results,
                       const fs::path& out_dir) {
  DcpMetadata md;
  for (const DistFileResult& r : results) {
    const std::string file = fs::path(r.file).filename().string();
    for (const DistItem& it : r.items) {
      if (it.object) {
        MB_CHECK(md.byte_items.insert(it.key).second,
                 "internal: ShardedObject {} written twice (the second time in {})", it.key, r.file);
        md.storage[{it.key, {}}] = {file, it.offset, it.length};
        continue;
      }
      DcpTensor& t = md.tensors[it.key];
      if (t.chunks.empty()) {
        t.dtype = it.dtype;
        t.size = it.global_shape;
      }
      MB_CHECK(t.size == it.global_shape && t.dtype == it.dtype,
               "internal: {} written with shapes {} and {}", it.key, shape_str(t.size),
               shape_str(it.global_shape));
      t.chunks.push_back({it.offsets, it.sizes});
      md.storage[{it.key, it.offsets}] = {file, it.offset, it.length};
    }
  }
  // Before anything marks the checkpoint complete: the chunks tile every key.
  const auto problems = check_dcp_tiling(md);
  if (!problems.empty()) {
    std::string msg = fmt::format("torch_dist output is inconsistent ({} problems):", problems.size());
    for (size_t i = 0; i < problems.size() && i < 10; ++i) msg += "\n  - " + problems[i];
    throw Error(msg);
  }
  const fs::path iter = out_dir / kTorchDistIterDir;
  write_file_atomic(iter / "common.pt", common_pt());
  // Exactly the four fields every Megatron-Core version accepts (spec §3.1).
  write_file_atomic(iter / "metadata.json",
                    R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, )"
                    R"("common_backend": "torch", "common_backend_version": 1})");
  write_file_atomic(iter / "run_config.yaml",
                    bridge_run_config_yaml(plan.model, plan.layout, plan.mtp_not_converted));
  write_file_atomic(out_dir / "latest_checkpointed_iteration.txt", "0");
  // .metadata last: its presence is what makes the directory a DCP checkpoint.
  write_file_atomic(iter / ".metadata", write_dcp_metadata(md));
  log::debug("torch_dist: {} tensors, {} objects", md.tensors.size(), md.byte_items.size());
}

json dist_file_result_to_json(const DistFileResult& r) {
  json items = json::array();
  for (const auto& i : r.items)
    items.push_back({i.key, i.object, i.offsets, i.sizes, i.global_shape, dtype_name(i.dtype), i.offset,
                     i.length, i.data_offset, i.data_bytes, i.xxh3});
  return {{"file", r.file},         {"bytes", r.bytes},           {"xxh3", r.xxh3},
          {"checksum", r.checksum}, {"bytes_read", r.bytes_read}, {"items", std::move(items)}};
}

DistFileResult dist_file_result_from_json(const json& j) {
  DistFileResult r;
  r.file = j.at("file").get<std::string>();
  r.bytes = j.at("bytes").get<uint64_t>();
  r.xxh3 = j.at("xxh3").get<std::string>();
  r.checksum = j.value("checksum", std::string());  // records of older versions: whole file
  r.bytes_read = j.at("bytes_read").get<uint64_t>();
  for (const auto& i : j.at("items"))
    r.items.push_back({i.at(0).get<std::string>(), i.at(1).get<bool>(),
                       i.at(2).get<std::vector<uint64_t>>(), i.at(3).get<std::vector<uint64_t>>(),
                       i.at(4).get<Shape>(), *dtype_from_name(i.at(5).get<std::string>()),
                       i.at(6).get<uint64_t>(), i.at(7).get<uint64_t>(),
                       i.size() > 8 ? i.at(8).get<uint64_t>() : 0, i.size() > 8 ? i.at(9).get<uint64_t>() : 0,
                       i.size() > 8 ? i.at(10).get<std::string>() : std::string()});
  return r;
}

std::vector<DataRegion> dist_data_regions(const DistFileResult& r) {
  std::vector<DataRegion> out;
  for (const DistItem& i : r.items)
    if (!i.object && i.data_bytes > 0)
      out.push_back({distcp_item_name(i.key, i.offsets), i.data_offset, i.data_bytes, i.xxh3});
  std::sort(out.begin(), out.end(),
            [](const DataRegion& a, const DataRegion& b) { return a.offset < b.offset; });
  return out;
}

bool dist_file_intact(const fs::path& path, const DistFileResult& r) {
  try {
    if (!fs::exists(path) || fs::file_size(path) != r.bytes) return false;
    if (r.checksum.empty()) return hash_hex(hash_file(path)) == r.xxh3;
    MB_CHECK(r.checksum == kDistcpRegionChecksum, "{}: unknown checksum scheme '{}'", path.string(),
             r.checksum);
    const RegionChecksum c = region_file_checksum(path, dist_data_regions(r));
    return c.bad.empty() && hash_hex(c.digest) == r.xxh3;
  } catch (const std::exception&) {
    return false;  // not even readable: written again
  }
}

}  // namespace mb
