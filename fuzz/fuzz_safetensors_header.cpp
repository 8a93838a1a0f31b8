// libFuzzer target: mb::parse_safetensors_header on the input as header JSON, and
// mb::read_safetensors_header on the input as a whole file (8-byte length
// prefix, JSON, data section), with a write/parse round trip.
// The entry logic is in fuzz_entry_points.hpp (shared with the regression test).
#include "fuzz_entry_points.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mb::fuzz::safetensors_header(data, size);
}
