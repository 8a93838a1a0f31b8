// Megatron-Core shards -> a HuggingFace checkpoint, distributed over MPI.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <optional>

#include "core/direct_io.hpp"
#include "core/dtype.hpp"
#include "model/qwen35_hf_schema.hpp"

namespace mb {

class MpiContext;
class Step;

struct ExportOptions {
  std::filesystem::path megatron_path;
  std::filesystem::path hf_path;
  std::optional<ExpertLayout> experts;      // decoder expert layout; default: as the source
  std::optional<ExpertLayout> mtp_experts;  // MTP expert layout; default: as the source
  // Split into files of at most this size. Default: reproduce the source's
  // file names and shard map when the tensor set is unchanged, else 5 GiB.
  std::optional<uint64_t> max_shard_bytes;
  std::optional<DType> dtype;  // default: each tensor's source dtype
  uint64_t buffer_bytes = 256ull << 20;
  std::string device = "cpu";  // copy engine: cpu, cuda or auto (make_copy_engine)
  IoMode io = IoMode::Auto;  // O_DIRECT for large transfers where the filesystem takes it (direct_io.hpp)
  bool verify_checksums = true;
  bool overwrite = false;
  // A --dtype cast that turns finite values into Inf fails the job unless
  // this is set (--allow-overflow).
  bool allow_overflow = false;
  // For a torch_dist checkpoint written by another tool (no megabridge
  // manifest): the model's HF config.json.
  std::filesystem::path hf_config;
};

int run_export(const ExportOptions& opt, MpiContext& mpi);

// The export as a driver step (step_driver.hpp); `opt` must outlive it.
std::unique_ptr<Step> make_export_step(const ExportOptions& opt);

// Parses "5GB", "500MB", "4GiB", "123" (bytes).
uint64_t parse_size(const std::string& s);

}  // namespace mb
