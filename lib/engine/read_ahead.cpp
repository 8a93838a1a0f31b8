#include "engine/read_ahead.hpp"

#include <atomic>

#include "core/error.hpp"

namespace mb {

namespace {
// Job numbers are unique within the process, so that a source's requests
// from an earlier ReadAhead (an earlier batch of shards) are all "before".
std::atomic<uint64_t> next_job_number{1};
}  // namespace

ReadAhead::ReadAhead(RowSource& source, std::vector<const std::vector<Segment>*> jobs,
                     uint64_t ahead_bytes)
    : source_(source),
      jobs_(std::move(jobs)),
      asked_(jobs_.size(), 0),
      ahead_bytes_(ahead_bytes),
      first_job_(next_job_number.fetch_add(jobs_.size() + 1)) {}

uint64_t ReadAhead::ask(size_t j) {
  // At most ahead_bytes_ of one job: the reads of a larger one ask for
  // their own rows ahead as they go (InputFile::pread_rows, fills).
  uint64_t n = 0;
  source_.prefetch_job(first_job_ + j);
  for (const Segment& s : *jobs_[j]) {
    if (n >= ahead_bytes_) break;
    n += source_.prefetch(s.src, s.src_row, s.rows, s.src_col, s.cols, ahead_bytes_ - n);
  }
  asked_[j] = n;
  return n;
}

void ReadAhead::before(size_t i) {
  MB_CHECK(i < jobs_.size(), "internal: read-ahead for job {} of {}", i, jobs_.size());
  source_.jobs_done_before(first_job_ + i);
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
