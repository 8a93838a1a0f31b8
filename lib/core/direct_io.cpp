#include "core/direct_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <set>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
constexpr uint64_t kPage = 4096;

uint64_t round_down(uint64_t v, uint64_t a) {
  return v / a * a;
}
uint64_t round_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

// Opens a second descriptor with O_DIRECT. Returns -1 (and says why) where
// the filesystem does not do direct I/O.
int open_direct(const fs::path& path, int flags, uint32_t& align, std::string& why) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_offset_align == 0) {
      why = "the filesystem does not support direct I/O";
      return -1;
    }
    align = std::max({sx.stx_dio_offset_align, sx.stx_dio_mem_align, 512u});
    if (align > kPage) {
      why = "its direct I/O alignment is larger than a page";
      return -1;
    }
  } else {
    align = kPage;  // statx does not say (older kernel or filesystem): the safe choice
  }
  const int fd = ::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC);
  if (fd < 0) why = std::strerror(errno);
  return fd;
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Says that `path` is read or written through the page cache after all:
// worth an info line when direct I/O was asked for explicitly.
void log_fallback(IoMode mode, const fs::path& path, const char* verb, std::string_view why) {
  const std::string msg =
      fmt::format("{}: {} through the page cache: {}", path.string(), verb, why);
  if (mode == IoMode::Direct)
    log::info("{}", msg);
  else
    log::debug("{}", msg);
}

// Writes n bytes (whole alignment units) at `at` with O_DIRECT. Returns false,
// having written nothing, when the request is refused (EINVAL: the alignment
// is not what the filesystem wants), so that the caller can write buffered.
bool pwrite_direct(int fd, const unsigned char* p, uint64_t n, uint64_t at, const fs::path& path,
                   std::string& why) {
  uint64_t done = 0;
  while (done < n) {
    const ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(at + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && done == 0) {
        why = fmt::format("direct write at byte {} refused ({})", at, std::strerror(errno));
        return false;
      }
      throw Error("write error in {} at byte {}: {}", path.string(), at + done,
                  std::strerror(errno));
    }
    if (r == 0) throw Error("write error in {} at byte {}: no progress", path.string(), at + done);
    done += static_cast<uint64_t>(r);
  }
  return true;
}
}  // namespace

IoMode parse_io_mode(std::string_view name) {
  if (name == "auto") return IoMode::Auto;
  if (name == "direct") return IoMode::Direct;
  if (name == "buffered") return IoMode::Buffered;
  throw Error("unknown I/O mode '{}': expected auto, direct or buffered", name);
}

std::string_view io_mode_name(IoMode mode) {
  switch (mode) {
    case IoMode::Auto:
      return "auto";
    case IoMode::Direct:
      return "direct";
    case IoMode::Buffered:
      return "buffered";
  }
  return "?";
}

uint64_t direct_io_chunk_bytes(uint64_t buffer_bytes) {
  return round_down(std::clamp<uint64_t>(buffer_bytes / 32, 256 << 10, 8 << 20), kPage);
}

uint64_t engine_buffer_bytes(uint64_t buffer_bytes, int io_buffers) {
  if (io_buffers <= 0) return buffer_bytes;
  const uint64_t io = direct_io_chunk_bytes(buffer_bytes) * static_cast<uint64_t>(io_buffers);
  // A tiny buffer keeps what it has; the engine enforces its own minimum.
  return buffer_bytes > 2 * io ? buffer_bytes - io : buffer_bytes;
}

AlignedBuffer::AlignedBuffer(uint64_t bytes) : n_(round_up(bytes, kPage)) {
  if (n_ == 0) return;
  if (::posix_memalign(&p_, kPage, n_) != 0)
    throw Error("out of memory allocating a {} byte I/O buffer", n_);
}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

// ---------------------------------------------------------------- InputFile

namespace {
std::atomic<uint64_t> next_input_id{1};
}  // namespace

