// The MPI job: initialisation, the few collectives the pipelines use, and the
// rule that one failing rank takes the whole job down promptly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace mb {

// Where MpiContext::fail keeps each rank's fatal error inside a staging
// directory; StagedOutput::commit leaves it out of a finished output.
inline constexpr const char* kErrorLogDir = ".megabridge-errors";

// The text MPI gives for an error code (or the code itself).
std::string mpi_error_text(int rc);

class MpiContext {
 public:
  // Initialises MPI (if not already) and sets the logger's rank.
  MpiContext(int* argc, char*** argv);
  ~MpiContext();
  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  void barrier() const;
  // Broadcasts a byte string from `root` (size first, then chunks under 2 GiB).
  void broadcast(std::string& data, int root = 0) const;
  // Gathers one string from every rank onto `root` (others get an empty vector).
  std::vector<std::string> gather(const std::string& mine, int root = 0) const;
  // Every rank gets every rank's string.
  std::vector<std::string> all_gather(const std::string& mine) const;
  uint64_t all_reduce_sum(uint64_t v) const;
  uint64_t all_reduce_max(uint64_t v) const;

  // Ends every rank of the job now, with `code`. Used when a rank fails: the
  // others may be blocked in a collective and would otherwise hang.
  [[noreturn]] void abort(int code) const;

  // A rank's fatal error, made impossible to lose, then abort(1): the error
  // line goes to stderr (flushed) and into `<staging>/.megabridge-errors/
  // rank-N.log` (fsynced) when a staging directory is given and exists; a
  // last line names that file; then a pause lets mpirun forward the output
  // before MPI_Abort kills the job (Open MPI drops what a process wrote just
  // before it aborted: issue 11, finding 12).
  [[noreturn]] void fail(std::string_view message, const std::filesystem::path& staging = {}) const;

 private:
  int rank_ = 0;
  int size_ = 1;
  bool owns_init_ = false;
};

}  // namespace mb
