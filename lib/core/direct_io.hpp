// Large transfers that bypass the page cache (O_DIRECT).
//
// Why: a conversion touches each byte once, so caching it buys nothing, and
// filling the page cache is not free. On the benchmark machine (2 cores, cloud
// disk) a cold buffered read of a 4.9 GB shard took 11.5 s, 9.4 s of it kernel
// time, the same read with O_DIRECT 5.5 s with 0.3 s; a buffered 4.9 GB write
// plus fsync 13.5 s (12.3 s kernel), with O_DIRECT 3.7 s (docs/performance.md).
// With two cores, that kernel time competes with the conversion itself.
//
// O_DIRECT wants the file offset, the length and the memory aligned (statx
// reports the alignments; 4096 is assumed where it does not). Reads therefore
// go through an aligned bounce buffer covering the aligned superset of the
// wanted range (at most one alignment unit more at each end), and appends
// through an aligned buffer written out in whole units, the last one padded
// and the file then truncated to its exact length. Filesystems that refuse
// O_DIRECT (tmpfs on older kernels, some FUSE mounts) get buffered I/O, as do
// small and strided reads, where the page cache's readahead is the better tool.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "core/file.hpp"

namespace mb {

// auto: O_DIRECT where the filesystem takes it, buffered elsewhere.
// direct: the same, but saying (at info level) when a file falls back.
// buffered: the page cache for everything.
enum class IoMode { Auto, Direct, Buffered };
IoMode parse_io_mode(std::string_view name);  // throws naming the value
std::string_view io_mode_name(IoMode mode);

// The size of each direct transfer for a given conversion buffer: 1/32 of it,
// between 256 KiB and 8 MiB (8 MiB requests ran at 1 GB/s here, 1 MiB ones
// at 0.66 GB/s). A source's bounce buffer, each of an import source's
// read-ahead slots (direct_read_queue.hpp) and an output's append buffer take
// one each, out of the conversion buffer (see engine_buffer_bytes).
uint64_t direct_io_chunk_bytes(uint64_t buffer_bytes);
// What remains of `buffer_bytes` for the copy engine once `io_buffers` direct
// I/O buffers are taken out of it, so that the total stays the configured one.
uint64_t engine_buffer_bytes(uint64_t buffer_bytes, int io_buffers);

// What a pipeline hands to its sources and outputs.
struct IoConfig {
  IoMode mode = IoMode::Auto;
  uint64_t chunk_bytes = 8 << 20;  // bounce / append buffer size
};
inline IoConfig io_config(IoMode mode, uint64_t buffer_bytes) {
  return {mode, direct_io_chunk_bytes(buffer_bytes)};
}

// Page-aligned heap memory, as O_DIRECT needs.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(uint64_t bytes);
  ~AlignedBuffer() { std::free(p_); }
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  unsigned char* data() { return static_cast<unsigned char*>(p_); }
  uint64_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  uint64_t n_ = 0;
};

// The memory direct reads go through, shared by all files of one source:
// an aligned buffer that also keeps the last bytes loaded, so that small
// reads going forward (norms next to each other, rows contiguous in the
// file) are served from it. What the page cache's readahead did, in user
// space, for one source's reads only. Narrow column windows use it as
// scratch space for their page-cache reads (InputFile::pread_rows).
class ReadWindow {
 public:
  ReadWindow() = default;
  explicit ReadWindow(uint64_t bytes) : buf_(bytes) {}
  uint64_t capacity() const { return buf_.size(); }

 private:
  friend class InputFile;
  AlignedBuffer buf_;
  uint64_t file_ = 0;  // the InputFile whose bytes it holds (0: none)
  uint64_t off_ = 0, len_ = 0;
  // What the last load-ahead loaded (0: the last load was for a large read).
  // Load-ahead grows from this, not from a large read's load, so that a norm
  // read after a large tensor does not pull in megabytes nobody asked for.
  uint64_t ahead_ = 0;
};

