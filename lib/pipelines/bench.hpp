// `megabridge bench`: import and export of a synthetic checkpoint, timed
// against a plain `cp -r` of the same checkpoint on the same filesystem in
// the same run, with per-rank throughput, peak RSS and /proc/self/io bytes.
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
  std::filesystem::path dir;  // work directory: hf/, cp/, meg/, back/
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
};

int run_bench(const BenchOptions& opt, MpiContext& mpi);

}  // namespace mb
