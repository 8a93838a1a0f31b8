#include "checkpoint/rank_shards.hpp"

#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include "checkpoint/shard_writer.hpp"
#include "checkpoint/side_by_side.hpp"
#include "checkpoint/staged_output.hpp"
#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "engine/read_ahead.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"

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

// Writes one batch of shards side by side (side_by_side.hpp) and commits each.
void write_batch(const ImportPlan& plan, const std::vector<size_t>& batch, const StagedOutput& out,
                 CopyEngine& engine, RowSource& source, const IoConfig& io,
                 const RankShardCallbacks& on, std::vector<ShardResult>& results) {
  const uint64_t read_before = source.bytes_read();
  std::map<size_t, std::unique_ptr<ShardInProgress>> open;
  for (size_t si : batch) {
    const ShardPlan& s = plan.shards[si];
    log::debug("writing {} ({} tensors, {})", s.coord.file_name(), s.tensors.size(),
               human_bytes(static_cast<double>(s.bytes_written())));
    open[si] = std::make_unique<ShardInProgress>(plan.layout, plan.model.architecture, s,
                                                 out.staging(), io);
  }
  const std::vector<ConversionStep> steps = side_by_side_steps(plan, batch);
  std::vector<const std::vector<Segment>*> jobs;
  for (const ConversionStep& st : steps) jobs.push_back(&st.segments);
  // The conversion reads through `ahead`, which asks for what follows as it
  // reads (a tensor larger than the limit is asked for as it is read).
  ReadAhead ahead(source, std::move(jobs), kReadAheadBytes, /*follows_reads=*/true);
  for (size_t i = 0; i < steps.size(); ++i) {
    const ConversionStep& st = steps[i];
    ahead.before(i);
    const auto& [first_shard, first_k] = st.parts.front();
    const LocalTensor& t = plan.shards[first_shard].tensors[first_k];
    std::string what = fmt::format("{} of {}", t.name, open.at(first_shard)->file_name());
    for (size_t p = 1; p < st.parts.size(); ++p)
      what += fmt::format(", {}", open.at(st.parts[p].first)->file_name());
    CopyJob job{t.name, &st.segments, st.rows, st.cols, t.source_dtype, t.dtype, t.op};
    CopyResult r;
    const uint64_t elem = dtype_size(t.dtype);
    SideBySideSink side(st.cols * elem);
    try {
      if (st.parts.size() == 1) {
        DatasetSink sink(open.at(first_shard)->begin(first_k));
        job.hash = true;  // the dataset's xxh3 attribute (end() below)
        r = engine.run(job, ahead, sink);
      } else {
        for (size_t p = 0; p < st.parts.size(); ++p) {
          const auto& [si, k] = st.parts[p];
          side.add(open.at(si)->begin(k), st.part_col[p] * elem,
                   plan.shards[si].tensors[k].cols() * elem);
        }
        r = engine.run(job, ahead, side);
      }
    } catch (...) {
      rethrow_with_context(fmt::format("writing {}", what));
    }
    if (r.not_invertible > 0)
      log::warn(
          "{}: {} element(s) of {} do not survive {} and back bit-exactly in {} "
          "(magnitudes below 0.5); the Megatron values are still correct",
          what, r.not_invertible, t.global_name, op_name(t.op), dtype_name(t.dtype));
    for (size_t p = 0; p < st.parts.size(); ++p) {
      const auto& [si, k] = st.parts[p];
      open.at(si)->end(k, st.parts.size() == 1 ? r.xxh3 : side.digest(p));
      if (on.after_tensor) on.after_tensor();
    }
  }
  // What the batch read is reported once, with its first shard.
  bool first = true;
  for (size_t si : batch) {
    results.push_back(open.at(si)->commit(first ? source.bytes_read() - read_before : 0));
    first = false;
    open.erase(si);
    out.mark_done(results.back().file, shard_result_to_json(results.back()).dump());
  }
}

}  // namespace

std::vector<ShardResult> write_rank_shards(const ImportPlan& plan, int rank,
                                           const StagedOutput& out, bool resume, CopyEngine& engine,
                                           RowSource& source, const IoConfig& io,
                                           size_t open_at_once, const RankShardCallbacks& on) {
  std::vector<ShardResult> results;
  std::vector<size_t> to_write;
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
    to_write.push_back(i);
  }
  for (const auto& batch : shard_batches(plan, to_write, open_at_once))
    write_batch(plan, batch, out, engine, source, io, on, results);
  return results;
}

}  // namespace mb
