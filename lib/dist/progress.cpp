#include "dist/progress.hpp"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "core/log.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace {
constexpr int kTag = 4242;
using Clock = std::chrono::steady_clock;

std::string gb(double b) { return fmt::format("{:.2f} GB", b / 1e9); }

}  // namespace

// MPI_ERRORS_RETURN is set (mpi_context.cpp): a failed call returns a code.
// A progress message that cannot be sent or received means MPI itself is
// broken, and other ranks may wait on this one forever: fail the job.
void Progress::check(int rc, const char* what) const {
  if (rc != MPI_SUCCESS)
    mpi_.fail(fmt::format("MPI {} failed while reporting {} progress: {}", what, label_,
                          mpi_error_text(rc)));
}

Progress::Progress(MpiContext& mpi, std::string label, uint64_t total_bytes, uint64_t total_tensors)
    : mpi_(mpi), label_(std::move(label)), total_bytes_(total_bytes), total_tensors_(total_tensors) {
  enabled_ = log::level() <= log::Level::Info;
  tty_ = mpi.is_root() && isatty(STDERR_FILENO);
  start_ = last_send_ = last_show_ = Clock::now();
  if (mpi.is_root()) {
    rank_bytes_.assign(static_cast<size_t>(mpi.size()), 0);
    rank_tensors_.assign(static_cast<size_t>(mpi.size()), 0);
    rank_done_.assign(static_cast<size_t>(mpi.size()), false);
  } else {
    request_ = new MPI_Request(MPI_REQUEST_NULL);
  }
}

Progress::~Progress() {
  if (request_) {
    auto* r = static_cast<MPI_Request*>(request_);
    if (*r != MPI_REQUEST_NULL) check(MPI_Wait(r, MPI_STATUS_IGNORE), "wait");
    delete r;
  }
}

void Progress::add_bytes(uint64_t bytes) {
  bytes_ += bytes;
  tick(false);
}

void Progress::add_tensor() {
  ++tensors_;
  tick(false);
}

void Progress::tick(bool force) {
  const auto now = Clock::now();
  if (mpi_.is_root()) {
    rank_bytes_[0] = bytes_;
    rank_tensors_[0] = tensors_;
    poll();
    const auto every = tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(10000);
    if (force || now - last_show_ >= every) {
      last_show_ = now;
      show(false);
    }
    return;
  }
  // Non-root: at most a few messages per second, and never two in flight.
  if (!force && now - last_send_ < std::chrono::milliseconds(200)) return;
  auto* r = static_cast<MPI_Request*>(request_);
  if (*r != MPI_REQUEST_NULL) {
    int done = 0;
    check(MPI_Test(r, &done, MPI_STATUS_IGNORE), "test");
    if (!done) {
      if (!force) return;
      check(MPI_Wait(r, MPI_STATUS_IGNORE), "wait");
    }
  }
  last_send_ = now;
  message_[0] = bytes_;
  message_[1] = tensors_;
  message_[2] = finished_ ? 1 : 0;
  check(MPI_Isend(message_, 3, MPI_UINT64_T, 0, kTag, MPI_COMM_WORLD, r), "isend");
}

void Progress::poll() {
  int flag = 1;
  while (flag) {
    MPI_Status st;
    check(MPI_Iprobe(MPI_ANY_SOURCE, kTag, MPI_COMM_WORLD, &flag, &st), "iprobe");
    if (!flag) break;
    uint64_t m[3];
    check(MPI_Recv(m, 3, MPI_UINT64_T, st.MPI_SOURCE, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
          "recv");
    const auto src = static_cast<size_t>(st.MPI_SOURCE);
    if (src >= rank_done_.size()) continue;  // not one of ours: MPI gave a bad rank
    rank_bytes_[src] = m[0];
    rank_tensors_[src] = m[1];
    if (m[2]) rank_done_[src] = true;
  }
}

void Progress::show(bool final_line) {
  if (!enabled_) return;
  uint64_t b = 0, t = 0;
  for (size_t r = 0; r < rank_bytes_.size(); ++r) {
    b += rank_bytes_[r];
    t += rank_tensors_[r];
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(b) / secs : 0;
  const double left = total_bytes_ > b ? static_cast<double>(total_bytes_ - b) : 0;
  const std::string eta = rate > 0 && !final_line ? fmt::format(", ETA {:.0f} s", left / rate) : "";
  const double pct = total_bytes_ ? 100.0 * static_cast<double>(b) / static_cast<double>(total_bytes_) : 100;
  const std::string line =
      fmt::format("{}: {:5.1f}% {}/{} tensors, {} of {}, {:.2f} GB/s{}", label_, pct, t,
                  total_tensors_, gb(static_cast<double>(b)), gb(static_cast<double>(total_bytes_)),
                  rate / 1e9, eta);
  if (tty_) {
    std::fprintf(stderr, "\r[rank 0] %s%s\x1b[K%s", log::context().c_str(), line.c_str(), final_line ? "\n" : "");
    std::fflush(stderr);
  } else {
    log::info("{}", line);
  }
}

void Progress::finish() {
  finished_ = true;
  if (!mpi_.is_root()) {
    tick(true);
    auto* r = static_cast<MPI_Request*>(request_);
    check(MPI_Wait(r, MPI_STATUS_IGNORE), "wait");
    return;
  }
  rank_done_[0] = true;
  rank_bytes_[0] = bytes_;
  rank_tensors_[0] = tensors_;
  // Keep reporting until every rank is done; a failed rank aborts the job.
  for (;;) {
    poll();
    bool all = true;
    for (bool d : rank_done_) all = all && d;
    if (all) break;
    const auto now = Clock::now();
    if (now - last_show_ >= (tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(10000))) {
      last_show_ = now;
      show(false);
    }
    usleep(20000);
  }
  if (tty_) show(true);
}

}  // namespace mb