// How a column window (`rows` pieces of `piece` bytes, `row_bytes` apart in
// the file) is read under direct I/O, and what storage it costs. A piece of at
// least kDirectPieceBytes is read directly on its own (its aligned cover, at
// most two alignment units more: < 1%). A narrower piece shares its
// alignment units with the neighbouring ranks' columns, so reading it
// directly would read those columns too (a TP2 split of 1 KiB expert rows
// read 2x); such windows are read through the page cache instead, whole row
// spans at a time, where the ranks of a node share them: each byte then comes
// from storage once per node, which is what `plan` reports.
constexpr uint64_t kDirectPieceBytes = 1 << 20;

// How far ahead page-cache reads are asked for (File::will_need). The source
// handles under direct I/O are POSIX_FADV_RANDOM (see InputFile::file()), so
// the kernel reads nothing ahead of them by itself, and a run of 2 MiB reads
// (one expert's rows) went to storage one request at a time: 0.4-0.9 GB/s on
// this machine's disk, against 1.7-2.0 GB/s with the next 8 MiB asked for
// ahead (docs/performance.md, sixth round). Asked only for bytes that will be
// read: what read-ahead by guess pulled in was then read again directly.
constexpr uint64_t kReadAheadBytes = 16 << 20;

// A page-cache read of the bytes [begin, end), done front to back in pieces,
// asked of the kernel kReadAheadBytes ahead of where it reads (File::will_need).
// An empty range asks for nothing.
class PageCacheAhead {
 public:
  PageCacheAhead(const File& f, uint64_t begin, uint64_t end) : f_(f), asked_(begin), end_(end) {}
  // The next read ends at `upto`: it and what follows it up to
  // kReadAheadBytes are asked for (each byte once).
  void reading_to(uint64_t upto) {
    const uint64_t to = std::min(end_, upto + kReadAheadBytes);
    if (to > asked_) f_.will_need(asked_, to - asked_);
    asked_ = std::max(asked_, to);
  }

 private:
  const File& f_;
  uint64_t asked_, end_;
};
inline bool column_window_direct(uint64_t piece, uint64_t row_bytes) {
  return piece == row_bytes || piece >= kDirectPieceBytes;
}

// A file read by byte ranges. With direct I/O every read goes through the
// caller's ReadWindow: a large read loads exactly the aligned superset of
// what it needs, in window-sized requests; a small read that continues the
// previous small one forward loads twice what that one loaded (up to the
// window), so that sequential small reads cost few requests. Without direct I/O (or
// without a window) reads go through file(), the ordinary buffered handle.
class InputFile {
 public:
  // Reads below this size count as small (may load ahead).
  static constexpr uint64_t kSmallReadBytes = 1 << 20;

  InputFile(const std::filesystem::path& path, IoMode mode);
  ~InputFile();
  InputFile(InputFile&& o) noexcept;
  InputFile& operator=(InputFile&&) = delete;
  InputFile(const InputFile&) = delete;

  // The buffered handle, for parsing headers and for the sources' reads
  // through the page cache (narrow windows, bytes hashed ahead). With direct
  // I/O it is marked POSIX_FADV_RANDOM: such a read must not pull the data
  // after it into the page cache (the kernel reads ahead 8 MiB here), since
  // that data is then read again, directly (an EP2 -> TP2·ETP2 torch_dist
  // reshard read 1.19x its input before).
  const File& file() const { return file_; }
  bool direct() const { return direct_fd_ >= 0; }
  uint64_t id() const { return id_; }  // unique per open file: what a ReadWindow holds
  // Reads exactly [offset, offset + n); a short file is an error naming `what`.
  // Load-ahead stops at `ahead_until` where the caller knows its reads end
  // there (a tensor block read row by row, whose next bytes another rank
  // reads): what lies after it would be read from storage for nothing.
  void pread_exact(void* dst, uint64_t n, uint64_t offset, ReadWindow& window,
                   std::string_view what, uint64_t ahead_until = UINT64_MAX);
  // Reads `rows` pieces of `piece` bytes, the first at `offset`, each
  // `row_bytes` after the previous, to dst rows `dst_stride` apart. Direct
  // or through the page cache as column_window_direct() says (see there).
  void pread_rows(void* dst, uint64_t dst_stride, uint64_t rows, uint64_t piece, uint64_t offset,
                  uint64_t row_bytes, ReadWindow& window, std::string_view what);
  // The bytes that pread_rows with these arguments would read through the
  // page cache (a narrow window under direct I/O: its whole row span), asked
  // of the kernel now (File::will_need), so that they are on their way
  // while the reads before them are done. Returns the bytes asked for (0:
  // nothing of it goes through the page cache). See kReadAheadBytes.
  // At most the rows that fit in `max_bytes` (one at least) are asked for.
  uint64_t will_read_rows(uint64_t rows, uint64_t piece, uint64_t offset, uint64_t row_bytes,
                          uint64_t max_bytes = UINT64_MAX) const;

