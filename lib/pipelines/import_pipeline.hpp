// HF -> Megatron-Core shards, distributed over MPI.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "core/direct_io.hpp"
#include "core/dtype.hpp"
#include "layout/parallel_layout.hpp"
#include "model/qwen35_config.hpp"

namespace mb {

class MpiContext;
class Step;

struct ImportOptions {
  std::filesystem::path hf_path;
  std::filesystem::path out;
  ParallelLayout layout;
  std::string format = "hdf5";
  std::optional<DType> dtype;  // nullopt: keep every tensor's source dtype
  // `--dtype model`: every floating-point tensor in the model's params dtype (config.json's
  // `dtype`), as Megatron-Bridge stores them (Qwen3.5's fp32 A_log and GDN norm become
  // bf16). Overrides `dtype`.
  bool dtype_model = false;
  uint64_t buffer_bytes = 256ull << 20;
  std::string device = "cpu";  // copy engine: cpu, cuda or auto (make_copy_engine)
  IoMode io = IoMode::Auto;  // O_DIRECT for large transfers where the filesystem takes it (direct_io.hpp)
  bool strict = true;
  bool overwrite = false;
  // Continue an interrupted run: shards already committed in the staging
  // directory and matching their recorded checksum are kept.
  bool resume = false;
  // Each HF byte read from storage by one rank and forwarded to the others
  // (HDF5 output; torch_dist output reads each byte once anyway).
  bool read_once = false;
  // A --dtype cast that turns finite values into Inf fails the job unless
  // this is set (--allow-overflow).
  bool allow_overflow = false;
};

// The dtype every floating-point tensor is converted to (nullopt: kept as stored in HF).
std::optional<DType> import_cast(const ImportOptions& opt, const ModelConfig& model);

// Applies a --dtype / YAML `dtype` value: keep, bf16, fp16, fp32 or model.
void set_import_dtype(ImportOptions& opt, const std::string& value);

// Runs on every rank. Returns the process exit code (0 on success). A failure
// on any rank aborts the whole job; nothing is committed unless all succeed.
int run_import(const ImportOptions& opt, MpiContext& mpi);

// The import as a driver step (step_driver.hpp); `opt` must outlive it.
std::unique_ptr<Step> make_import_step(const ImportOptions& opt);

}  // namespace mb
