// `megabridge reshard`: Megatron shards in one layout -> another layout,
// directly (no HF in between). The result is bit-identical to importing the
// original HF checkpoint at the target layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/direct_io.hpp"
#include "layout/parallel_layout.hpp"
#include "pipelines/plan_report.hpp"

namespace mb {

class MpiContext;
struct MegatronCheckpoint;
class Step;

struct ReshardOptions {
  std::filesystem::path src;
  std::filesystem::path out;
  ParallelLayout layout;
  uint64_t buffer_bytes = 256ull << 20;
  std::string device = "cpu";  // copy engine: cpu, cuda or auto (make_copy_engine)
  IoMode io = IoMode::Auto;  // O_DIRECT for large transfers where the filesystem takes it (direct_io.hpp)
  bool verify_checksums = true;
  bool overwrite = false;
  // Continue an interrupted run: shards already committed in the staging
  // directory and matching their recorded checksum are kept (as for import).
  bool resume = false;
};

int run_reshard(const ReshardOptions& opt, MpiContext& mpi);

// The reshard as a driver step (step_driver.hpp); `opt` must outlive it.
std::unique_ptr<Step> make_reshard_step(const ReshardOptions& opt);

// What `opt` run on `world` ranks reads from the shards of `src` (opt.src
// opened), by its plan (plan_report.hpp). Exact bytes: the aligned cover of
// each direct read (at most two 4 KiB units more) is not counted, the
// sources' file offsets not being part of the plan.
StorageReads reshard_storage_reads(const ReshardOptions& opt, const MegatronCheckpoint& src,
                                   int world);

}  // namespace mb
