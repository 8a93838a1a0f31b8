// libFuzzer target: mb::parse_model_config on the input as config.json (then validate_layout,
// stage_layers, the Megatron YAML, qwen35_hf_schema, check_hf_checkpoint), and
// mb::read_hf_catalog on a directory whose model.safetensors.index.json is the
// input, next to two tiny valid shards.
// The entry logic is in fuzz_entry_points.hpp (shared with the regression test).
#include "fuzz_entry_points.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mb::fuzz::hf_config(data, size);
}
