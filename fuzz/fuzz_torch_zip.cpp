// libFuzzer target: mb::read_torch_tensor_item and mb::read_torch_archive_record on the input
// as a torch.save archive (an in-memory file), and a torch_save_archive round trip.
// The entry logic is in fuzz_entry_points.hpp (shared with the regression test).
#include "fuzz_entry_points.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mb::fuzz::torch_zip(data, size);
}
