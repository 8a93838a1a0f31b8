// The device copy engine (see cuda_copy_engine.hpp and docs/cuda.md). Host
// code only: the CUDA work goes through the plain API of cuda/kernels.hpp.
#include "engine/cuda_copy_engine.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "engine/block_packing.hpp"
#include "transforms/cast_overflow.hpp"
#include "transforms/cuda/kernels.hpp"
#include "transforms/gather_rects.hpp"

namespace mb {

namespace cuda {
// Declared in cuda/kernels.hpp; here because nvcc cannot compile fmt.
void raise_error(const std::string& msg) {
  throw Error(msg);
}
}  // namespace cuda

bool cuda_device_available(std::string* why) {
  std::string reason;
  if (cuda::device_count(&reason) > 0) return true;
  if (why) *why = reason.empty() ? "no CUDA device" : reason;
  return false;
}

namespace {

uint64_t align_up(uint64_t v) {
  return (v + kPackAlign - 1) / kPackAlign * kPackAlign;
}

int local_rank_from_env() {
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"}) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') continue;
    char* end = nullptr;
    const long r = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && r >= 0) return static_cast<int>(r);
  }
  return 0;
}

// One of the two alternating pipelines: a stream, its buffers, and the block
// it has in flight.
struct Slot {
  void* stream = nullptr;
  void* event = nullptr;
  // Page-locked host memory: the packed source rectangles, then the output.
  unsigned char* host = nullptr;
  uint64_t host_cap = 0;
  // Device memory: packed input | gathered block (when converting) | output.
  unsigned char* dev = nullptr;
  uint64_t dev_cap = 0;
  GatherRect* h_rects = nullptr;
  GatherRect* d_rects = nullptr;
  uint64_t rects_cap = 0;
  unsigned long long* h_count = nullptr;
  unsigned long long* d_count = nullptr;
  // The block in flight.
  bool busy = false;
  uint64_t src_infinite = 0;  // ±Inf among its source elements (overflow check)
  uint64_t b0 = 0, b1 = 0;
  unsigned char* h_out = nullptr;
};

}  // namespace

struct CudaCopyEngine::Impl {
  int device = 0;
  uint64_t buffer_bytes = 0;
  uint64_t peak_device = 0;
  std::array<Slot, 2> slots;
  std::vector<GatherRect> rects;

  ~Impl() {
    for (Slot& s : slots) {
      if (s.stream) {
        try {
          cuda::stream_sync(s.stream);
        } catch (const std::exception&) {  // freeing anyway
        }
      }
      cuda::pinned_free(s.host);
      cuda::device_free(s.dev);
      cuda::pinned_free(s.h_rects);
      cuda::device_free(s.d_rects);
      cuda::pinned_free(s.h_count);
      cuda::device_free(s.d_count);
      cuda::event_destroy(s.event);
      cuda::stream_destroy(s.stream);
    }
  }

  // Waits for anything an interrupted run left in flight.
  void drain() {
    for (Slot& s : slots) {
      if (s.busy) cuda::stream_sync(s.stream);
      s.busy = false;
    }
  }

  void ensure(Slot& s, uint64_t host_need, uint64_t dev_need, uint64_t n_rects) {
    if (s.host_cap < host_need) {
      cuda::pinned_free(s.host);
      s.host = nullptr;
      s.host_cap = 0;
      const uint64_t cap = std::max(host_need, buffer_bytes / 2);
      s.host = static_cast<unsigned char*>(cuda::pinned_alloc(cap));
      s.host_cap = cap;
    }
    if (s.dev_cap < dev_need) {
      cuda::device_free(s.dev);
      s.dev = nullptr;
      s.dev_cap = 0;
      const uint64_t cap = std::max(dev_need, buffer_bytes / 2);
      s.dev = static_cast<unsigned char*>(cuda::device_alloc(cap));
      s.dev_cap = cap;
    }
    if (s.rects_cap < n_rects) {
      cuda::pinned_free(s.h_rects);
      cuda::device_free(s.d_rects);
      s.h_rects = nullptr;
      s.d_rects = nullptr;
      s.rects_cap = 0;
      const uint64_t cap = std::max<uint64_t>(n_rects, 256);
      s.h_rects = static_cast<GatherRect*>(cuda::pinned_alloc(cap * sizeof(GatherRect)));
      s.d_rects = static_cast<GatherRect*>(cuda::device_alloc(cap * sizeof(GatherRect)));
      s.rects_cap = cap;
    }
    peak_device = std::max(peak_device, slots[0].dev_cap + slots[1].dev_cap);
  }
};

