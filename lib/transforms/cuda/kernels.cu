// CUDA kernels: the segment gather of gather_rects.hpp and the element op/cast
// of dtype_convert.hpp. See kernels.hpp.
//
// This file is compiled by nvcc, which cannot compile fmt's headers (Debian's
// fmt 9: consteval format strings and constexpr helpers fail in nvcc's host
// pass), so it includes nothing that pulls in fmt (no core/error.hpp): errors
// are plain strings handed to raise_error(), which throws mb::Error from
// host-compiled code (cuda_copy_engine.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "core/dtype_convert.hpp"
#include "transforms/cuda/kernels.hpp"
#include "transforms/gather_rects.hpp"

namespace mb::cuda {
namespace {

[[noreturn]] void fail(const std::string& msg) {
  raise_error(msg);
}

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess)
    fail(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
#define MB_CUDA(call) check((call), #call)

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

constexpr unsigned kThreads = 256;
constexpr uint64_t kMaxBlocks = 32768;  // grid-stride loops cover the rest

unsigned blocks_for(uint64_t work) {
  const uint64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<uint64_t>(b, 1, kMaxBlocks));
}

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail(std::string("launching the ") + what + " kernel failed: " + cudaGetErrorName(e) + ": " +
         cudaGetErrorString(e));
}

// ---- segment gather ---------------------------------------------------------------

template <typename W>
__global__ void gather_kernel(const GatherRect* rects, uint32_t n, const W* src, W* dst,
                              uint64_t dst_cols) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint32_t p = blockIdx.y; p < n; p += gridDim.y) {
    const GatherRect r = rects[p];
    const uint64_t total = r.rows * r.cols;
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += stride) {
      dst[gather_dst_word(r, i, dst_cols)] = src[gather_src_word(r, i)];
    }
  }
}

// ---- element op and cast -------------------------------------------------------------

template <int From, int To>
__global__ void transform_kernel(const conv::bits_t<From>* src, conv::bits_t<To>* dst, uint64_t n,
                                 int offset, unsigned long long* not_invertible) {
  unsigned long long bad = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const conv::bits_t<From> x = src[i];
    const conv::bits_t<To> y = conv::transform_element<From, To>(x, offset);
    dst[i] = y;
    if constexpr (From == To) {
      // count_not_invertible(): op, then its inverse, must give the same bits.
      if (not_invertible != nullptr && conv::transform_element<From, From>(y, -offset) != x) ++bad;
    }
  }
  if (bad) atomicAdd(not_invertible, bad);
}

int kind_of(DType t) {
  switch (t) {
    case DType::BF16:
      return conv::kBF16;
    case DType::F16:
      return conv::kF16;
    case DType::F32:
      return conv::kF32;
    case DType::F64:
      return conv::kF64;
    default:
      return -1;
  }
}

template <int From, int To>
void launch_transform(const void* d_src, void* d_dst, uint64_t n, int offset,
                      unsigned long long* counter, void* stream) {
  transform_kernel<From, To><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      static_cast<const conv::bits_t<From>*>(d_src), static_cast<conv::bits_t<To>*>(d_dst), n,
      offset, From == To ? counter : nullptr);
}

template <int From>
void launch_transform_from(int to, const void* d_src, void* d_dst, uint64_t n, int offset,
                           unsigned long long* counter, void* stream) {
  switch (to) {
    case conv::kBF16:
      launch_transform<From, conv::kBF16>(d_src, d_dst, n, offset, counter, stream);
      break;
    case conv::kF16:
      launch_transform<From, conv::kF16>(d_src, d_dst, n, offset, counter, stream);
      break;
    case conv::kF32:
      launch_transform<From, conv::kF32>(d_src, d_dst, n, offset, counter, stream);
      break;
    default:
      launch_transform<From, conv::kF64>(d_src, d_dst, n, offset, counter, stream);
      break;
  }
}

}  // namespace

// ---- runtime helpers ------------------------------------------------------------------

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    (void)cudaGetLastError();  // do not leave the error sticky for later calls
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

void set_device(int device) {
  MB_CUDA(cudaSetDevice(device));
}

int current_device() {
  int d = 0;
  MB_CUDA(cudaGetDevice(&d));
  return d;
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  MB_CUDA(cudaGetDeviceProperties(&p, device));
  return p.name;
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess)
    fail("cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorName(e) + ": " +
         cudaGetErrorString(e));
  return p;
}

void device_free(void* d_ptr) noexcept {
  if (d_ptr) (void)cudaFree(d_ptr);
}

void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess)
    fail("cudaHostAlloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorName(e) +
         ": " + cudaGetErrorString(e));
  return p;
}

void pinned_free(void* ptr) noexcept {
  if (ptr) (void)cudaFreeHost(ptr);
}

void* stream_create() {
  cudaStream_t s = nullptr;
  MB_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void stream_destroy(void* stream) noexcept {
  if (stream) (void)cudaStreamDestroy(as_stream(stream));
}

void stream_sync(void* stream) {
  MB_CUDA(cudaStreamSynchronize(as_stream(stream)));
}

void* event_create() {
  cudaEvent_t e = nullptr;
  MB_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void event_destroy(void* event) noexcept {
  if (event) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void event_record(void* event, void* stream) {
  MB_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event), as_stream(stream)));
}

