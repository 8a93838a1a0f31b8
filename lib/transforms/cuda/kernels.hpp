// CUDA kernels for the segment gather and the element op/cast, behind a plain
// C++ API (no CUDA types: streams are passed as
// `void*` holding a cudaStream_t, nullptr for the default stream). Built only
// when MEGABRIDGE_HAVE_CUDA is defined (lib/CMakeLists.txt).
//
// These are the kernels the device copy engine runs (cuda_copy_engine.cpp);
// the model's re-layouts reach the GPU as segment tables, like on the CPU.
// Both are bit-identical to the CPU path: the gather uses the index math of
// gather_rects.hpp (run on the CPU by gather_rects_host() and checked against
// apply_segments() in tests/unit/test_gather_rects.cpp), the element op and
// casts call conv::transform_element() of dtype_convert.hpp (checked against
// transform_elements() over every 16-bit pattern there). tests/gpu compares
// each kernel and the engine with the CPU path on a device. docs/cuda.md.
//
// All pointers named d_* are device pointers. Functions throw mb::Error naming
// the CUDA call and its error string when CUDA reports one. Launches are
// asynchronous on `stream`, like the CUDA runtime's own calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.hpp"
#include "transforms/elementwise.hpp"
#include "transforms/gather_rects.hpp"

namespace mb::cuda {

// ---- runtime helpers ---------------------------------------------------------

// Throws mb::Error(msg). Defined in host-compiled code (cuda_copy_engine.cpp)
// because nvcc cannot compile fmt, which core/error.hpp includes.
[[noreturn]] void raise_error(const std::string& msg);

// Number of usable devices; 0 (with `why` set) when there is no driver, no
// device, or the runtime fails. Never aborts.
int device_count(std::string* why = nullptr);
void set_device(int device);
int current_device();
std::string device_name(int device);

void* device_alloc(size_t bytes);
void device_free(void* d_ptr) noexcept;
void* pinned_alloc(size_t bytes);  // page-locked host memory
void pinned_free(void* ptr) noexcept;
void* stream_create();
void stream_destroy(void* stream) noexcept;
void stream_sync(void* stream);
void* event_create();
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
void event_sync(void* event);
void copy_to_device(void* d_dst, const void* src, size_t bytes, void* stream = nullptr);
void copy_to_host(void* dst, const void* d_src, size_t bytes, void* stream = nullptr);
void memset_device(void* d_dst, int value, size_t bytes, void* stream = nullptr);
// Throws if an earlier asynchronous launch or copy failed.
void check_last_error(const char* what);

// An owned device allocation (for tests and small tools).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes)
      : bytes_(bytes), ptr_(bytes ? device_alloc(bytes) : nullptr) {}
  ~DeviceBuffer() { device_free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : bytes_(o.bytes_), ptr_(o.ptr_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(bytes_, o.bytes_);
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }
  void upload(const void* src, size_t bytes) { copy_to_device(ptr_, src, bytes); }
  void download(void* dst, size_t bytes) const { copy_to_host(dst, ptr_, bytes); }

 private:
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// ---- segment gather ------------------------------------------------------------

// Executes `n` rects (a device array) in one launch: dst = gather(src).
// `max_rect_words` (the largest rows·cols) sizes the grid. word: 1, 2, 4, 8 or 16.
void segment_gather(const GatherRect* d_rects, uint32_t n, uint64_t max_rect_words,
                    const void* d_src, void* d_dst, uint64_t dst_cols, size_t word,
                    void* stream = nullptr);

// Convenience for tests: rects in elements, uploaded, widened and run, synchronously.
void segment_gather_sync(std::vector<GatherRect> rects, const void* d_src, void* d_dst,
                         uint64_t dst_cols, size_t elem);

// ---- element op and cast ---------------------------------------------------------

// True when transform_elements(op, from, ..., to, ...) is defined (it throws
// otherwise), i.e. what transform() below accepts.
bool transform_supported(ElementOp op, DType from, DType to);

// d_dst[i] = cast<to>(op(d_src[i])) exactly as transform_elements() on the CPU
// (with op None and from == to, a copy). If d_not_invertible is given (op set,
// from == to), adds the count_not_invertible() of the input to that device
// counter. Throws the CPU path's error for combinations it refuses.
void transform(ElementOp op, DType from, const void* d_src, DType to, void* d_dst, uint64_t n,
               unsigned long long* d_not_invertible = nullptr, void* stream = nullptr);

}  // namespace mb::cuda
