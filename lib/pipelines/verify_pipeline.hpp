// `megabridge verify A B`: compares two checkpoints tensor by tensor, HF with
// HF or HF with Megatron shards (through the mapping, in any layout).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace mb {

class MpiContext;
class Step;

struct VerifyOptions {
  std::filesystem::path a, b;
  double atol = 0;  // both zero: bit-exact
  double rtol = 0;
  uint64_t buffer_bytes = 256ull << 20;
  std::string device = "cpu";  // copy engine: cpu, cuda or auto (make_copy_engine)
  bool verify_checksums = true;
  std::filesystem::path hf_config;  // for a torch_dist side without a megabridge manifest
};

// Returns 0 when the checkpoints match, 1 when differences were found, 2 on
// errors that prevented the comparison.
int run_verify(const VerifyOptions& opt, MpiContext& mpi);

// The comparison as a driver step (step_driver.hpp); `opt` must outlive it.
std::unique_ptr<Step> make_verify_step(const VerifyOptions& opt);

}  // namespace mb