 private:
  friend class DirectReadQueue;  // reads ahead through a duplicate of direct_fd_
  File file_;
  int direct_fd_ = -1;
  uint32_t align_ = 4096;
  IoMode mode_;
  uint64_t id_;
  void give_up_direct(std::string_view why);
  // Loads [start, start + len) (aligned) into the window; returns the bytes
  // loaded (fewer at the end of the file), or -1 if direct I/O was refused.
  int64_t load(ReadWindow& w, uint64_t start, uint64_t len, std::string_view what);
};

// Two read windows, one per file, for a source whose reads alternate between
// two files: the TP halves of one tensor (a torch_dist chunk per rank, an
// HDF5 shard per rank) read row block by row block for one output tensor.
// One shared window would be evicted at every switch and reload what it had
// just loaded ahead (a TP2·ETP2 export read its expert chunks 1.15x). Each
// file keeps the window it used last; a third file takes the one used less
// recently. Allocated on first use by a file read directly.
class ReadWindows {
 public:
  ReadWindows() = default;
  explicit ReadWindows(uint64_t bytes) : bytes_(bytes) {}
  ReadWindow& of(const InputFile& f);

 private:
  uint64_t bytes_ = 0;
  ReadWindow w_[2];
  uint64_t owner_[2] = {0, 0};  // InputFile::id() of the file each last served
  int last_ = 0;
};

// A file written front to back only (a .distcp file, a whole output file).
// In direct mode the bytes are gathered in an aligned buffer of `chunk_bytes`
// and written in whole chunks; finish() writes the padded tail, truncates to
// the exact length and fsyncs. Without finish() (an error), the file is left
// incomplete: it lives under a staging name that is never committed.
class AppendFile : public ByteOutput {
 public:
  AppendFile(const std::filesystem::path& path, IoMode mode, uint64_t chunk_bytes);
  ~AppendFile() override;
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;

  void append(const void* data, uint64_t n);
  // ByteOutput: `offset` must be where the file ends (size()).
  void write_at(const void* data, uint64_t n, uint64_t offset) override;
  const std::filesystem::path& output_path() const override { return file_.path(); }

  uint64_t size() const { return size_; }
  bool direct() const { return direct_fd_ >= 0; }
  // Writes what is buffered, sets the exact length, fsyncs and closes.
  void finish();

 private:
  File file_;
  int direct_fd_ = -1;
  uint32_t align_ = 4096;
  IoMode mode_;
  AlignedBuffer buf_;
  uint64_t filled_ = 0;   // bytes waiting in buf_
  uint64_t flushed_ = 0;  // bytes already in the file
  uint64_t size_ = 0;     // bytes appended
  bool finished_ = false;
  void flush_direct(uint64_t n);
  void give_up_direct(std::string_view why);
};

// A file whose regions are filled by several writers (export: each rank
// writes its tensors into files that rank 0 created at their final size).
class RegionFile {
 public:
  RegionFile(const std::filesystem::path& path, IoMode mode);  // an existing file, read-write
  ~RegionFile();
  RegionFile(RegionFile&& o) noexcept;
  RegionFile& operator=(RegionFile&&) = delete;
  RegionFile(const RegionFile&) = delete;

  File& file() { return file_; }
  bool direct() const { return direct_fd_ >= 0; }

 private:
  friend class RegionWriter;
  friend class StreamingRegionWriter;
  File file_;
  int direct_fd_ = -1;
  uint32_t align_ = 4096;
  IoMode mode_;
  void give_up_direct(std::string_view why);
};