CudaCopyEngine::CudaCopyEngine(uint64_t buffer_bytes, int device)
    : CopyEngine(buffer_bytes), impl_(std::make_unique<Impl>()) {
  std::string why;
  const int n = cuda::device_count(&why);
  MB_CHECK(n > 0, "no usable CUDA device ({})", why);
  const int d = device >= 0 ? device : local_rank_from_env() % n;
  MB_CHECK(d < n, "CUDA device {} requested, but only {} present", d, n);
  impl_->device = d;
  impl_->buffer_bytes = buffer_bytes;
  cuda::set_device(d);
  for (Slot& s : impl_->slots) {
    s.stream = cuda::stream_create();
    s.event = cuda::event_create();
    s.h_count = static_cast<unsigned long long*>(cuda::pinned_alloc(sizeof(unsigned long long)));
    s.d_count = static_cast<unsigned long long*>(cuda::device_alloc(sizeof(unsigned long long)));
  }
  log::debug("copy engine: CUDA device {} ({})", d, cuda::device_name(d));
}

CudaCopyEngine::~CudaCopyEngine() = default;

std::string CudaCopyEngine::device() const {
  return "cuda:" + std::to_string(impl_->device);
}

uint64_t CudaCopyEngine::peak_device_bytes() const {
  return impl_->peak_device;
}

