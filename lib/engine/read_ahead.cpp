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
                     uint64_t ahead_bytes)
    : source_(source),
      jobs_(std::move(jobs)),
      asked_(jobs_.size(), 0),
      ahead_bytes_(ahead_bytes),
      first_job_(next_job_number.fetch_add(jobs_.size() + 1)) {}

uint64_t ReadAhead::lead() const {
  return beyond_ + asked_[cur_] - std::min(asked_[cur_], consumed_);
}

// In read order, so that a source that loads what is asked in the order
// asked (DirectReadQueue) loads it in the order it is read: the rest of the
// current job before anything of the next. A segment is asked for at most
// the limit's worth of rows at a time: asked whole, a source would load the
// limit's worth of it and leave the rest of a large one (an embedding, 1 GB
// in one segment) to be read on the conversion's thread, one window at a
// time.
void ReadAhead::fill() {
  while (front_job_ < jobs_.size() && lead() < ahead_bytes_) {
    const std::vector<Segment>& segs = *jobs_[front_job_];
    if (front_seg_ >= segs.size()) {
      ++front_job_, front_seg_ = 0, front_row_ = 0;
      continue;
    }
    const Segment& s = segs[front_seg_];
    const uint64_t row_bytes = s.cols * source_.element_bytes(s.src);
    const uint64_t left = s.rows - std::min(s.rows, front_row_);
    const uint64_t rows =
        row_bytes == 0 ? left : std::min(left, std::max<uint64_t>(1, ahead_bytes_ / row_bytes));
    uint64_t n = 0;
    if (rows > 0) {
      source_.prefetch_job(first_job_ + front_job_);
      n = source_.prefetch(s.src, s.src_row + front_row_, rows, s.src_col, s.cols, ahead_bytes_);
    }
    front_row_ += rows;
    if (front_row_ >= s.rows) ++front_seg_, front_row_ = 0;
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
    front_job_ = i, front_seg_ = 0, front_row_ = 0;
    beyond_ = 0;
  }
  if (!started_ || i != cur_) consumed_ = 0;
  started_ = true;
  cur_ = i;
  fill();
}

// A large read (the copy engine reads blocks of up to half its buffer, a
// hundred MiB) is passed on in pieces of half the limit, topping up after
// each: whole, it would take what was asked ahead (the limit's worth) and
// read the rest on this thread, one window at a time, with nothing loading
// ahead of it.
void ReadAhead::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                     void* dst, uint64_t dst_stride) {
  const uint64_t row_bytes = cols * source_.element_bytes(id);
  const uint64_t piece = started_ && row_bytes > 0
                             ? std::max<uint64_t>(1, ahead_bytes_ / 2 / row_bytes)
                             : std::max<uint64_t>(rows, 1);
  auto* d = static_cast<unsigned char*>(dst);
  for (uint64_t r = 0; r < rows; r += piece) {
    const uint64_t n = std::min(piece, rows - r);
    const uint64_t before_read = source_.bytes_read();
    source_.read(id, row0 + r, n, col0, cols, d + r * dst_stride, dst_stride);
    if (!started_) continue;
    consumed_ += source_.bytes_read() - before_read;
    fill();
  }
}

void log_source_reads(const RowSource& source, std::string_view conversion) {
  log::debug("{}: read {} bytes from the source, {} loaded ahead directly", conversion,
             source.bytes_read(), source.bytes_loaded_ahead());
}

}  // namespace mb
