// Positional file I/O with errors that name the file. Every read and write
// loops until the full count is done, because pread/pwrite may return short.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace mb {

// Where a writer puts bytes at explicit offsets: a File, or an AppendFile
// (direct_io.hpp), which takes them in order only.
class ByteOutput {
 public:
  virtual ~ByteOutput() = default;
  virtual void write_at(const void* buf, uint64_t n, uint64_t offset) = 0;
  virtual const std::filesystem::path& output_path() const = 0;
};

class File : public ByteOutput {
 public:
  // Read and ReadWrite open existing files, which must be regular files: a
  // FIFO, device or socket is refused by name, without blocking.
  enum class Mode { Read, Write /* create or truncate */, ReadWrite /* existing */ };

  File() = default;
  File(const std::filesystem::path& path, Mode mode);
  ~File() override;
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::filesystem::path& path() const { return path_; }
  uint64_t size() const;

  // Reads exactly n bytes at `offset`; a short file is an error naming `what`.
  void pread_exact(void* buf, uint64_t n, uint64_t offset, std::string_view what = {}) const;
  // Scatter read of consecutive file bytes starting at `offset`.
  void preadv_exact(std::vector<iovec>& iov, uint64_t offset, std::string_view what = {}) const;
  // Reads `rows` pieces of `piece` bytes, the first at `offset`, each
  // `row_bytes` after the previous, to dst rows `dst_stride` apart: one read
  // where the pieces are whole rows (contiguous in the file), else one each.
  void pread_rows(void* dst, uint64_t dst_stride, uint64_t rows, uint64_t piece, uint64_t offset,
                  uint64_t row_bytes, std::string_view what = {}) const;
  void pwrite_exact(const void* buf, uint64_t n, uint64_t offset);
  // Asks the kernel to start reading [offset, offset + n) into the page cache
  // now (POSIX_FADV_WILLNEED), without waiting: for bytes the caller is about
  // to read through this handle. Advice only: a refusal is ignored.
  void will_need(uint64_t offset, uint64_t n) const;
  void write_at(const void* buf, uint64_t n, uint64_t offset) override { pwrite_exact(buf, n, offset); }
  const std::filesystem::path& output_path() const override { return path_; }
  void truncate(uint64_t size);
  void fsync();
  void close();

 private:
  int fd_ = -1;
  std::filesystem::path path_;
};

// "a FIFO (named pipe)", "a directory", ...: what a stat mode says a path is.
const char* file_type_name(unsigned mode);

// Reads a whole (small) file, e.g. config.json or an index.
std::string read_text_file(const std::filesystem::path& path);
// Writes `data` to `path` through a temporary name, fsyncs it, then renames:
// readers see either the old file or the complete new one.
void write_file_atomic(const std::filesystem::path& path, std::string_view data);
void fsync_directory(const std::filesystem::path& dir);
// Copies the regular file `from` (a FIFO, device or socket is refused without
// blocking) to a new or truncated `to`, and fsyncs it.
void copy_regular_file(const std::filesystem::path& from, const std::filesystem::path& to);

// Resolves `relative` inside `dir` and refuses names that escape it (absolute
// paths, "..", symlink tricks in the name itself).
std::filesystem::path resolve_inside(const std::filesystem::path& dir, std::string_view relative,
                                     std::string_view what);

}  // namespace mb
