#include "core/direct_read_queue.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace mb {

namespace {
uint64_t round_down(uint64_t v, uint64_t a) {
  return v / a * a;
}
uint64_t round_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}
}  // namespace

DirectReadQueue::DirectReadQueue(uint64_t slot_bytes, int slots)
    : slot_bytes_(round_down(slot_bytes, 4096)), slot_count_(slots) {}

DirectReadQueue::~DirectReadQueue() {
  if (helper_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    helper_.join();
  }
  for (auto& [id, fd] : fds_) ::close(fd);
}

bool DirectReadQueue::start_helper() {
  if (started_) return !no_thread_;
  started_ = true;
  if (slot_count_ < 2 || slot_bytes_ == 0) {
    no_thread_ = true;
    return false;
  }
  try {
    for (int i = 0; i < slot_count_; ++i) slots_.emplace_back(slot_bytes_);
    slot_free_.assign(static_cast<size_t>(slot_count_), true);
    helper_ = std::thread([this] { run(); });
  } catch (const std::exception&) {
    // No memory or no thread to be had: the reads are done by the caller.
    slots_.clear();
    no_thread_ = true;
  }
  return !no_thread_;
}

uint64_t DirectReadQueue::want(const InputFile& f, uint64_t begin, uint64_t end) {
  if (begin >= end || !f.direct() || !start_helper()) return 0;
  const uint64_t align = f.align_;
  if (slot_bytes_ < 2 * align) return 0;
  int fd;
  {
    auto it = fds_.find(f.id());
    if (it == fds_.end()) {
      // Our own descriptor: the file's may be closed (direct I/O refused)
      // while the helper reads.
      const int d = ::fcntl(f.direct_fd_, F_DUPFD_CLOEXEC, 0);
      if (d < 0) return 0;
      it = fds_.emplace(f.id(), d).first;
    }
    fd = it->second;
  }
  const uint64_t asked = end - begin;
  std::lock_guard<std::mutex> lock(m_);
  uint64_t pos = round_down(begin, align);
  const uint64_t stop = round_up(end, align);
  if (!q_.empty()) {
    Request& last = q_.back();
    if (last.file == f.id() && pos >= last.start && pos <= last.start + last.len) {
      // Continues the last request, or shares an alignment unit with it:
      // extend it while the helper has not begun it and it fits a slot;
      // what it holds of [begin, end) is taken from it.
      if (last.state == State::Queued) {
        const uint64_t to = std::min(stop, last.start + slot_bytes_);
        if (to > last.start + last.len) last.len = to - last.start;
      }
      const uint64_t in_last = std::min(end, last.start + last.len);
      if (in_last > begin) {
        last.wanted += in_last - begin;
        last.job = job_;
        begin = in_last;
      }
      pos = last.start + last.len;  // a shared unit is not read twice
    }
  }
  while (pos < stop) {
    const uint64_t len = std::min(slot_bytes_, stop - pos);
    const uint64_t b = std::max(begin, pos), e = std::min(end, pos + len);
    Request r{next_seq_++, f.id(), fd, pos, len};
    r.wanted = e > b ? e - b : 0;
    r.job = job_;
    q_.push_back(r);
    pos += len;
  }
  cv_.notify_all();
  return asked;
}

std::list<DirectReadQueue::Request>::iterator DirectReadQueue::drop(
    std::list<Request>::iterator it) {
  if (it->state != State::Loading && it->slot >= 0)
    slot_free_[static_cast<size_t>(it->slot)] = true;
  return q_.erase(it);  // a loading one's slot is freed by the helper when its read ends
}

void DirectReadQueue::release_before(uint64_t job) {
  std::lock_guard<std::mutex> lock(m_);
  for (auto it = q_.begin(); it != q_.end();) it = it->job < job ? drop(it) : std::next(it);
  cv_.notify_all();
}

