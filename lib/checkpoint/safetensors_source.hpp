// Reads rectangles of HF tensors straight from the safetensors files with
// pread: whole-row ranges in one call, column windows row by row. With
// direct I/O (direct_io.hpp) the reads go through one ReadWindow, which
// rounds each load to the alignment and loads ahead for small reads going
// forward; column windows narrower than kDirectPieceBytes go through the
// page cache in whole row spans instead (InputFile::pread_rows), so that
// ranks of one node do not each read the others' columns from storage.
// Whole-row reads asked for ahead (prefetch) are loaded ahead on a helper
// thread (DirectReadQueue) and copied out of its slots.
// Without direct I/O nothing outside the requested bytes is asked for.
#pragma once

#include <map>
#include <memory>

#include "core/direct_io.hpp"
#include "core/direct_read_queue.hpp"
#include "engine/copy_engine.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"

namespace mb {

class SafetensorsSource : public RowSource {
 public:
  explicit SafetensorsSource(const HfCatalog& catalog, IoConfig io = {IoMode::Buffered, 0})
      : c_(catalog),
        io_(io),
        queue_(io.chunk_bytes, io.mode == IoMode::Buffered ? 0 : kDirectReadSlots) {}

  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }
  // Under direct I/O: whole rows are loaded ahead (queue_), narrow column
  // windows asked of the page cache (InputFile::will_read_rows).
  uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                    uint64_t max_bytes) override;
  void prefetch_job(uint64_t job) override { queue_.set_job(job); }
  void jobs_done_before(uint64_t job) override { queue_.release_before(job); }
  uint64_t bytes_loaded_ahead() const override { return queue_.bytes_loaded(); }

 private:
  InputFile& file(uint32_t index);

  const HfCatalog& c_;
  IoConfig io_;
  ReadWindow window_;  // allocated when the first file opens for direct reads
  std::map<uint32_t, InputFile> files_;
  DirectReadQueue queue_;  // after files_: its helper stops before they close
  uint64_t bytes_read_ = 0;
};

}  // namespace mb
