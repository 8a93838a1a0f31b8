// Aggregate progress of a distributed conversion, shown by rank 0: tensors,
// bytes, throughput and ETA. Ranks send their counters to rank 0 with small
// point-to-point messages at most a few times per second, outside any
// collective, so a slow rank never blocks the others. On a terminal rank 0
// redraws one live line; otherwise it prints a plain line every few seconds.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mb {

class MpiContext;

class Progress {
 public:
  // `total_bytes` / `total_tensors`: the whole job's, over all ranks.
  Progress(MpiContext& mpi, std::string label, uint64_t total_bytes, uint64_t total_tensors);
  ~Progress();

  // Called by the work loop: bytes produced so far grow by `bytes`.
  void add_bytes(uint64_t bytes);
  void add_tensor();
  // Every rank calls this when its work is done. Rank 0 keeps showing the
  // others' progress until every rank has reported done.
  void finish();

 private:
  void tick(bool force);
  void poll();
  void show(bool final_line);
  void check(int rc, const char* what) const;  // fails the job on an MPI error

  MpiContext& mpi_;
  std::string label_;
  uint64_t total_bytes_, total_tensors_;
  uint64_t bytes_ = 0, tensors_ = 0;
  std::vector<uint64_t> rank_bytes_, rank_tensors_;
  std::vector<bool> rank_done_;
  bool tty_ = false, enabled_ = true, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_send_, last_show_;
  void* request_ = nullptr;  // the in-flight MPI_Request of a non-root rank
  uint64_t message_[3] = {0, 0, 0};
};

}  // namespace mb
