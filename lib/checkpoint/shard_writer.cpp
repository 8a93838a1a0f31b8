#include "checkpoint/shard_writer.hpp"

#include <sys/resource.h>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "engine/read_ahead.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"
#include "formats/hdf5/hdf5_shard.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
class Hdf5DatasetSink : public RowSink {
 public:
  explicit Hdf5DatasetSink(Hdf5ShardWriter& w) : w_(w) {}
  void write(uint64_t row0, uint64_t rows, const void* data) override {
    w_.write_rows(row0, rows, data);
  }

 private:
  Hdf5ShardWriter& w_;
};
}  // namespace

ShardResult write_hdf5_shard(const ParallelLayout& layout, const std::string& architecture,
                             const ShardPlan& shard, const fs::path& dir, CopyEngine& engine,
                             RowSource& source, const IoConfig& io,
                             const std::function<void()>& on_tensor) {
  const std::string name = shard.coord.file_name();
  const fs::path tmp = dir / (name + ".tmp"), final_path = dir / name;
  ShardFileInfo info;
  info.tp_rank = shard.coord.tp;
  info.pp_rank = shard.coord.pp;
  info.ep_rank = shard.coord.ep;
  info.etp_rank = shard.coord.etp_rank(layout);
  info.tp_size = layout.tp;
  info.pp_size = layout.pp;
  info.ep_size = layout.ep;
  info.etp_size = layout.etp;
  info.extra["architecture"] = architecture;
  info.extra["megabridge_version"] = MEGABRIDGE_VERSION;

  ShardResult result;
  result.coord = shard.coord;
  result.file = name;
  const uint64_t read_before = source.bytes_read();
  std::map<std::string, uint64_t> written;  // each dataset's xxh3, from the bytes as written
  {
    Hdf5ShardWriter w(tmp, info, io);
    Hdf5DatasetSink sink(w);
    std::vector<const std::vector<Segment>*> jobs;
    for (const LocalTensor& t : shard.tensors) jobs.push_back(&t.segments);
    ReadAhead ahead(source, std::move(jobs));
    for (size_t k = 0; k < shard.tensors.size(); ++k) {
      const LocalTensor& t = shard.tensors[k];
      ahead.before(k);
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
                  "(magnitudes below 0.5); the Megatron values are still correct",
                  name, r.not_invertible, t.global_name, op_name(t.op), dtype_name(t.dtype));
      w.end_dataset(hash_hex(r.xxh3));
      result.tensors.push_back({t.name, hash_hex(r.xxh3)});
      written[t.name] = r.xxh3;
      if (on_tensor) on_tensor();
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
  result.xxh3 = hash_hex(hdf5_file_checksum(final_path, written).digest);
  result.checksum = kHdf5RegionChecksum;
  result.bytes_read = source.bytes_read() - read_before;
  return result;
}

GatheredResults gather_shard_results(const std::vector<ShardResult>& mine, MpiContext& mpi) {
  json arr = json::array();
  for (const auto& r : mine) arr.push_back(shard_result_to_json(r));
  const json stats = {{"results", arr}, {"rss", peak_rss_bytes()}};
  GatheredResults out;
  for (const auto& g : mpi.gather(stats.dump())) {
    const json j = json::parse(g);
    for (const auto& r : j.at("results")) out.results.push_back(shard_result_from_json(r));
    out.max_rss = std::max(out.max_rss, j.at("rss").get<uint64_t>());
  }
  return out;
}

uint64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", b, units[u]);
}

}  // namespace mb