InputFile::InputFile(const fs::path& path, IoMode mode)
    : file_(path, File::Mode::Read), mode_(mode), id_(next_input_id++) {
  if (mode == IoMode::Buffered) return;
  std::string why;
  direct_fd_ = open_direct(path, O_RDONLY, align_, why);
  if (direct_fd_ < 0)
    give_up_direct(why);
  else
    ::posix_fadvise(file_.fd(), 0, 0, POSIX_FADV_RANDOM);  // advice only: failure is harmless
}

InputFile::~InputFile() {
  close_fd(direct_fd_);
}

InputFile::InputFile(InputFile&& o) noexcept
    : file_(std::move(o.file_)),
      direct_fd_(o.direct_fd_),
      align_(o.align_),
      mode_(o.mode_),
      id_(o.id_) {
  o.direct_fd_ = -1;
  o.id_ = 0;
}

void InputFile::give_up_direct(std::string_view why) {
  if (direct_fd_ >= 0) ::posix_fadvise(file_.fd(), 0, 0, POSIX_FADV_NORMAL);
  close_fd(direct_fd_);
  log_fallback(mode_, file_.path(), "reading", why);
}

int64_t InputFile::load(ReadWindow& w, uint64_t start, uint64_t len, std::string_view what) {
  w.file_ = 0;  // invalid until the load completes
  uint64_t got = 0;
  while (got < len) {
    const ssize_t r =
        ::pread(direct_fd_, w.buf_.data() + got, len - got, static_cast<off_t>(start + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) {
        // The alignment we were told (or assumed) is wrong for this file:
        // the page cache still works, so read that way from now on.
        give_up_direct(
            fmt::format("direct read at byte {} refused ({})", start + got, std::strerror(errno)));
        return -1;
      }
      throw Error("read error in {} at byte {}{}{}: {}", file_.path().string(), start + got,
                  what.empty() ? "" : " while reading ", what, std::strerror(errno));
    }
    if (r == 0) break;  // end of file
    got += static_cast<uint64_t>(r);
    if (got % align_ != 0) break;  // a direct read ends short only at the end of the file
  }
  w.file_ = id_;
  w.off_ = start;
  w.len_ = got;
  return static_cast<int64_t>(got);
}

void InputFile::pread_exact(void* dst, uint64_t n, uint64_t offset, ReadWindow& w,
                            std::string_view what, uint64_t ahead_until) {
  auto* d = static_cast<unsigned char*>(dst);
  const uint64_t end = offset + n;
  uint64_t pos = offset;
  const uint64_t cap = round_down(w.capacity(), align_);
  while (pos < end && direct_fd_ >= 0 && cap >= 2 * align_) {
    if (w.file_ == id_ && pos >= w.off_ && pos < w.off_ + w.len_) {  // already loaded
      const uint64_t k = std::min(end, w.off_ + w.len_) - pos;
      std::memcpy(d + (pos - offset), w.buf_.data() + (pos - w.off_), k);
      pos += k;
      continue;
    }
    const uint64_t start = round_down(pos, align_);
    uint64_t len = std::min(cap, round_up(end, align_) - start);
    // A small read that continues the last small one forward (within 1 MiB
    // of its end) loads ahead: twice what that one loaded. A small read after
    // a large one loads what it needs only: a large read says nothing about
    // what follows it.
    const bool small = n < kSmallReadBytes;
    const bool forward = w.file_ == id_ && w.ahead_ > 0 && start >= w.off_ &&
                         start <= w.off_ + w.len_ + kSmallReadBytes;
    if (small && forward) {
      const uint64_t need = len;
      len = std::min(cap, std::max(len, round_up(2 * w.ahead_, align_)));
      if (ahead_until != UINT64_MAX)
        len = std::max(need, std::min(len, round_up(ahead_until, align_) - start));
    }
    const int64_t got = load(w, start, len, what);
    w.ahead_ = small && got > 0 ? static_cast<uint64_t>(got) : 0;
    if (got < 0) break;  // refused: the rest through the page cache
    if (start + static_cast<uint64_t>(got) <= pos)
      throw Error("{} is truncated: needed bytes [{}, {}){}{} but the file has {} bytes",
                  file_.path().string(), offset, end, what.empty() ? "" : " for ", what,
                  file_.size());
  }
  if (pos < end) file_.pread_exact(d + (pos - offset), end - pos, pos, what);
}

