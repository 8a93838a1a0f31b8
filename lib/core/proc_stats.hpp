// Per-process resource counters from /proc, for the benchmark: I/O bytes
// (/proc/self/io) and peak resident memory (VmHWM), which can be reset
// between phases through /proc/self/clear_refs.
#pragma once

#include <cstdint>

namespace mb {

struct IoCounters {
  uint64_t rchar = 0;        // bytes passed to read-like syscalls (page cache included)
  uint64_t wchar = 0;        // bytes passed to write-like syscalls
  uint64_t read_bytes = 0;   // bytes fetched from the storage layer
  uint64_t write_bytes = 0;  // bytes sent to the storage layer
};

// The whole process (threads that have exited included) ...
IoCounters read_io_counters();
// ... or the calling thread only (/proc/thread-self/io).
IoCounters read_thread_io_counters();
IoCounters operator-(const IoCounters& a, const IoCounters& b);

// Peak resident set size so far (VmHWM), in bytes.
uint64_t peak_rss_now();
// Resets VmHWM to the current RSS; returns false where the kernel refuses.
bool reset_peak_rss();

}  // namespace mb
