#include "dist/mpi_context.hpp"

#include <fcntl.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <thread>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mb {
std::string mpi_error_text(int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) return fmt::format("MPI error code {}", rc);
  return std::string(msg, static_cast<size_t>(len));
}

namespace {
void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw Error("MPI {} failed: {}", what, mpi_error_text(rc));
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

namespace {
// Appends `text` to `path` and fsyncs it; false on any failure (the caller
// is already failing: a second error must not hide the first).
bool append_synced(const std::filesystem::path& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  bool ok = true;
  while (done < text.size()) {
    const ssize_t r = ::write(fd, text.data() + done, text.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ok = false;
      break;
    }
    done += static_cast<size_t>(r);
  }
  ok = ::fsync(fd) == 0 && ok;
  return ::close(fd) == 0 && ok;
}
}  // namespace

void MpiContext::fail(std::string_view message, const std::filesystem::path& staging) const {
  log::error("{}", message);
  std::string kept;
  std::error_code ec;
  if (!staging.empty() && std::filesystem::is_directory(staging, ec)) {
    const std::filesystem::path dir = staging / kErrorLogDir;
    std::filesystem::create_directory(dir, ec);
    const std::filesystem::path file = dir / fmt::format("rank-{}.log", rank_);
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::string text =
        fmt::format("time {:%Y-%m-%d %H:%M:%S} UTC host {} pid {} rank {} of {}\nerror: {}\n",
                    fmt::gmtime(std::time(nullptr)), host, static_cast<long>(::getpid()), rank_,
                    size_, message);
    if (append_synced(file, text)) kept = file.string();
  }
  if (!kept.empty())
    log::error("rank {} stops the job; this error is also kept in {}", rank_, kept);
  else
    log::error("rank {} stops the job", rank_);
  std::fflush(stdout);
  std::fflush(stderr);
  // mpirun reads a rank's output asynchronously; MPI_Abort tears the job
  // down at once, and output still in the pipe is lost. Give it time.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  abort(1);
}

void MpiContext::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort should not return
}

}  // namespace mb
