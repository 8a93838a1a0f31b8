#include "engine/read_ahead.hpp"

#include "core/error.hpp"

namespace mb {

ReadAhead::ReadAhead(RowSource& source, std::vector<const std::vector<Segment>*> jobs,
                     uint64_t ahead_bytes)
    : source_(source), jobs_(std::move(jobs)), asked_(jobs_.size(), 0), ahead_bytes_(ahead_bytes) {}

uint64_t ReadAhead::ask(size_t j) {
  // At most ahead_bytes_ of one job: the reads of a larger one ask for
  // their own rows ahead as they go (InputFile::pread_rows, fills).
  uint64_t n = 0;
  for (const Segment& s : *jobs_[j]) {
    if (n >= ahead_bytes_) break;
    n += source_.prefetch(s.src, s.src_row, s.rows, s.src_col, s.cols, ahead_bytes_ - n);
  }
  asked_[j] = n;
  return n;
}

void ReadAhead::before(size_t i) {
  MB_CHECK(i < jobs_.size(), "internal: read-ahead for job {} of {}", i, jobs_.size());
  if (i >= next_) {  // not asked yet (the first job, or jobs skipped): ask now
    pending_ = 0;
    next_ = i + 1;
    ask(i);
  } else {
    pending_ -= std::min(pending_, asked_[i]);  // job i is no longer ahead
  }
  while (next_ < jobs_.size() && pending_ < ahead_bytes_) pending_ += ask(next_++);
}

}  // namespace mb