uint64_t DirectReadQueue::take(const InputFile& f, void* dst, uint64_t n, uint64_t offset) {
  // Nothing was ever asked for (a buffered source, a verify pass): no lock
  // on this per-read path. started_ is set by want(), on this thread.
  if (!started_ || no_thread_) return 0;
  auto* d = static_cast<unsigned char*>(dst);
  uint64_t done = 0;
  std::unique_lock<std::mutex> lock(m_);
  while (done < n && !q_.empty()) {
    const uint64_t pos = offset + done;
    auto it = std::find_if(q_.begin(), q_.end(), [&](const Request& r) {
      return r.file == f.id() && pos >= r.start && pos < r.start + r.len;
    });
    if (it == q_.end()) break;
    if (it->state == State::Queued) {
      // Not begun: the caller reads it now rather than wait for the helper
      // to reach it behind the requests before it.
      drop(it);
      break;
    }
    cv_.wait(lock, [&] { return it->state != State::Loading; });
    if (it->state == State::Failed || pos >= it->start + it->got) {
      drop(it);  // the caller reads it, and reports what went wrong
      break;
    }
    const uint64_t k = std::min(n - done, it->start + it->got - pos);
    const unsigned char* src = slots_[static_cast<size_t>(it->slot)].data() + (pos - it->start);
    // Only this thread erases requests, so the slot stays ours while copying.
    lock.unlock();
    std::memcpy(d + done, src, k);
    lock.lock();
    done += k;
    it->taken += k;
    if (it->taken >= it->wanted) drop(it);  // everything asked of it has been read
  }
  cv_.notify_all();
  return done;
}

void DirectReadQueue::run() {
  std::unique_lock<std::mutex> lock(m_);
  for (;;) {
    auto next = q_.end();
    int slot = -1;
    cv_.wait(lock, [&] {
      if (stop_) return true;
      next = std::find_if(q_.begin(), q_.end(),
                          [](const Request& r) { return r.state == State::Queued; });
      if (next == q_.end()) return false;
      const auto free = std::find(slot_free_.begin(), slot_free_.end(), true);
      if (free == slot_free_.end()) return false;
      slot = static_cast<int>(free - slot_free_.begin());
      return true;
    });
    if (stop_) return;
    slot_free_[static_cast<size_t>(slot)] = false;
    next->state = State::Loading;
    next->slot = slot;
    const uint64_t seq = next->seq, start = next->start, len = next->len;
    const int fd = next->fd;
    unsigned char* p = slots_[static_cast<size_t>(slot)].data();
    lock.unlock();

    uint64_t got = 0;
    bool failed = false;
    while (got < len) {
      const ssize_t r = ::pread(fd, p + got, len - got, static_cast<off_t>(start + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        failed = true;  // the caller's own read reports it, with its context
        break;
      }
      if (r == 0) break;  // end of file
      got += static_cast<uint64_t>(r);
      if (got % 512 != 0) break;  // a direct read ends short only at the end of the file
    }

    lock.lock();
    loaded_ += got;
    // The main thread may have dropped the request meanwhile: then its slot is ours to free.
    auto it = std::find_if(q_.begin(), q_.end(), [&](const Request& r) { return r.seq == seq; });
    if (it == q_.end()) {
      slot_free_[static_cast<size_t>(slot)] = true;
    } else {
      it->got = got;
      it->state = failed ? State::Failed : State::Ready;
    }
    cv_.notify_all();
  }
}

uint64_t DirectReadQueue::bytes_loaded() const {
  std::lock_guard<std::mutex> lock(m_);
  return loaded_;
}

void pread_queued(DirectReadQueue& queue, InputFile& f, void* dst, uint64_t n, uint64_t offset,
                  ReadWindow& window, std::string_view what, uint64_t ahead_until) {
  auto* d = static_cast<unsigned char*>(dst);
  const uint64_t got = queue.take(f, d, n, offset);
  if (got < n) f.pread_exact(d + got, n - got, offset + got, window, what, ahead_until);
}

void pread_rows_queued(DirectReadQueue& queue, InputFile& f, void* dst, uint64_t dst_stride,
                       uint64_t rows, uint64_t row_bytes, uint64_t offset, ReadWindow& window,
                       std::string_view what) {
  auto* d = static_cast<unsigned char*>(dst);
  if (dst_stride == row_bytes) {
    pread_queued(queue, f, d, rows * row_bytes, offset, window, what);
    return;
  }
  uint64_t r = 0;
  while (r < rows &&
         queue.take(f, d + r * dst_stride, row_bytes, offset + r * row_bytes) == row_bytes)
    ++r;
  f.pread_rows(d + r * dst_stride, dst_stride, rows - r, row_bytes, offset + r * row_bytes,
               row_bytes, window, what);
}

}  // namespace mb
