#include "dist/mpi_context.hpp"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mb {
namespace {
void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error("MPI {} failed: {}", what, std::string(msg, static_cast<size_t>(len)));
  }
}
constexpr uint64_t kChunk = 1u << 30;  // MPI counts are ints
}  // namespace

MpiContext::MpiContext(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    check(MPI_Init(argc, argv), "init");
    owns_init_ = true;
  }
  // Errors come back as codes, which we turn into exceptions with context.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  log::set_rank(rank_, size_);
}

MpiContext::~MpiContext() {
  if (owns_init_) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
}

void MpiContext::barrier() const { check(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

void MpiContext::broadcast(std::string& data, int root) const {
  uint64_t n = data.size();
  check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD), "broadcast (size)");
  if (rank_ != root) data.assign(n, '\0');
  for (uint64_t off = 0; off < n; off += kChunk) {
    const int count = static_cast<int>(std::min(kChunk, n - off));
    check(MPI_Bcast(data.data() + off, count, MPI_BYTE, root, MPI_COMM_WORLD), "broadcast");
  }
}

std::vector<std::string> MpiContext::gather(const std::string& mine, int root) const {
  // Sizes first, then each rank's bytes point to point, which avoids the int
  // displacement limit of MPI_Gatherv for large payloads.
  uint64_t n = mine.size();
  std::vector<uint64_t> sizes(static_cast<size_t>(size_));
  check(MPI_Gather(&n, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, root, MPI_COMM_WORLD),
        "gather (sizes)");
  std::vector<std::string> out;
  if (rank_ == root) {
    out.resize(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      auto& s = out[static_cast<size_t>(r)];
      if (r == root) {
        s = mine;
        continue;
      }
      s.assign(sizes[static_cast<size_t>(r)], '\0');
      for (uint64_t off = 0; off < s.size(); off += kChunk) {
        const int count = static_cast<int>(std::min(kChunk, s.size() - off));
        check(MPI_Recv(s.data() + off, count, MPI_BYTE, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
              "gather (receive)");
      }
    }
  } else {
    for (uint64_t off = 0; off < mine.size(); off += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, mine.size() - off));
      check(MPI_Send(mine.data() + off, count, MPI_BYTE, root, 7, MPI_COMM_WORLD), "gather (send)");
    }
  }
  return out;
}

std::vector<std::string> MpiContext::all_gather(const std::string& mine) const {
  std::vector<std::string> all = gather(mine, 0);
  std::string packed;
  if (rank_ == 0) {
    for (const auto& s : all) {
      uint64_t n = s.size();
      packed.append(reinterpret_cast<const char*>(&n), 8);
      packed += s;
    }
  }
  broadcast(packed, 0);
  std::vector<std::string> out;
  for (size_t pos = 0; pos < packed.size();) {
    uint64_t n;
    std::copy_n(packed.data() + pos, 8, reinterpret_cast<char*>(&n));
    out.emplace_back(packed.substr(pos + 8, n));
    pos += 8 + n;
  }
  return out;
}

uint64_t MpiContext::all_reduce_sum(uint64_t v) const {
  uint64_t out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD), "allreduce");
  return out;
}

uint64_t MpiContext::all_reduce_max(uint64_t v) const {
  uint64_t out = 0;
  check(MPI_Allreduce(&v, &out, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "allreduce");
  return out;
}

void MpiContext::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort should not return
}

}  // namespace mb