CopyResult CudaCopyEngine::run(const CopyJob& job, RowSource& src, RowSink& sink) {
  const auto& segs = *job.segments;
  check_segments_cover(job);

  Impl& m = *impl_;
  cuda::set_device(m.device);
  m.drain();

  const uint64_t ss = dtype_size(job.src_dtype), ds = dtype_size(job.dst_dtype);
  const bool convert = job.op != ElementOp::None || job.src_dtype != job.dst_dtype;
  if (convert && job.rows > 0 && !cuda::transform_supported(job.op, job.src_dtype, job.dst_dtype)) {
    // The CPU path refuses this combination: give its error, before any I/O.
    unsigned char zero[8] = {}, out[8] = {};
    transform_elements(job.op, job.src_dtype, zero, job.dst_dtype, out, 1);
    throw Error("internal: {} -> {} ({}) has no device kernel", dtype_name(job.src_dtype),
                dtype_name(job.dst_dtype), op_name(job.op));
  }
  const bool count = job.op != ElementOp::None && job.src_dtype == job.dst_dtype;

  // Blocks of rows: both slots' host staging (packed input + output) within
  // the buffer, like the CPU engine (>= it only when one row alone is larger).
  const uint64_t src_row = job.cols * ss, dst_row = job.cols * ds;
  const uint64_t per_row = 2 * (src_row + dst_row);
  const uint64_t block_rows = std::max<uint64_t>(1, buffer_bytes_ / std::max<uint64_t>(per_row, 1));
  const uint64_t block = std::min(block_rows, std::max<uint64_t>(job.rows, 1));
  const uint64_t in_cap = packed_capacity(block, src_row, segs.size());
  const uint64_t out_bytes = block * dst_row;
  const uint64_t host_need = in_cap + out_bytes;
  const uint64_t gather_off = in_cap;
  const uint64_t out_off = convert ? align_up(gather_off + block * src_row) : gather_off;
  const uint64_t dev_need = out_off + out_bytes;
  const uint64_t n_blocks = job.rows == 0 ? 0 : (job.rows + block - 1) / block;
  for (uint64_t i = 0; i < std::min<uint64_t>(n_blocks, 2); ++i)
    m.ensure(m.slots[i], host_need, dev_need, segs.size());
  peak_ = std::max(peak_, std::min<uint64_t>(n_blocks, 2) * (block * src_row + out_bytes));

  Hasher hash;
  CopyResult result;
  // Overflow to Inf, found on the host: a cast maps ±Inf to ±Inf and a
  // finite value to a finite one or ±Inf, so the new infinities of a block
  // are those of its output less those of its input.
  const bool check_overflow = !allow_overflow_ && cast_can_overflow(job.src_dtype, job.dst_dtype);
  uint64_t overflow = 0;
  auto finish = [&](Slot& s) {
    cuda::event_sync(s.event);
    s.busy = false;
    if (count) result.not_invertible += *s.h_count;
    const uint64_t n = (s.b1 - s.b0) * job.cols;
    if (check_overflow) {
      const uint64_t out_inf = count_infinite(job.dst_dtype, s.h_out, n);
      if (out_inf > s.src_infinite) overflow += out_inf - s.src_infinite;
    }
    if (overflow > 0) return;  // counted only: nothing more is written
    if (job.hash) hash.update(s.h_out, n * ds);
    report_block(n * ds);
    sink.write(s.b0, s.b1 - s.b0, s.h_out);
  };

  Slot* in_flight = nullptr;
  uint64_t k = 0;
  for (uint64_t b0 = 0; b0 < job.rows; b0 += block, ++k) {
    const uint64_t b1 = std::min(job.rows, b0 + block);
    Slot& s = m.slots[k % 2];  // free: its previous block was finished below
    // Read every source rectangle of the block, packed one after the other
    // (block_packing.hpp, tested on the CPU with the same index math).
    const uint64_t off = pack_block(segs, b0, b1, ss, src, s.host, m.rects);
    s.src_infinite = 0;
    if (check_overflow)  // packed rectangles are contiguous: stride == cols
      for (const auto& r : m.rects)
        s.src_infinite += count_infinite(job.src_dtype, s.host + r.src_offset * ss, r.rows * r.cols);
    const uint64_t n = (b1 - b0) * job.cols;
    uint64_t dst_cols = job.cols;
    const size_t word = widen_rects(m.rects, dst_cols, ss);
    uint64_t max_words = 0;
    for (const auto& r : m.rects) max_words = std::max(max_words, r.rows * r.cols);
    const auto n_rects = static_cast<uint32_t>(m.rects.size());
    if (n_rects) std::memcpy(s.h_rects, m.rects.data(), n_rects * sizeof(GatherRect));

    // Device: upload, place, convert, download.
    unsigned char* d_in = s.dev;
    unsigned char* d_gathered = s.dev + gather_off;
    unsigned char* d_out = s.dev + out_off;
    cuda::copy_to_device(d_in, s.host, off, s.stream);
    cuda::copy_to_device(s.d_rects, s.h_rects, n_rects * sizeof(GatherRect), s.stream);
    cuda::segment_gather(s.d_rects, n_rects, max_words, d_in, d_gathered, dst_cols, word, s.stream);
    if (convert) {
      if (count) cuda::memset_device(s.d_count, 0, sizeof(unsigned long long), s.stream);
      cuda::transform(job.op, job.src_dtype, d_gathered, job.dst_dtype, d_out, n,
                      count ? s.d_count : nullptr, s.stream);
      if (count) cuda::copy_to_host(s.h_count, s.d_count, sizeof(unsigned long long), s.stream);
    }
    s.h_out = s.host + in_cap;
    cuda::copy_to_host(s.h_out, d_out, n * ds, s.stream);
    cuda::event_record(s.event, s.stream);
    s.busy = true;
    s.b0 = b0;
    s.b1 = b1;
    // While the device works on this block, hand the previous one to the sink.
    if (in_flight) finish(*in_flight);
    in_flight = &s;
  }
  if (in_flight) finish(*in_flight);
  if (overflow > 0)
    throw Error("{}",
                cast_overflow_message({}, job.src_dtype, job.dst_dtype, overflow, 0, 0, false));
  if (job.hash) result.xxh3 = hash.digest();
  return result;
}

}  // namespace mb
