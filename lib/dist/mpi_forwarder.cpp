#include <mpi.h>

#include <algorithm>
#include <climits>

#include "core/error.hpp"
#include "dist/forwarder.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace {
constexpr int kTag = 5151;
constexpr uint64_t kChunk = 1u << 30;  // MPI counts are ints

class MpiForwarder : public Forwarder {
 public:
  void run(std::vector<Op>& ops) override {
    std::vector<MPI_Request> reqs;
    for (Op& op : ops) {
      auto* p = static_cast<char*>(op.buffer);
      for (uint64_t off = 0; off < op.bytes || (op.bytes == 0 && off == 0); off += kChunk) {
        const int n = static_cast<int>(std::min(kChunk, op.bytes - off));
        MPI_Request r;
        const int rc = op.send ? MPI_Isend(p + off, n, MPI_BYTE, op.peer, kTag, MPI_COMM_WORLD, &r)
                               : MPI_Irecv(p + off, n, MPI_BYTE, op.peer, kTag, MPI_COMM_WORLD, &r);
        MB_CHECK(rc == MPI_SUCCESS, "MPI {} of {} bytes {} rank {} failed", op.send ? "send" : "receive",
                 op.bytes, op.send ? "to" : "from", op.peer);
        reqs.push_back(r);
        if (op.bytes == 0) break;
      }
    }
    if (!reqs.empty()) {
      const int rc = MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
      MB_CHECK(rc == MPI_SUCCESS, "MPI forwarding of {} blocks failed", ops.size());
    }
  }
  std::string name() const override { return "mpi"; }
};
}  // namespace

std::unique_ptr<Forwarder> make_mpi_forwarder(MpiContext&) { return std::make_unique<MpiForwarder>(); }

}  // namespace mb
