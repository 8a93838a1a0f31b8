// Executes a segment list: builds one destination tensor block by block from
// rectangles of source tensors, applies the element op and dtype cast, and
// hands each block to a sink. Memory stays within the configured buffer, so a
// tensor of any size streams.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "transforms/elementwise.hpp"
#include "transforms/segment.hpp"

namespace mb {

class RowSource {
 public:
  virtual ~RowSource() = default;
  // Reads rows [row0, row0+rows) x cols [col0, col0+cols) of source tensor `id`
  // (2-D view) into dst, whose rows are dst_stride bytes apart.
  virtual void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                    void* dst, uint64_t dst_stride) = 0;
  virtual uint64_t bytes_read() const = 0;
  // The same rectangle will be read soon: a source that reads it through the
  // page cache may ask the kernel for its first rows now (File::will_need),
  // about `max_bytes` at most. Returns the bytes asked for; nothing is read
  // into memory, and a source may ignore it (the default).
  virtual uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                            uint64_t max_bytes) {
    (void)id, (void)row0, (void)rows, (void)col0, (void)cols, (void)max_bytes;
    return 0;
  }
  // ReadAhead's job boundaries, for a source that reads ahead into memory
  // of its own: what prefetch() asks for from now on is for job `job`
  // (numbers only increase); jobs_done_before(job): every job numbered below
  // `job` has done its reads, so what is held for them can go.
  virtual void prefetch_job(uint64_t job) { (void)job; }
  virtual void jobs_done_before(uint64_t job) { (void)job; }
  // What such a source loaded ahead from storage so far (DirectReadQueue):
  // logged at debug level, so that a test can tell the queue served reads
  // and not only the fallback.
  virtual uint64_t bytes_loaded_ahead() const { return 0; }
};

class RowSink {
 public:
  virtual ~RowSink() = default;
  // Consumes rows [row0, row0+rows) of the destination, in increasing order.
  virtual void write(uint64_t row0, uint64_t rows, const void* data) = 0;
};

struct CopyJob {
  std::string what;  // the destination tensor's name, for errors
  const std::vector<Segment>* segments = nullptr;
  uint64_t rows = 0, cols = 0;  // destination 2-D view
  DType src_dtype = DType::BF16;
  DType dst_dtype = DType::BF16;
  ElementOp op = ElementOp::None;
  // Whether to hash the destination (CopyResult::xxh3). Off unless asked:
  // only an HDF5 dataset written whole keeps the digest (its xxh3 attribute);
  // an export, a torch_dist archive (hashed by its writer) and a verify
  // threw it away, and XXH3 of every output byte was a fifth of a 1-rank
  // export's CPU samples (docs/performance.md, thirteenth round).
  bool hash = false;
};

// Every destination element must come from exactly one segment; the plan
// guarantees it, and this cheap area check (run by every engine before it
// reads anything) keeps a bug from ever writing uninitialised bytes.
void check_segments_cover(const CopyJob& job);

struct CopyResult {
  uint64_t xxh3 = 0;            // of the destination bytes in row order (0 if not asked)
  uint64_t not_invertible = 0;  // elements whose op would not round-trip (see elementwise.hpp)
};

// The CPU engine. A device engine (cuda_copy_engine.hpp) derives from it and
// produces the same bytes; make_copy_engine() picks one.
class CopyEngine {
 public:
  // `buffer_bytes` bounds the staging memory (source block + converted block).
  explicit CopyEngine(uint64_t buffer_bytes);
  virtual ~CopyEngine() = default;

  virtual CopyResult run(const CopyJob& job, RowSource& src, RowSink& sink);
  virtual std::string device() const { return "cpu"; }

  uint64_t buffer_bytes() const { return buffer_bytes_; }
  // A cast that turns finite values into Inf (bf16 99840 -> fp16) fails the
  // tensor, naming the count (nothing of it reaches the sink after the first
  // overflowing block), unless allowed (--allow-overflow; verify allows it,
  // since it recomputes what a conversion wrote).
  void allow_overflow(bool allow) { allow_overflow_ = allow; }
  // Called after every block handed to a sink, with the bytes it held.
  void on_block(std::function<void(uint64_t)> f) { on_block_ = std::move(f); }
  // The largest staging footprint used so far (>= buffer only if one row alone is larger).
  uint64_t peak_staging_bytes() const { return peak_; }

 protected:
  void report_block(uint64_t bytes) {
    if (on_block_) on_block_(bytes);
  }

  uint64_t buffer_bytes_;
  uint64_t peak_ = 0;
  bool allow_overflow_ = false;
  std::vector<unsigned char> staging_;
  std::function<void(uint64_t)> on_block_;
};

// "cpu", "cuda", or "auto" (cuda when built with CUDA and a device is present).
// Throws for "cuda" when it is not available, naming why.
std::unique_ptr<CopyEngine> make_copy_engine(const std::string& device, uint64_t buffer_bytes);

}  // namespace mb
