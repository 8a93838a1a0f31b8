// Asks a source for the reads of the next tensors while the current one is
// converted (RowSource::prefetch), so that bytes read through the page cache
// are on their way from storage before they are needed: a conversion reads
// one tensor at a time, and a source handle that reads nothing ahead by
// itself (InputFile::file()) would otherwise wait for each read in turn.
// A source that reads directly loads the ranges itself, ahead, into memory
// it frees job by job (DirectReadQueue).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/direct_io.hpp"
#include "engine/copy_engine.hpp"

namespace mb {

class ReadAhead : public RowSource {
 public:
  // `jobs`: the segment lists of the tensors in the order they will be
  // converted. They must outlive this object. With `follows_reads`, the
  // conversion reads through this object (read() below), which tops up
  // what is asked ahead as it reads, so that a job larger than the limit is
  // asked for the limit's worth ahead of its reads; without, of such a job
  // only the limit's worth is asked for.
  ReadAhead(RowSource& source, std::vector<const std::vector<Segment>*> jobs,
            uint64_t ahead_bytes = kReadAheadBytes, bool follows_reads = false);
  // Job `i` is about to run: asks for it, if not yet asked, and for what
  // follows it (segment by segment, in order) until what is asked beyond what
  // was read reaches ahead_bytes. A job's bytes count as read when it starts,
  // or, with follows_reads, as they are read.
  void before(size_t i);

  // RowSource: the source's reads; with follows_reads, what they read
  // (the source's bytes_read()) counts as read of the current job.
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return source_.bytes_read(); }
  uint64_t bytes_loaded_ahead() const override { return source_.bytes_loaded_ahead(); }

 private:
  RowSource& source_;
  std::vector<const std::vector<Segment>*> jobs_;
  std::vector<uint64_t> asked_;  // bytes asked of each job
  uint64_t ahead_bytes_;
  bool follows_reads_;
  uint64_t first_job_;  // the number of job 0 for RowSource::prefetch_job (unique per process)
  bool started_ = false;
  size_t cur_ = 0;         // the job being converted
  uint64_t consumed_ = 0;  // bytes of job cur_ read (read())
  // The next segment to ask for: everything before it has been asked.
  size_t front_job_ = 0, front_seg_ = 0;
  uint64_t beyond_ = 0;  // bytes asked of the jobs after cur_
  uint64_t lead() const;
  void fill();
};

// Logs (debug) what a conversion read from `source` and how much of it the
// source loaded ahead directly: `megabridge ... --log-level debug` shows
// whether the read-ahead queue served the reads (tests/integration/io_modes.sh).
void log_source_reads(const RowSource& source, std::string_view conversion);

}  // namespace mb