void InputFile::pread_rows(void* dst, uint64_t dst_stride, uint64_t rows, uint64_t piece,
                           uint64_t offset, uint64_t row_bytes, ReadWindow& w,
                           std::string_view what) {
  auto* d = static_cast<unsigned char*>(dst);
  if (rows == 0 || piece == 0) return;
  if (piece == row_bytes && dst_stride == row_bytes) {  // one contiguous range
    pread_exact(d, rows * piece, offset, w, what);
    return;
  }
  const uint64_t cap = round_down(w.capacity(), align_);
  if (direct() && piece == row_bytes && cap >= 2 * align_) {
    // Contiguous in the file, strided in memory: load the rows' aligned
    // cover window by window (never past the last row) and copy them out.
    const uint64_t end = offset + rows * row_bytes;
    for (uint64_t r = 0; r < rows && direct();) {
      const uint64_t pos = offset + r * row_bytes;
      if (!(w.file_ == id_ && pos >= w.off_ && pos + piece <= w.off_ + w.len_)) {
        const uint64_t start = round_down(pos, align_);
        const uint64_t len = std::min(cap, round_up(end, align_) - start);
        if (start + len < pos + piece) {  // a row larger than the window
          pread_exact(d + r * dst_stride, piece, pos, w, what);
          ++r;
          continue;
        }
        w.ahead_ = 0;
        const int64_t got = load(w, start, len, what);
        if (got < 0) break;  // refused: the rest through the page cache
        if (start + static_cast<uint64_t>(got) < pos + piece)
          throw Error("{} is truncated: needed bytes [{}, {}){}{} but the file has {} bytes",
                      file_.path().string(), pos, pos + piece, what.empty() ? "" : " for ", what,
                      file_.size());
      }
      std::memcpy(d + r * dst_stride, w.buf_.data() + (pos - w.off_), piece);
      ++r;
      if (r == rows) return;
    }
  }
  if (!direct() || column_window_direct(piece, row_bytes)) {
    for (uint64_t r = 0; r < rows; ++r)
      pread_exact(d + r * dst_stride, piece, offset + r * row_bytes, w, what);
    return;
  }
  // A narrow window: through the page cache, shared with the node's other
  // ranks. As many whole row spans per request as the window holds; the
  // window's memory is the scratch space, so what it held is forgotten.
  const uint64_t batch = piece <= cap ? 1 + (cap - piece) / row_bytes : 0;
  if (batch == 0) {  // a piece larger than the window: straight into place
    for (uint64_t r = 0; r < rows; ++r)
      file_.pread_exact(d + r * dst_stride, piece, offset + r * row_bytes, what);
    return;
  }
  w.file_ = 0;
  w.ahead_ = 0;
  PageCacheAhead ahead(file_, offset, offset + (rows - 1) * row_bytes + piece);
  for (uint64_t r0 = 0; r0 < rows; r0 += batch) {
    const uint64_t k = std::min(batch, rows - r0);
    const uint64_t at = offset + r0 * row_bytes;
    ahead.reading_to(at + (k - 1) * row_bytes + piece);
    file_.pread_exact(w.buf_.data(), (k - 1) * row_bytes + piece, at, what);
    for (uint64_t r = 0; r < k; ++r)
      std::memcpy(d + (r0 + r) * dst_stride, w.buf_.data() + r * row_bytes, piece);
  }
}

uint64_t InputFile::will_read_rows(uint64_t rows, uint64_t piece, uint64_t offset,
                                   uint64_t row_bytes, uint64_t max_bytes) const {
  if (rows == 0 || piece == 0 || !direct() || column_window_direct(piece, row_bytes)) return 0;
  rows = std::min(rows, std::max<uint64_t>(1, max_bytes / row_bytes));
  const uint64_t n = (rows - 1) * row_bytes + piece;
  file_.will_need(offset, n);
  return n;
}

