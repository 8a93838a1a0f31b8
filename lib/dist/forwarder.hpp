// Point-to-point forwarding of blocks between ranks, for read-once mode: the
// rank that read a block from storage sends it to the ranks that need it.
// MPI forwards host buffers; NCCL (when built and every rank has its own GPU)
// forwards through device buffers on one communicator created from a unique id
// that MPI broadcasts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mb {

class MpiContext;

class Forwarder {
 public:
  virtual ~Forwarder() = default;
  // A batch of sends and receives that complete together (like an NCCL group):
  // buffers are host memory and must stay valid until run() returns.
  struct Op {
    bool send = false;
    int peer = 0;
    void* buffer = nullptr;
    uint64_t bytes = 0;
  };
  virtual void run(std::vector<Op>& ops) = 0;
  virtual std::string name() const = 0;
};

std::unique_ptr<Forwarder> make_mpi_forwarder(MpiContext& mpi);

#ifdef MEGABRIDGE_HAVE_NCCL
// Collective: every rank calls it. Each rank uses CUDA device (local rank mod
// device count); returns nullptr (on every rank) when ranks would share a
// device, which NCCL does not allow within one communicator, with `why` set.
std::unique_ptr<Forwarder> make_nccl_forwarder(MpiContext& mpi, uint64_t max_block_bytes, std::string* why);
#endif

}  // namespace mb
