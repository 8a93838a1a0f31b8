#include "checkpoint/rank_shards.hpp"

#include <filesystem>
#include <optional>

#include "checkpoint/shard_writer.hpp"
#include "checkpoint/staged_output.hpp"
#include "core/hash.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"
#include "core/log.hpp"

namespace mb {
namespace {

// A shard an interrupted run already committed, if its bytes still match the
// checksum recorded when it was written.
std::optional<ShardResult> kept_shard(const StagedOutput& out, const std::string& file) {
  const std::string rec = out.done_record(file);
  const auto path = out.staging() / file;
  if (rec.empty() || !std::filesystem::exists(path)) return std::nullopt;
  ShardResult r = shard_result_from_json(nlohmann::json::parse(rec));
  const std::string scheme = r.checksum.empty() ? kWholeFileChecksum : r.checksum;
  bool same = std::filesystem::file_size(path) == r.bytes;
  try {
    same = same && hash_hex(file_checksum(path, scheme)) == r.xxh3;
  } catch (const std::exception&) {
    same = false;  // not even readable: written again
  }
  if (!same) {
    log::warn("resume: {} does not match its recorded checksum; writing it again", file);
    return std::nullopt;
  }
  return r;
}

}  // namespace

std::vector<ShardResult> write_rank_shards(const ImportPlan& plan, int rank,
                                           const StagedOutput& out, bool resume, CopyEngine& engine,
                                           RowSource& source, const IoConfig& io,
                                           const RankShardCallbacks& on) {
  std::vector<ShardResult> results;
  for (size_t i : plan.shards_of_rank(rank)) {
    const ShardPlan& s = plan.shards[i];
    if (resume) {
      if (auto r = kept_shard(out, s.coord.file_name())) {
        log::info("resume: keeping {}", s.coord.file_name());
        if (on.kept_bytes) on.kept_bytes(s.bytes_written());
        results.push_back(std::move(*r));
        continue;
      }
    }
    log::debug("writing {} ({} tensors, {})", s.coord.file_name(), s.tensors.size(),
               human_bytes(static_cast<double>(s.bytes_written())));
    results.push_back(write_hdf5_shard(plan.layout, plan.model.architecture, s, out.staging(),
                                       engine, source, io, on.after_tensor));
    out.mark_done(results.back().file, shard_result_to_json(results.back()).dump());
  }
  return results;
}

}  // namespace mb