// Writes one region [begin, end) of a RegionFile front to back. With direct
// I/O the whole aligned units inside the region are gathered in `buf` and
// written with O_DIRECT; the partial units at its two ends, which it may
// share with neighbouring regions written by other ranks, go through the page
// cache, so a buffered and a direct write never touch the same unit.
class RegionWriter {
 public:
  RegionWriter(RegionFile& f, uint64_t begin, uint64_t end, AlignedBuffer& buf);
  // `offset` must be where the previous write ended.
  void write_at(const void* data, uint64_t n, uint64_t offset);
  // Checks that the whole region came (what is buffered is already written).
  void finish() const;

 private:
  RegionFile& f_;
  AlignedBuffer& buf_;
  uint64_t begin_, end_, pos_;
  uint64_t a0_ = 0, a1_ = 0;  // the aligned middle written directly (empty: none)
  uint64_t filled_ = 0;       // bytes in buf_, for file bytes [pos_ - filled_, pos_)
  void flush();
};

// Writes a file's regions one after another, each front to back (an HDF5
// shard's datasets in the order they were allocated), like RegionWriter,
// but the direct writes run on a helper thread: the caller fills one of two
// buffers of `buffer_bytes` while the other is written, also across the end
// of a region, so that reading the next tensor overlaps writing the last one
// (a tensor of a few MiB is otherwise read, then written, then the next one
// read). The partial pages at each region's two ends are written through the
// page cache at once, by the caller: a page never receives both kinds of
// write. Without direct I/O (or with `buffer_bytes` 0) everything is written
// at once through the page cache.
class StreamingRegionWriter {
 public:
  StreamingRegionWriter(RegionFile& f, uint64_t buffer_bytes);
  ~StreamingRegionWriter();  // stops the helper; a write error not yet seen is lost: call finish()
  StreamingRegionWriter(const StreamingRegionWriter&) = delete;
  StreamingRegionWriter& operator=(const StreamingRegionWriter&) = delete;

  // The next region [begin, end); the previous one must have ended.
  void begin(uint64_t begin, uint64_t end);
  // The next n bytes of the current region.
  void write(const void* data, uint64_t n);
  // The region is complete (checked); its last direct block is queued.
  void end();
  // Waits for every queued write; rethrows a write error.
  void finish();

 private:
  RegionFile& f_;
  AlignedBuffer bufs_[2];
  int cur_ = 0;
  uint64_t filled_ = 0;  // bytes in bufs_[cur_], for file bytes [pos_ - filled_, pos_)
  uint64_t begin_ = 0, end_ = 0, pos_ = 0, a0_ = 0, a1_ = 0;
  bool in_region_ = false;
  // The helper: one job at a time.
  std::thread helper_;
  std::mutex m_;
  std::condition_variable cv_;
  bool has_job_ = false, stop_ = false;
  const unsigned char* job_ = nullptr;
  uint64_t job_n_ = 0, job_at_ = 0;
  std::exception_ptr error_;
  std::string refused_;  // the helper's direct write was refused (written buffered instead)
  void submit();
  void wait_idle();
  void run();
  void write_block(const unsigned char* p, uint64_t n, uint64_t at, std::string& refused);
};

// A whole-file copy with O_DIRECT on both sides, the storage floor that
// `megabridge bench` measures conversions against: large aligned requests,
// reads of block k+1 overlapping the write of block k (two buffers), the
// last, partial unit written padded and the file then truncated to its exact
// length, then fsync. Either side falls back to the page cache where the
// filesystem refuses O_DIRECT (reported in the result).
struct DirectCopyResult {
  uint64_t bytes = 0;
  bool direct_read = false, direct_write = false;
};
DirectCopyResult direct_copy_file(const std::filesystem::path& src,
                                  const std::filesystem::path& dst,
                                  uint64_t block_bytes = 64ull << 20);
// Copies every regular file under `src` to the same relative path under
// `dst` (created; directories fsynced) with direct_copy_file. Returns the
// bytes copied; `all_direct` says whether every file went direct both ways.
uint64_t direct_copy_tree(const std::filesystem::path& src, const std::filesystem::path& dst,
                          uint64_t block_bytes = 64ull << 20, bool* all_direct = nullptr);

}  // namespace mb