void event_sync(void* event) {
  MB_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
}

void copy_to_device(void* d_dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  if (stream) {
    MB_CUDA(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)));
  } else {
    MB_CUDA(cudaMemcpy(d_dst, src, bytes, cudaMemcpyHostToDevice));
  }
}

void copy_to_host(void* dst, const void* d_src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  if (stream) {
    MB_CUDA(cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)));
  } else {
    MB_CUDA(cudaMemcpy(dst, d_src, bytes, cudaMemcpyDeviceToHost));
  }
}

void memset_device(void* d_dst, int value, size_t bytes, void* stream) {
  if (bytes == 0) return;
  MB_CUDA(cudaMemsetAsync(d_dst, value, bytes, as_stream(stream)));
}

void check_last_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

// ---- segment gather -----------------------------------------------------------------------

void segment_gather(const GatherRect* d_rects, uint32_t n, uint64_t max_rect_words,
                    const void* d_src, void* d_dst, uint64_t dst_cols, size_t word, void* stream) {
  if (n == 0 || max_rect_words == 0) return;
  const dim3 grid(std::min<unsigned>(blocks_for(max_rect_words), 4096u),
                  std::min<uint32_t>(n, 65535u));
  cudaStream_t st = as_stream(stream);
#define MB_GATHER(W)                                                                 \
  gather_kernel<<<grid, kThreads, 0, st>>>(d_rects, n, static_cast<const W*>(d_src), \
                                           static_cast<W*>(d_dst), dst_cols)
  switch (word) {
    case 16:
      MB_GATHER(uint4);
      break;
    case 8:
      MB_GATHER(unsigned long long);
      break;
    case 4:
      MB_GATHER(uint32_t);
      break;
    case 2:
      MB_GATHER(uint16_t);
      break;
    case 1:
      MB_GATHER(uint8_t);
      break;
    default:
      fail("internal: segment gather with a " + std::to_string(word) + "-byte word");
  }
#undef MB_GATHER
  check_launch("segment gather");
}

void segment_gather_sync(std::vector<GatherRect> rects, const void* d_src, void* d_dst,
                         uint64_t dst_cols, size_t elem) {
  if (rects.empty()) return;
  const size_t w = widen_rects(rects, dst_cols, elem);
  uint64_t max_words = 0;
  for (const auto& r : rects) max_words = std::max(max_words, r.rows * r.cols);
  DeviceBuffer table(rects.size() * sizeof(GatherRect));
  table.upload(rects.data(), table.size());
  segment_gather(static_cast<const GatherRect*>(table.get()), static_cast<uint32_t>(rects.size()),
                 max_words, d_src, d_dst, dst_cols, w, nullptr);
  MB_CUDA(cudaDeviceSynchronize());
}

// ---- element op and cast ---------------------------------------------------------------------

bool transform_supported(ElementOp op, DType from, DType to) {
  if (op == ElementOp::None && from == to) return true;
  if (kind_of(from) < 0 || kind_of(to) < 0) return false;
  // Narrowing F64 to a 16-bit type would round twice: the CPU path refuses it.
  return !(from == DType::F64 && dtype_size(to) == 2);
}

void transform(ElementOp op, DType from, const void* d_src, DType to, void* d_dst, uint64_t n,
               unsigned long long* d_not_invertible, void* stream) {
  if (!transform_supported(op, from, to)) {
    // Let the CPU path say why, in its own words.
    unsigned char zero[8] = {}, out[8] = {};
    transform_elements(op, from, zero, to, out, 1);
    fail("internal: no device kernel for " + std::string(op_name(op)) + " " +
         std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)));
  }
  if (n == 0) return;
  if (op == ElementOp::None && from == to) {
    if (d_src != d_dst)
      MB_CUDA(cudaMemcpyAsync(d_dst, d_src, n * dtype_size(from), cudaMemcpyDeviceToDevice,
                              as_stream(stream)));
    return;
  }
  const int offset = op == ElementOp::MinusOne ? -1 : op == ElementOp::PlusOne ? 1 : 0;
  unsigned long long* counter = (offset != 0 && from == to) ? d_not_invertible : nullptr;
  switch (kind_of(from)) {
    case conv::kBF16:
      launch_transform_from<conv::kBF16>(kind_of(to), d_src, d_dst, n, offset, counter, stream);
      break;
    case conv::kF16:
      launch_transform_from<conv::kF16>(kind_of(to), d_src, d_dst, n, offset, counter, stream);
      break;
    case conv::kF32:
      launch_transform_from<conv::kF32>(kind_of(to), d_src, d_dst, n, offset, counter, stream);
      break;
    default:
      launch_transform_from<conv::kF64>(kind_of(to), d_src, d_dst, n, offset, counter, stream);
      break;
  }
  check_launch("element op/cast");
}

}  // namespace mb::cuda
