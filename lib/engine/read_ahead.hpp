// Asks a source for the reads of the next tensors while the current one is
// converted (RowSource::prefetch), so that bytes read through the page cache
// are on their way from storage before they are needed: a conversion reads
// one tensor at a time, and a source handle that reads nothing ahead by
// itself (InputFile::file()) would otherwise wait for each read in turn.
// A source that reads directly loads the ranges itself, ahead, into memory
// it frees job by job (DirectReadQueue).
#pragma once

#include <cstdint>
#include <vector>

#include "core/direct_io.hpp"
#include "engine/copy_engine.hpp"

namespace mb {

class ReadAhead {
 public:
  // `jobs`: the segment lists of the tensors in the order they will be
  // converted. They must outlive this object.
  ReadAhead(RowSource& source, std::vector<const std::vector<Segment>*> jobs,
            uint64_t ahead_bytes = kReadAheadBytes);
  // Job `i` is about to run: asks for it, if not yet asked, and for the jobs
  // after it until what is asked beyond job i reaches ahead_bytes.
  void before(size_t i);

 private:
  RowSource& source_;
  std::vector<const std::vector<Segment>*> jobs_;
  std::vector<uint64_t> asked_;  // bytes asked for each job asked so far
  uint64_t ahead_bytes_;
  uint64_t first_job_;    // the number of job 0 for RowSource::prefetch_job (unique per process)
  size_t next_ = 0;       // the first job not asked for
  uint64_t pending_ = 0;  // bytes asked for jobs after the current one
  uint64_t ask(size_t j);
};

}  // namespace mb
