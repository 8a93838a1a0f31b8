// `megabridge bench`: import, export and reshard of a synthetic checkpoint,
// each timed against the storage floor measured next to it on the same
// filesystem: the mean of direct-I/O copies of the phase's input taken just
// before and just after it (direct_copy_tree), or `cp -r` + sync (measured
// once, first) where faster. Per rank: throughput, peak RSS, /proc/self/io bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "core/direct_io.hpp"
#include "layout/parallel_layout.hpp"

namespace mb {

class MpiContext;

struct BenchOptions {
  std::filesystem::path hf_config;  // configs/hf/<size>.json
  uint64_t layers = 4;
  std::optional<uint64_t> vision_depth;
  std::filesystem::path dir;  // work directory: hf/, cp/, meg/, back/, resh/
  ParallelLayout layout;
  uint64_t buffer_bytes = 256ull << 20;
  std::string device = "cpu";  // copy engine for import and export: cpu, cuda or auto
  IoMode io = IoMode::Auto;  // O_DIRECT for large transfers where the filesystem takes it (direct_io.hpp)
  bool keep = false;  // keep the outputs (the synthetic input is always kept for reuse)
  std::string format = "hdf5";  // import output format
  bool read_once = false;       // import in read-once mode
  // Drop the page cache (sync, then /proc/sys/vm/drop_caches, root only)
  // before each phase, so that every phase reads from storage and the
  // storage counters show what was really read.
  bool cold = false;
  // Target of the reshard phase (from the import's output). Default: TP2 from
  // TP1·PP1·EP1; else TP and EP swapped (MoE) or TP and PP swapped (dense).
  std::optional<ParallelLayout> reshard_layout;
  // Import, export and reshard (each between its direct copies) this many
  // times in a row; more than one adds a summary of each phase's median
  // ratio to its floor. cp -r runs in the first repeat only.
  int repeats = 1;
};

int run_bench(const BenchOptions& opt, MpiContext& mpi);

}  // namespace mb