ReadWindow& ReadWindows::of(const InputFile& f) {
  int i = owner_[0] == f.id() ? 0 : owner_[1] == f.id() ? 1 : 1 - last_;
  owner_[i] = f.id();
  last_ = i;
  if (f.direct() && w_[i].capacity() == 0) w_[i] = ReadWindow(bytes_);
  return w_[i];
}

// --------------------------------------------------------------- AppendFile

AppendFile::AppendFile(const fs::path& path, IoMode mode, uint64_t chunk_bytes)
    : file_(path, File::Mode::Write), mode_(mode) {
  if (mode == IoMode::Buffered) return;
  std::string why;
  direct_fd_ = open_direct(path, O_WRONLY, align_, why);
  if (direct_fd_ < 0) {
    give_up_direct(why);
    return;
  }
  buf_ = AlignedBuffer(std::max<uint64_t>(round_down(chunk_bytes, align_), align_));
}

AppendFile::~AppendFile() {
  close_fd(direct_fd_);
}

void AppendFile::give_up_direct(std::string_view why) {
  close_fd(direct_fd_);
  log_fallback(mode_, file_.path(), "writing", why);
}

void AppendFile::flush_direct(uint64_t n) {
  // n is a multiple of the alignment: whole units, the tail padded by finish().
  std::string why;
  if (!pwrite_direct(direct_fd_, buf_.data(), n, flushed_, file_.path(), why)) {
    give_up_direct(why);  // refused, not failed: append() writes the rest buffered
    return;
  }
  flushed_ += n;
  filled_ = 0;
}

void AppendFile::append(const void* data, uint64_t n) {
  MB_CHECK(!finished_, "internal: append to {} after finish", file_.path().string());
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0 && direct_fd_ >= 0) {
    const uint64_t k = std::min(n, buf_.size() - filled_);
    std::memcpy(buf_.data() + filled_, p, k);
    filled_ += k;
    size_ += k;
    p += k;
    n -= k;
    if (filled_ == buf_.size()) flush_direct(filled_);
  }
  if (direct_fd_ < 0) {
    if (filled_ > 0) {  // what a refused direct write left behind
      file_.pwrite_exact(buf_.data(), filled_, flushed_);
      flushed_ += filled_;
      filled_ = 0;
    }
    if (n > 0) file_.pwrite_exact(p, n, flushed_);
    flushed_ += n;
    size_ += n;
  }
}

void AppendFile::write_at(const void* data, uint64_t n, uint64_t offset) {
  MB_CHECK(offset == size_,
           "internal: {} is written front to back, but a write at byte {} came when it had {}",
           file_.path().string(), offset, size_);
  append(data, n);
}

void AppendFile::finish() {
  MB_CHECK(!finished_, "internal: {} finished twice", file_.path().string());
  if (direct_fd_ >= 0 && filled_ > 0) {
    const uint64_t padded = round_up(filled_, align_);
    std::memset(buf_.data() + filled_, 0, padded - filled_);
    const uint64_t tail = filled_;
    flush_direct(padded);
    if (direct_fd_ >= 0) flushed_ -= padded - tail;  // the padding is cut off below
  }
  if (filled_ > 0) append(nullptr, 0);  // a refused tail goes through the page cache
  if (direct_fd_ >= 0) file_.truncate(size_);
  MB_CHECK(flushed_ == size_, "internal: {} has {} bytes written of {}", file_.path().string(),
           flushed_, size_);
  close_fd(direct_fd_);
  file_.fsync();
  file_.close();
  finished_ = true;
}

// --------------------------------------------------------------- RegionFile

RegionFile::RegionFile(const fs::path& path, IoMode mode)
    : file_(path, File::Mode::ReadWrite), mode_(mode) {
  if (mode == IoMode::Buffered) return;
  std::string why;
  direct_fd_ = open_direct(path, O_WRONLY, align_, why);
  if (direct_fd_ < 0) give_up_direct(why);
}

RegionFile::~RegionFile() {
  close_fd(direct_fd_);
}

RegionFile::RegionFile(RegionFile&& o) noexcept
    : file_(std::move(o.file_)), direct_fd_(o.direct_fd_), align_(o.align_), mode_(o.mode_) {
  o.direct_fd_ = -1;
}

