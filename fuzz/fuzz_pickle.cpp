// libFuzzer target: mb::pickle::loads and mb::read_dcp_metadata on the input, then
// check_dcp_tiling and a write_dcp_metadata/read round trip.
// The entry logic is in fuzz_entry_points.hpp (shared with the regression test).
#include "fuzz_entry_points.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mb::fuzz::pickle(data, size);
}
