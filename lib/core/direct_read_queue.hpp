// Direct reads issued ahead of need. The byte ranges that a conversion's next
// tensors will read (RowSource::prefetch, asked by ReadAhead in plan order)
// are read with O_DIRECT on a helper thread into a few aligned slots while
// the current tensor is converted and written; the source's reads then copy
// them out of the slots.
//
// Why: without it a rank has one direct read in flight at a time, and the
// next read waits for the conversion and the hand-over to the writer. A
// 1-rank import's direct reads were mostly 1 MiB (an expert tensor's block)
// issued one after another: the disk kept 1.1-1.3 requests in flight and was
// idle a fifth of the time, where the floor's copy kept about ten
// (docs/performance.md, eleventh round). Contiguous ranges asked one after
// the other are merged into one request of up to a slot, so the helper's
// requests are also larger than the reads they serve.
//
// Only what the plan says will be read is loaded, nothing by guess, so the
// storage reads stay those of the plan. Each request carries the number of
// the job (tensor) it was asked for (set_job); a slot is freed when its last
// byte has been taken, or when the caller says that every job before a given
// one is done (release_before): a job's reads need not come in the order its
// ranges were asked for (segments side by side are read block by block).
// Anything the queue does not hold (a range never asked for, a request the
// helper has not begun or could not read) is read by the caller as before,
// which also reports any error with its context: the helper never throws.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "core/direct_io.hpp"

namespace mb {

// The slots a source's queue gets, each of direct_io_chunk_bytes(buffer):
// taken out of the configured buffer like the other direct I/O buffers
// (engine_buffer_bytes). Four hold the 16 MiB that ReadAhead asks for ahead
// (kReadAheadBytes) with room for the job being read.
constexpr int kDirectReadSlots = 4;

class DirectReadQueue {
 public:
  // `slots` buffers of `slot_bytes` each, allocated when the first range is
  // asked for. With fewer than two slots (or no thread to be had) nothing is
  // ever queued.
  DirectReadQueue(uint64_t slot_bytes, int slots);
  ~DirectReadQueue();  // waits for the read in flight, then stops the helper
  DirectReadQueue(const DirectReadQueue&) = delete;
  DirectReadQueue& operator=(const DirectReadQueue&) = delete;

  // The bytes [begin, end) of `f` will be read after everything asked for
  // before. Queued only where `f` is read directly; returns the bytes queued
  // (0: not queued, the caller reads them as usual).
  uint64_t want(const InputFile& f, uint64_t begin, uint64_t end);
  // What want() asks for from now on belongs to job `job` (numbers increase).
  void set_job(uint64_t job) { job_ = job; }
  // Every job numbered below `job` has done its reads: their requests go.
  void release_before(uint64_t job);
  // Copies the longest prefix of [offset, offset + n) of `f` that the queue
  // holds or is loading (waiting for the load) into dst; returns its length.
  // A prefix shorter than n means: read the rest as usual. Called on the
  // thread that calls want() (the source's).
  uint64_t take(const InputFile& f, void* dst, uint64_t n, uint64_t offset);

  // What the helper read from storage so far (tests, benchmarks).
  uint64_t bytes_loaded() const;

 private:
  enum class State { Queued, Loading, Ready, Failed };
  struct Request {
    uint64_t seq;         // unique: how the helper finds its request again
    uint64_t file;        // InputFile::id()
    int fd;               // our duplicate of the file's direct descriptor
    uint64_t start, len;  // aligned; the bytes loaded are [start, start + got)
    State state = State::Queued;
    int slot = -1;
    uint64_t got = 0;
    uint64_t wanted = 0;  // bytes of it that were asked for (its alignment padding is not)
    uint64_t taken = 0;   // bytes copied out so far
    uint64_t job = 0;     // the last job whose ranges it holds
  };

  uint64_t slot_bytes_;
  int slot_count_;
  std::vector<AlignedBuffer> slots_;
  std::vector<bool> slot_free_;
  std::map<uint64_t, int> fds_;  // InputFile::id() -> duplicate descriptor
  std::list<Request> q_;         // plan order; the main thread alone erases
  uint64_t next_seq_ = 1;
  uint64_t job_ = 0;
  uint64_t loaded_ = 0;
  bool started_ = false, stop_ = false, no_thread_ = false;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::thread helper_;

  void run();
  // Erases `it` (the lock held): frees its slot, unless the helper is still
  // loading into it (the helper frees it when done).
  std::list<Request>::iterator drop(std::list<Request>::iterator it);
  bool start_helper();
};

// A source's direct read of [offset, offset + n) of `f` into dst: what
// `queue` holds of it (take), the rest through `window` (InputFile::pread_exact).
void pread_queued(DirectReadQueue& queue, InputFile& f, void* dst, uint64_t n, uint64_t offset,
                  ReadWindow& window, std::string_view what, uint64_t ahead_until = UINT64_MAX);
// The same for `rows` whole rows of `row_bytes`, contiguous in the file from
// `offset`, to dst rows `dst_stride` apart: the rows the queue holds, then the
// rest (InputFile::pread_rows).
void pread_rows_queued(DirectReadQueue& queue, InputFile& f, void* dst, uint64_t dst_stride,
                       uint64_t rows, uint64_t row_bytes, uint64_t offset, ReadWindow& window,
                       std::string_view what);

}  // namespace mb