void RegionFile::give_up_direct(std::string_view why) {
  close_fd(direct_fd_);
  log_fallback(mode_, file_.path(), "writing", why);
}

RegionWriter::RegionWriter(RegionFile& f, uint64_t begin, uint64_t end, AlignedBuffer& buf)
    : f_(f), buf_(buf), begin_(begin), end_(end), pos_(begin) {
  // The direct middle starts and ends on page boundaries even where the
  // filesystem takes 512-byte units (ext4 on this machine does): the page
  // cache works in pages, so a neighbour's buffered write into the same page
  // could read the page before our direct write lands, and its later
  // writeback would put the old bytes back over ours (the kernel's "page
  // cache invalidation failure on direct I/O"). Whole pages never mix.
  const uint64_t a = std::max<uint64_t>(f.align_, kPage);
  if (f.direct() && buf.size() >= a && round_up(begin, a) < round_down(end, a)) {
    a0_ = round_up(begin, a);
    a1_ = round_down(end, a);
  }
}

void RegionWriter::flush() {
  if (filled_ == 0) return;
  const uint64_t at = pos_ - filled_;
  std::string why;
  if (f_.direct() && pwrite_direct(f_.direct_fd_, buf_.data(), filled_, at, f_.file_.path(), why)) {
    filled_ = 0;
    return;
  }
  if (f_.direct()) f_.give_up_direct(why);
  f_.file_.pwrite_exact(buf_.data(), filled_, at);  // through the page cache
  filled_ = 0;
}

void RegionWriter::write_at(const void* data, uint64_t n, uint64_t offset) {
  MB_CHECK(offset == pos_ && offset + n <= end_,
           "internal: {}: region [{}, {}) written out of order (a write of {} bytes at byte {}, "
           "expected {})",
           f_.file_.path().string(), begin_, end_, n, offset, pos_);
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    const bool middle = pos_ >= a0_ && pos_ < a1_ && f_.direct();
    if (!middle) {  // an end unit, or no direct I/O: through the page cache
      flush();
      const uint64_t k = pos_ < a0_ ? std::min(n, a0_ - pos_) : n;
      f_.file_.pwrite_exact(p, k, pos_);
      pos_ += k, p += k, n -= k;
      continue;
    }
    const uint64_t k = std::min({n, buf_.size() - filled_, a1_ - pos_});
    std::memcpy(buf_.data() + filled_, p, k);
    filled_ += k;
    pos_ += k, p += k, n -= k;
    if (filled_ == buf_.size() || pos_ == a1_) flush();  // whole units, aligned
  }
}

void RegionWriter::finish() const {
  MB_CHECK(pos_ == end_ && filled_ == 0, "internal: {}: region [{}, {}) written up to byte {} only",
           f_.file_.path().string(), begin_, end_, pos_);
}

// ------------------------------------------------- streaming region writes

StreamingRegionWriter::StreamingRegionWriter(RegionFile& f, uint64_t buffer_bytes) : f_(f) {
  const uint64_t a = std::max<uint64_t>(f.align_, kPage);
  if (!f.direct() || buffer_bytes < a) return;
  const uint64_t n = round_down(buffer_bytes, a);
  bufs_[0] = AlignedBuffer(n);
  bufs_[1] = AlignedBuffer(n);
  try {
    helper_ = std::thread([this] { run(); });
  } catch (const std::system_error&) {
    // No thread to be had (a loaded machine): the writes are done at once.
  }
}

StreamingRegionWriter::~StreamingRegionWriter() {
  if (!helper_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(m_);
    stop_ = true;
  }
  cv_.notify_all();
  helper_.join();
}

void StreamingRegionWriter::run() {
  std::unique_lock<std::mutex> lock(m_);
  for (;;) {
    cv_.wait(lock, [this] { return has_job_ || stop_; });
    if (!has_job_) return;  // stopped
    const unsigned char* p = job_;
    const uint64_t n = job_n_, at = job_at_;
    lock.unlock();
    std::exception_ptr error;
    std::string refused;
    try {
      write_block(p, n, at, refused);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error && !error_) error_ = error;
    if (!refused.empty() && refused_.empty()) refused_ = refused;
    has_job_ = false;
    cv_.notify_all();
  }
}

