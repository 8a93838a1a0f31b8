#include "core/error.hpp"
#include "engine/copy_engine.hpp"

#ifdef MEGABRIDGE_HAVE_CUDA
#include "engine/cuda_copy_engine.hpp"
#endif

namespace mb {

std::unique_ptr<CopyEngine> make_copy_engine(const std::string& device, uint64_t buffer_bytes) {
  if (device == "cpu") return std::make_unique<CopyEngine>(buffer_bytes);
#ifdef MEGABRIDGE_HAVE_CUDA
  if (device == "cuda" || device == "auto") {
    std::string why;
    if (cuda_device_available(&why)) return std::make_unique<CudaCopyEngine>(buffer_bytes);
    MB_CHECK(device == "auto", "--device cuda: no usable CUDA device ({})", why);
    return std::make_unique<CopyEngine>(buffer_bytes);
  }
#else
  MB_CHECK(device != "cuda", "--device cuda: this megabridge was built without CUDA (nvcc not found)");
  if (device == "auto") return std::make_unique<CopyEngine>(buffer_bytes);
#endif
  throw Error("unknown device '{}' (expected cpu, cuda or auto)", device);
}

}  // namespace mb
