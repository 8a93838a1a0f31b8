#include "engine/read_ahead.hpp"

#include <algorithm>
#include <atomic>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mb {

namespace {
// Job numbers are unique within the process, so that a source's requests
// from an earlier ReadAhead (an earlier batch of shards) are all "before".
std::atomic<uint64_t> next_job_number{1};
}  // namespace

ReadAhead::ReadAhead(RowSource& source, std::vector<const std::vector<Segment>*> jobs,
                     uint64_t ahead_bytes, bool follows_reads)
    : source_(source),
      jobs_(std::move(jobs)),
      asked_(jobs_.size(), 0),
      ahead_bytes_(ahead_bytes),
      follows_reads_(follows_reads),
      first_job_(next_job_number.fetch_add(jobs_.size() + 1)) {}

uint64_t ReadAhead::lead() const {
  if (!follows_reads_) return beyond_;
  return beyond_ + asked_[cur_] - std::min(asked_[cur_], consumed_);
}

// Segment by segment, so that a source that loads what is asked in the order
// asked (DirectReadQueue) loads it in the order it is read: the rest of the
// current job before anything of the next.
void ReadAhead::fill() {
  while (front_job_ < jobs_.size() && lead() < ahead_bytes_) {
    const std::vector<Segment>& segs = *jobs_[front_job_];
    // Without follows_reads a job is asked for up to the limit: the reads
    // of a larger one ask for their own rows ahead as they go
    // (InputFile::pread_rows, fills).
    const uint64_t cap =
        follows_reads_ ? ahead_bytes_ : ahead_bytes_ - std::min(ahead_bytes_, asked_[front_job_]);
    if (front_seg_ >= segs.size() || cap == 0) {
      ++front_job_, front_seg_ = 0;
      continue;
    }
    const Segment& s = segs[front_seg_++];
    source_.prefetch_job(first_job_ + front_job_);
    const uint64_t n = source_.prefetch(s.src, s.src_row, s.rows, s.src_col, s.cols, cap);
    asked_[front_job_] += n;
    if (front_job_ > cur_) beyond_ += n;
  }
}

void ReadAhead::before(size_t i) {
  MB_CHECK(i < jobs_.size(), "internal: read-ahead for job {} of {}", i, jobs_.size());
  MB_CHECK(!started_ || i >= cur_, "internal: read-ahead for job {} after job {}", i, cur_);
  source_.jobs_done_before(first_job_ + i);
  // Jobs up to i are no longer ahead.
  for (size_t j = started_ ? cur_ + 1 : 0; j <= i; ++j) beyond_ -= std::min(beyond_, asked_[j]);
  if (front_job_ < i) {  // not asked yet (the first job, or jobs skipped): from here
    front_job_ = i, front_seg_ = 0;
    beyond_ = 0;
  }
  if (!started_ || i != cur_) consumed_ = 0;
  started_ = true;
  cur_ = i;
  fill();
}

void ReadAhead::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                     void* dst, uint64_t dst_stride) {
  const uint64_t before_read = source_.bytes_read();
  source_.read(id, row0, rows, col0, cols, dst, dst_stride);
  if (!follows_reads_ || !started_) return;
  consumed_ += source_.bytes_read() - before_read;
  fill();
}

void log_source_reads(const RowSource& source, std::string_view conversion) {
  log::debug("{}: read {} bytes from the source, {} loaded ahead directly", conversion,
             source.bytes_read(), source.bytes_loaded_ahead());
}

}  // namespace mb