// On the helper thread (or the caller's, without one): reads f_'s direct
// descriptor only, which the caller changes only while the helper is idle.
void StreamingRegionWriter::write_block(const unsigned char* p, uint64_t n, uint64_t at,
                                        std::string& refused) {
  if (f_.direct() && pwrite_direct(f_.direct_fd_, p, n, at, f_.file_.path(), refused)) return;
  f_.file_.pwrite_exact(p, n, at);  // refused: through the page cache (this block only)
}

void StreamingRegionWriter::wait_idle() {
  std::string refused;
  std::exception_ptr error;
  if (helper_.joinable()) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [this] { return !has_job_; });
    std::swap(error, error_);
    std::swap(refused, refused_);
  }
  if (!refused.empty()) f_.give_up_direct(refused);  // the helper is idle: safe to close
  if (error) std::rethrow_exception(error);
}

void StreamingRegionWriter::submit() {
  if (filled_ == 0) return;
  const uint64_t at = pos_ - filled_;
  if (!helper_.joinable()) {
    std::string refused;
    write_block(bufs_[cur_].data(), filled_, at, refused);
    if (!refused.empty()) f_.give_up_direct(refused);
    filled_ = 0;
    return;
  }
  wait_idle();  // the other buffer is free again
  {
    std::lock_guard<std::mutex> lock(m_);
    job_ = bufs_[cur_].data();
    job_n_ = filled_;
    job_at_ = at;
    has_job_ = true;
  }
  cv_.notify_all();
  cur_ ^= 1;
  filled_ = 0;
}

void StreamingRegionWriter::begin(uint64_t begin, uint64_t end) {
  MB_CHECK(!in_region_, "internal: {}: region [{}, {}) begun before [{}, {}) ended",
           f_.file_.path().string(), begin, end, begin_, end_);
  begin_ = begin, end_ = end, pos_ = begin, filled_ = 0;
  a0_ = a1_ = 0;
  const uint64_t a = std::max<uint64_t>(f_.align_, kPage);
  if (f_.direct() && bufs_[0].size() > 0 && round_up(begin, a) < round_down(end, a)) {
    a0_ = round_up(begin, a);
    a1_ = round_down(end, a);
  }
  in_region_ = true;
}

void StreamingRegionWriter::write(const void* data, uint64_t n) {
  MB_CHECK(in_region_ && pos_ + n <= end_,
           "internal: {}: {} bytes written at byte {} of region [{}, {})", f_.file_.path().string(),
           n, pos_, begin_, end_);
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    const bool middle = pos_ >= a0_ && pos_ < a1_ && f_.direct();
    if (!middle) {  // an end page, or no direct I/O: through the page cache, now
      submit();
      const uint64_t k = pos_ < a0_ ? std::min(n, a0_ - pos_) : n;
      f_.file_.pwrite_exact(p, k, pos_);
      pos_ += k, p += k, n -= k;
      continue;
    }
    AlignedBuffer& b = bufs_[cur_];
    const uint64_t k = std::min({n, b.size() - filled_, a1_ - pos_});
    std::memcpy(b.data() + filled_, p, k);
    filled_ += k;
    pos_ += k, p += k, n -= k;
    if (filled_ == b.size() || pos_ == a1_) submit();  // whole pages, aligned
  }
}

void StreamingRegionWriter::end() {
  MB_CHECK(in_region_ && pos_ == end_ && filled_ == 0,
           "internal: {}: region [{}, {}) written up to byte {} only", f_.file_.path().string(),
           begin_, end_, pos_);
  in_region_ = false;
}

void StreamingRegionWriter::finish() {
  submit();
  wait_idle();
}

// -------------------------------------------------------------- direct copy

