#include "core/file.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

const char* file_type_name(unsigned mode) {
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISREG(mode)) return "a regular file";
  return "not a regular file";
}

File::File(const fs::path& path, Mode mode) : path_(path) {
  int flags = O_CLOEXEC;
  switch (mode) {
    case Mode::Read: flags |= O_RDONLY; break;
    case Mode::Write: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
    case Mode::ReadWrite: flags |= O_RDWR; break;
  }
  // An existing file is opened without blocking and must be a regular file:
  // opening a FIFO for reading would wait forever for a writer, and a device
  // or socket is never a checkpoint.
  if (mode != Mode::Write) flags |= O_NONBLOCK;
  fd_ = ::open(path.c_str(), flags, 0644);
  if (fd_ < 0) {
    int e = errno;
    throw Error("cannot open {} for {}: {}", path.string(), mode == Mode::Read ? "reading" : "writing",
                errno_text(e));
  }
  if (mode != Mode::Write) {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      fd_ = -1;
      throw Error("cannot stat {}: {}", path.string(), errno_text(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      throw Error("{} is {}, not a regular file; refusing to read it", path.string(),
                  file_type_name(st.st_mode));
    }
    // Regular files never block; the flag is cleared so that nothing later
    // depends on it.
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  }
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

File::File(File&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

uint64_t File::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw Error("cannot stat {}: {}", path_.string(), errno_text(errno));
  return static_cast<uint64_t>(st.st_size);
}

void File::pread_exact(void* buf, uint64_t n, uint64_t offset, std::string_view what) const {
  auto* p = static_cast<char*>(buf);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error("read error in {} at byte {}{}{}: {}", path_.string(), offset + done,
                  what.empty() ? "" : " while reading ", what, errno_text(errno));
    }
    if (r == 0)
      throw Error("{} is truncated: needed bytes [{}, {}){}{} but the file has {} bytes",
                  path_.string(), offset, offset + n, what.empty() ? "" : " for ", what, size());
    done += static_cast<uint64_t>(r);
  }
}

void File::preadv_exact(std::vector<iovec>& iov, uint64_t offset, std::string_view what) const {
  size_t first = 0;
  uint64_t pos = offset;
  while (first < iov.size()) {
    int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t r = ::preadv(fd_, iov.data() + first, count, static_cast<off_t>(pos));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error("read error in {} at byte {}{}{}: {}", path_.string(), pos,
                  what.empty() ? "" : " while reading ", what, errno_text(errno));
    }
    if (r == 0)
      throw Error("{} is truncated at byte {}{}{} (file has {} bytes)", path_.string(), pos,
                  what.empty() ? "" : " while reading ", what, size());
    pos += static_cast<uint64_t>(r);
    // Advance past fully read iovecs; trim a partially read one.
    auto left = static_cast<uint64_t>(r);
    while (first < iov.size() && left >= iov[first].iov_len) {
      left -= iov[first].iov_len;
      ++first;
    }
    if (left > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

void File::pread_rows(void* dst, uint64_t dst_stride, uint64_t rows, uint64_t piece,
                      uint64_t offset, uint64_t row_bytes, std::string_view what) const {
  auto* d = static_cast<unsigned char*>(dst);
  if (rows == 0 || piece == 0) return;
  if (piece == row_bytes && dst_stride == row_bytes) {
    pread_exact(d, rows * piece, offset, what);
  } else if (piece == row_bytes) {  // contiguous in the file, strided in memory
    std::vector<iovec> iov(rows);
    for (uint64_t r = 0; r < rows; ++r) iov[r] = {d + r * dst_stride, piece};
    preadv_exact(iov, offset, what);
  } else {
    for (uint64_t r = 0; r < rows; ++r)
      pread_exact(d + r * dst_stride, piece, offset + r * row_bytes, what);
  }
}

void File::will_need(uint64_t offset, uint64_t n) const {
  if (n > 0)
    ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(n), POSIX_FADV_WILLNEED);
}

void File::pwrite_exact(const void* buf, uint64_t n, uint64_t offset) {
  const auto* p = static_cast<const char*>(buf);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pwrite(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error("write error in {} at byte {}: {}", path_.string(), offset + done,
                  errno_text(errno));
    }
    // pwrite returns 0 for a non-empty request only when the file cannot
    // take more (some FUSE and network filesystems): retrying would spin.
    if (r == 0)
      throw Error("write error in {} at byte {}: the system accepted 0 of {} bytes", path_.string(),
                  offset + done, n - done);
    done += static_cast<uint64_t>(r);
  }
}

void File::truncate(uint64_t size) {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
    throw Error("cannot resize {} to {} bytes: {}", path_.string(), size, errno_text(errno));
}

void File::fsync() {
  if (::fsync(fd_) != 0) throw Error("fsync of {} failed: {}", path_.string(), errno_text(errno));
}

void File::close() {
  if (fd_ >= 0) {
    int r = ::close(fd_);
    fd_ = -1;
    if (r != 0) throw Error("closing {} failed: {}", path_.string(), errno_text(errno));
  }
}

std::string read_text_file(const fs::path& path) {
  File f(path, File::Mode::Read);
  std::string s(f.size(), '\0');
  f.pread_exact(s.data(), s.size(), 0);
  return s;
}

void write_file_atomic(const fs::path& path, std::string_view data) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    File f(tmp, File::Mode::Write);
    f.pwrite_exact(data.data(), data.size(), 0);
    f.fsync();
    f.close();
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
}

void copy_regular_file(const fs::path& from, const fs::path& to) {
  const File in(from, File::Mode::Read);
  File out(to, File::Mode::Write);
  std::vector<char> buf(1 << 20);
  const uint64_t size = in.size();
  for (uint64_t at = 0; at < size;) {
    const uint64_t n = std::min<uint64_t>(buf.size(), size - at);
    in.pread_exact(buf.data(), n, at);
    out.pwrite_exact(buf.data(), n, at);
    at += n;
  }
  out.fsync();
  out.close();
}

void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open directory {}: {}", dir.string(), errno_text(errno));
  int r = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (r != 0) throw Error("fsync of directory {} failed: {}", dir.string(), errno_text(e));
}

fs::path resolve_inside(const fs::path& dir, std::string_view relative, std::string_view what) {
  fs::path rel(relative);
  MB_CHECK(!relative.empty(), "{}: empty file name", what);
  // The OS would stop at a NUL byte and open another file than the one named.
  MB_CHECK(relative.find('\0') == std::string_view::npos,
           "{}: file name '{}...' contains a NUL byte", what,
           relative.substr(0, relative.find('\0')));
  MB_CHECK(!rel.is_absolute(), "{}: file name '{}' is an absolute path; it must be inside {}", what,
           relative, dir.string());
  for (const auto& part : rel)
    MB_CHECK(part != "..", "{}: file name '{}' points outside {} (path traversal)", what, relative,
             dir.string());
  return dir / rel;
}

}  // namespace mb
