#include "dist/hash_relay.hpp"

#include <mpi.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <thread>

#include "core/error.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace {
constexpr int kTag = 7;

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS)
    throw Error("MPI {} (checksum relay) failed: {}", what, mpi_error_text(rc));
}
MPI_Comm& comm_of(void* p) {
  return *static_cast<MPI_Comm*>(p);
}
}  // namespace

struct HashRelay::Pending {
  std::string message;  // id, then the state: must live until the send completes
  MPI_Request request = MPI_REQUEST_NULL;
};

HashRelay::HashRelay(MpiContext& mpi) : rank_(mpi.rank()), comm_(new MPI_Comm(MPI_COMM_NULL)) {
  check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_of(comm_)), "communicator dup");
  MPI_Comm_set_errhandler(comm_of(comm_), MPI_ERRORS_RETURN);
}

HashRelay::~HashRelay() {
  // Unwinding from an error: the job is about to be aborted, and freeing the
  // communicator (collective) or waiting could hang on a rank that is gone.
  if (std::uncaught_exceptions() > 0) return;
  for (Pending& p : sends_) MPI_Wait(&p.request, MPI_STATUS_IGNORE);
  MPI_Comm_free(&comm_of(comm_));
  delete static_cast<MPI_Comm*>(comm_);
}

void HashRelay::send(int peer, uint32_t id, const std::string& state) {
  // Forget the sends that have completed, so the list stays short.
  for (auto it = sends_.begin(); it != sends_.end();) {
    int done = 0;
    check(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "test");
    if (!done) break;
    it = sends_.erase(it);
  }
  Pending* p = &sends_.emplace_back();
  p->message.resize(sizeof id + state.size());
  std::memcpy(p->message.data(), &id, sizeof id);
  std::memcpy(p->message.data() + sizeof id, state.data(), state.size());
  check(MPI_Isend(p->message.data(), static_cast<int>(p->message.size()), MPI_BYTE, peer, kTag,
                  comm_of(comm_), &p->request),
        "send");
}

void HashRelay::drain(int peer) {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(peer, kTag, comm_of(comm_), &flag, &st), "probe");
    if (!flag) return;
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    std::string m(static_cast<size_t>(n), '\0');
    check(MPI_Recv(m.data(), n, MPI_BYTE, peer, kTag, comm_of(comm_), MPI_STATUS_IGNORE),
          "receive");
    MB_CHECK(m.size() >= sizeof(uint32_t), "a checksum relay message of {} bytes from rank {}",
             m.size(), peer);
    uint32_t id = 0;
    std::memcpy(&id, m.data(), sizeof id);
    mailbox_[{peer, id}] = m.substr(sizeof id);
  }
}

std::optional<std::string> HashRelay::receive(int peer, uint32_t id, double timeout_s) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    drain(peer);
    if (auto it = mailbox_.find({peer, id}); it != mailbox_.end()) {
      std::string s = std::move(it->second);
      mailbox_.erase(it);
      return s;
    }
    if (timeout_s >= 0 && std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace mb