DirectCopyResult direct_copy_file(const fs::path& src, const fs::path& dst, uint64_t block_bytes) {
  File in(src, File::Mode::Read);
  File out(dst, File::Mode::Write);
  std::string why;
  uint32_t ralign = kPage, walign = kPage;
  int rfd = open_direct(src, O_RDONLY, ralign, why);
  if (rfd < 0) log_fallback(IoMode::Direct, src, "reading", why);
  int wfd = open_direct(dst, O_WRONLY, walign, why);
  if (wfd < 0) log_fallback(IoMode::Direct, dst, "writing", why);
  struct Fds {
    int& r;
    int& w;
    ~Fds() { close_fd(r), close_fd(w); }
  } fds{rfd, wfd};
  const uint64_t align = std::max(ralign, walign);
  const uint64_t block = std::max<uint64_t>(round_down(block_bytes, align), align);
  AlignedBuffer bufs[2] = {AlignedBuffer(block), AlignedBuffer(block)};

  // Reads up to `block` bytes at `at` (aligned); fewer only at the end of the file.
  auto read_block = [&](unsigned char* p, uint64_t at) -> uint64_t {
    uint64_t got = 0;
    while (got < block) {
      ssize_t r;
      if (rfd >= 0) {
        r = ::pread(rfd, p + got, block - got, static_cast<off_t>(at + got));
        if (r < 0 && errno == EINVAL && got == 0) {  // refused: the page cache from now on
          log_fallback(IoMode::Direct, src, "reading",
                       fmt::format("direct read at byte {} refused", at));
          close_fd(rfd);
          continue;
        }
      } else {
        r = ::pread(in.fd(), p + got, block - got, static_cast<off_t>(at + got));
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        throw Error("read error in {} at byte {}: {}", src.string(), at + got,
                    std::strerror(errno));
      }
      if (r == 0) break;
      got += static_cast<uint64_t>(r);
      if (rfd >= 0 && got % ralign != 0) break;  // short only at the end of the file
    }
    return got;
  };
  // Writes n bytes at `at`: whole units directly (the last one padded with
  // zeros, cut off by the truncate below), or through the page cache.
  auto write_block = [&](unsigned char* p, uint64_t n, uint64_t at) {
    if (wfd >= 0) {
      const uint64_t padded = round_up(n, walign);
      std::memset(p + n, 0, padded - n);
      std::string refused;
      if (pwrite_direct(wfd, p, padded, at, dst, refused)) return;
      log_fallback(IoMode::Direct, dst, "writing", refused);
      close_fd(wfd);
    }
    out.pwrite_exact(p, n, at);
  };

  DirectCopyResult res;
  res.direct_read = rfd >= 0;
  res.direct_write = wfd >= 0;
  std::future<void> writing;
  try {
    for (int k = 0;; k ^= 1) {
      const uint64_t n = read_block(bufs[k].data(), res.bytes);
      if (writing.valid()) writing.get();  // the other buffer is free again
      if (n == 0) break;
      writing = std::async(std::launch::async, write_block, bufs[k].data(), n, res.bytes);
      res.bytes += n;
      if (n < block) break;
    }
    if (writing.valid()) writing.get();
  } catch (...) {
    if (writing.valid()) writing.wait();
    throw;
  }
  res.direct_read = res.direct_read && rfd >= 0;
  res.direct_write = res.direct_write && wfd >= 0;
  out.truncate(res.bytes);  // the padding of the last unit
  MB_CHECK(res.bytes == in.size(), "{} changed size while being copied ({} bytes copied, now {})",
           src.string(), res.bytes, in.size());
  out.fsync();
  return res;
}

uint64_t direct_copy_tree(const fs::path& src, const fs::path& dst, uint64_t block_bytes,
                          bool* all_direct) {
  uint64_t bytes = 0;
  bool direct = true;
  std::set<fs::path> dirs{dst};
  fs::create_directories(dst);
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const fs::path to = dst / fs::relative(e.path(), src);
    if (e.is_directory()) {
      fs::create_directories(to);
      dirs.insert(to);
    } else if (e.is_regular_file()) {
      const DirectCopyResult r = direct_copy_file(e.path(), to, block_bytes);
      bytes += r.bytes;
      direct = direct && r.direct_read && r.direct_write;
    }
  }
  for (const auto& d : dirs) fsync_directory(d);
  if (all_direct) *all_direct = direct;
  return bytes;
}

}  // namespace mb
