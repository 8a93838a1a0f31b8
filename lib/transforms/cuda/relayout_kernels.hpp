// CUDA kernels for the Qwen3.5 re-layouts, the segment gather and the element
// op/cast, behind a plain C++ API (no CUDA types: streams are passed as
// `void*` holding a cudaStream_t, nullptr for the default stream). Built only
// when MEGABRIDGE_HAVE_CUDA is defined (lib/CMakeLists.txt).
//
// Every kernel is bit-identical to the CPU path: the re-layouts use the
// closed forms of relayout_index.hpp (checked against relayout.hpp on the CPU
// by tests/unit/test_relayout_index.cpp), the element op and casts call
// conv::transform_element() of dtype_convert.hpp (checked against
// transform_elements() over every 16-bit pattern there). tests/gpu compares
// each kernel with the CPU path on a device. docs/cuda.md has the design.
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

// ---- the re-layouts (spec §3), one local (TP/ETP rank) tensor at a time ------
// Sources and destination are dense 2-D row-major tensors of `cols` elements
// of `elem` bytes per row; `part` of `n_parts` is the TP (ETP) rank.

// §3.2: q_proj [2·nh·hd], k_proj / v_proj [ng·hd] -> local QKVG [(2nh+2ng)·hd / T].
void qkvg_interleave(const void* d_q, const void* d_k, const void* d_v, void* d_dst, uint64_t cols,
                     size_t elem, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                     uint64_t n_parts, uint64_t part, void* stream = nullptr);
// §3.3: in_proj_qkv [2Kd+Vd], z [Vd], b / a [nv] -> local in_proj [(2Kd+2Vd+2nv)/T].
void gdn_in_proj(const void* d_qkv, const void* d_z, const void* d_b, const void* d_a, void* d_dst,
                 uint64_t cols, size_t elem, uint64_t key_dim, uint64_t value_dim,
                 uint64_t value_heads, uint64_t n_parts, uint64_t part, void* stream = nullptr);
// §3.4: conv1d [2Kd+Vd] (cols = 1·kernel) -> local conv [(2Kd+Vd)/T].
void gdn_conv(const void* d_conv, void* d_dst, uint64_t cols, size_t elem, uint64_t key_dim,
              uint64_t value_dim, uint64_t n_parts, uint64_t part, void* stream = nullptr);
// §3.5: gate / up [ffn] -> local linear_fc1 [2·ffn/N].
void glu_concat(const void* d_gate, const void* d_up, void* d_dst, uint64_t cols, size_t elem,
                uint64_t ffn, uint64_t n_parts, uint64_t part, void* stream = nullptr);
// §3.6: vision qkv [3·nh·hd] -> local [3·nh·hd / T].
void vision_qkv_interleave(const void* d_qkv, void* d_dst, uint64_t cols, size_t elem,
                           uint64_t heads, uint64_t head_dim, uint64_t n_parts, uint64_t part,
                           void* stream = nullptr);
// §3.8: expert `expert` of a fused gate_up_proj [E, 2I, H] -> linear_fc1 [2I/N, H]
// of ETP rank `part` (cols = H).
void expert_fc1_from_slab(const void* d_gate_up, void* d_dst, uint64_t hidden, size_t elem,
                          uint64_t expert, uint64_t ffn, uint64_t n_parts, uint64_t part,
                          void* stream = nullptr);
// §3.8: expert `expert` of a fused down_proj [E, H, I] -> linear_fc2 [H, I/N].
void expert_fc2_from_slab(const void* d_down, void* d_dst, uint64_t hidden, size_t elem,
                          uint64_t expert, uint64_t ffn, uint64_t n_parts, uint64_t part,
                          void* stream = nullptr);

// ---- segment gather ------------------------------------------------------------

// One rectangle copy, in units of the launch's word size: `rows` x `cols` words
// from src + src_offset (rows src_stride words apart) to destination rows
// [dst_row, dst_row+rows), columns [dst_col, dst_col+cols) of a dst_cols-word
// row pitch. Like Segment (segment.hpp) with the source tensor resolved to an
// offset into one source buffer.
struct GatherRect {
  uint64_t src_offset = 0;
  uint64_t src_stride = 0;
  uint64_t dst_row = 0;
  uint64_t dst_col = 0;
  uint64_t rows = 0;
  uint64_t cols = 0;
};

// Converts rects given in `elem`-byte elements (and the destination pitch) to
// the widest word (16, 8, 4, 2 or 1 bytes) that divides every offset, stride,
// column and width, so the kernel moves as few, as wide, words as possible.
// Returns the word size. Base pointers must be aligned to 16 bytes
// (cudaMalloc's are).
size_t widen_rects(std::vector<GatherRect>& rects, uint64_t& dst_cols, size_t elem);

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
