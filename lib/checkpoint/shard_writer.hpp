// Writes model-parallel ranks' HDF5 shards from any row source (HF
// safetensors for import, other shards for reshard): under a temporary name,
// fsynced, then renamed, with their checksums reported for the manifest.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "checkpoint/manifest.hpp"
#include "core/direct_io.hpp"
#include "core/hash.hpp"
#include "engine/copy_engine.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "layout/import_plan.hpp"

namespace mb {

// The file attributes of a plan's shard: its place in the layout, the
// architecture and this build's version (every HDF5 writer of shards uses it).
ShardFileInfo shard_file_info(const ParallelLayout& layout, const std::string& architecture,
                              const ShardCoord& coord);

// One HDF5 shard being written, under a temporary name: its datasets in the
// plan's order, each begun, written by a copy engine (a sink of its own, or
// side by side with other shards' datasets through SideBySideSink) and ended
// with the checksum of its bytes as written; then fsynced and renamed by
// commit(), which reports the checksums for the manifest. The file checksum
// (scheme kHdf5RegionChecksum) is taken from the tensors' checksums and the
// regions the writer allocated them, plus the metadata read back: neither
// the data nor the datasets are read again. Data is written with `io`
// (direct where it says so, two write-behind buffers of io.chunk_bytes).
class ShardInProgress {
 public:
  ShardInProgress(const ParallelLayout& layout, const std::string& architecture,
                  const ShardPlan& shard, const std::filesystem::path& dir, const IoConfig& io);
  // Creates dataset `k` (the next one) and returns its writer.
  Hdf5ShardWriter& begin(size_t k);
  void end(size_t k, uint64_t xxh3);
  // Closes, fsyncs and renames the file; `bytes_read` is what its source read.
  ShardResult commit(uint64_t bytes_read);
  const std::string& file_name() const { return name_; }
  const ShardPlan& plan() const { return shard_; }

 private:
  const ShardPlan& shard_;
  std::string name_;
  std::filesystem::path tmp_, final_;
  std::unique_ptr<Hdf5ShardWriter> w_;
  ShardResult result_;
};

// Hands each block of a job to one dataset of one shard, which hashes the rows on the
// writing thread beside the write.
class DatasetSink : public RowSink {
 public:
  explicit DatasetSink(Hdf5ShardWriter& w) : w_(w) {}
  void write(uint64_t row0, uint64_t rows, const void* data) override {
    w_.write_rows(row0, rows, data);
  }

 private:
  Hdf5ShardWriter& w_;
};

// Hands each block of a side-by-side job (ConversionStep) to the shards' datasets: part
// i takes columns [col0_i, col0_i + cols_i) of every row, and is hashed as it is written
// (the job's own hash, of the joined rows, is not any dataset's). Parts that take the
// same columns (one tensor for several shards) are hashed once.
class SideBySideSink : public RowSink {
 public:
  // `row_bytes`: a joined row's width.
  explicit SideBySideSink(uint64_t row_bytes) : row_bytes_(row_bytes) {}
  // A dataset begun, taking `bytes` of each joined row from `offset` on.
  void add(Hdf5ShardWriter& w, uint64_t offset, uint64_t bytes);
  void write(uint64_t row0, uint64_t rows, const void* data) override;
  uint64_t digest(size_t part) const { return hashes_[parts_.at(part).hash].digest(); }

 private:
  struct Part {
    Hdf5ShardWriter* w;
    uint64_t offset, bytes;  // within a joined row
    size_t hash;             // index into hashes_, one per distinct (offset, bytes)
    bool hashes;             // the first part of its range: the one that feeds the hash
  };
  std::vector<Part> parts_;
  std::vector<Hasher> hashes_;
  uint64_t row_bytes_;
};

// Collects every rank's shard results on rank 0 (empty elsewhere), plus the
// largest peak RSS of any rank.
struct GatheredResults {
  std::vector<ShardResult> results;
  uint64_t max_rss = 0;
};
class MpiContext;
GatheredResults gather_shard_results(const std::vector<ShardResult>& mine, MpiContext& mpi);

uint64_t peak_rss_bytes();
std::string human_bytes(double bytes);

}  // namespace mb
