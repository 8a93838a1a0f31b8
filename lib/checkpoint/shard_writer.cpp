#include "checkpoint/shard_writer.hpp"

#include <sys/resource.h>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

ShardFileInfo shard_file_info(const ParallelLayout& layout, const std::string& architecture,
                              const ShardCoord& coord) {
  ShardFileInfo info;
  info.tp_rank = coord.tp;
  info.pp_rank = coord.pp;
  info.ep_rank = coord.ep;
  info.etp_rank = coord.etp_rank(layout);
  info.tp_size = layout.tp;
  info.pp_size = layout.pp;
  info.ep_size = layout.ep;
  info.etp_size = layout.etp;
  info.extra["architecture"] = architecture;
  info.extra["megabridge_version"] = MEGABRIDGE_VERSION;
  return info;
}

ShardInProgress::ShardInProgress(const ParallelLayout& layout, const std::string& architecture,
                                 const ShardPlan& shard, const fs::path& dir, const IoConfig& io)
    : shard_(shard), name_(shard.coord.file_name()) {
  tmp_ = dir / (name_ + ".tmp");
  final_ = dir / name_;
  result_.coord = shard.coord;
  result_.file = name_;
  w_ = std::make_unique<Hdf5ShardWriter>(tmp_, shard_file_info(layout, architecture, shard.coord),
                                         io);
}

Hdf5ShardWriter& ShardInProgress::begin(size_t k) {
  const LocalTensor& t = shard_.tensors.at(k);
  MB_CHECK(k == result_.tensors.size(), "internal: {}: dataset {} begun after {} of them", name_,
           t.name, result_.tensors.size());
  w_->begin_dataset({t.name, t.global_name, t.shape, t.global_shape, t.dtype, {}});
  return *w_;
}

void ShardInProgress::end(size_t k, uint64_t xxh3) {
  const LocalTensor& t = shard_.tensors.at(k);
  w_->end_dataset(hash_hex(xxh3));
  result_.tensors.push_back({t.name, hash_hex(xxh3)});
}

ShardResult ShardInProgress::commit(uint64_t bytes_read) {
  MB_CHECK(result_.tensors.size() == shard_.tensors.size(),
           "internal: {} committed with {} of its {} datasets", name_, result_.tensors.size(),
           shard_.tensors.size());
  w_->close();
  const std::vector<Hdf5DataRegion> regions = w_->data_regions();
  w_.reset();
  {
    File f(tmp_, File::Mode::ReadWrite);
    f.fsync();
  }
  std::error_code ec;
  fs::rename(tmp_, final_, ec);
  MB_CHECK(!ec, "cannot rename {} to {}: {}", tmp_.string(), final_.string(), ec.message());
  result_.bytes = fs::file_size(final_);
  result_.xxh3 = hash_hex(hdf5_written_file_checksum(final_, regions).digest);
  result_.checksum = kHdf5RegionChecksum;
  result_.bytes_read = bytes_read;
  return result_;
}

void SideBySideSink::add(Hdf5ShardWriter& w, uint64_t offset, uint64_t bytes) {
  MB_CHECK(offset + bytes <= row_bytes_,
           "internal: a side-by-side part takes bytes [{}, {}) of {}-byte rows", offset,
           offset + bytes, row_bytes_);
  for (const Part& p : parts_)
    if (p.offset == offset && p.bytes == bytes) {
      parts_.push_back({&w, offset, bytes, p.hash, false});
      return;
    }
  parts_.push_back({&w, offset, bytes, hashes_.size(), true});
  hashes_.emplace_back();
}

void SideBySideSink::write(uint64_t row0, uint64_t rows, const void* data) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (const Part& part : parts_) {
    if (part.hashes)
      for (uint64_t r = 0; r < rows; ++r)
        hashes_[part.hash].update(p + r * row_bytes_ + part.offset, part.bytes);
    part.w->write_rows(row0, rows, p + part.offset, row_bytes_);
  }
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
