// NCCL forwarding of read-once blocks (forwarder.hpp): one communicator over
// all ranks, created from a unique id that MPI broadcasts; each batch goes
// host -> device bounce buffer -> ncclSend/ncclRecv in one group -> host.
// Built only when CUDA and NCCL are found (MEGABRIDGE_HAVE_NCCL).
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.hpp"
#include "core/log.hpp"
#include "dist/forwarder.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace {

void cuda_check(cudaError_t e, const char* call) {
  if (e != cudaSuccess)
    throw Error("{} failed: {}: {}", call, cudaGetErrorName(e), cudaGetErrorString(e));
}
#define MB_CUDA_CALL(call) cuda_check((call), #call)

void nccl_check(ncclResult_t r, const char* call, ncclComm_t comm) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = ncclGetLastError(comm);
  throw Error("{} failed: {}{}{}", call, ncclGetErrorString(r), last && *last ? ": " : "",
              last ? last : "");
}
#define MB_NCCL_CALL(call, comm) nccl_check((call), #call, (comm))

// The rank's index among the ranks of its node: MPI's shared-memory split
// (collective: every rank calls it), or Open MPI's variable when it is set.
int node_local_rank() {
  MPI_Comm node = MPI_COMM_NULL;
  int local = 0;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
      MPI_SUCCESS) {
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
  }
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {
    char* end = nullptr;
    const long r = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && r >= 0) local = static_cast<int>(r);
  }
  return local;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

class NcclForwarder final : public Forwarder {
 public:
  NcclForwarder(ncclComm_t comm, int device, uint64_t initial_bytes)
      : comm_(comm), device_(device), initial_(initial_bytes) {
    try {
      MB_CUDA_CALL(cudaSetDevice(device_));
      MB_CUDA_CALL(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    } catch (...) {
      (void)ncclCommDestroy(comm_);
      throw;
    }
  }

  ~NcclForwarder() override {
    (void)cudaSetDevice(device_);
    if (stream_) (void)cudaStreamSynchronize(stream_);
    if (comm_) {
      (void)ncclCommFinalize(comm_);
      (void)ncclCommDestroy(comm_);
    }
    if (arena_) (void)cudaFree(arena_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }

  NcclForwarder(const NcclForwarder&) = delete;
  NcclForwarder& operator=(const NcclForwarder&) = delete;

  void run(std::vector<Op>& ops) override {
    MB_CUDA_CALL(cudaSetDevice(device_));
    // One device region per op (they run concurrently inside the group).
    std::vector<uint64_t> offs(ops.size());
    uint64_t total = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      offs[i] = total;
      total += (ops[i].bytes + 255) / 256 * 256;
    }
    if (total > cap_) {
      if (arena_) MB_CUDA_CALL(cudaFree(arena_));
      arena_ = nullptr;
      cap_ = 0;
      const uint64_t cap = std::max(total, initial_);
      MB_CUDA_CALL(cudaMalloc(&arena_, cap));
      cap_ = cap;
    }
    auto* base = static_cast<unsigned char*>(arena_);
    for (size_t i = 0; i < ops.size(); ++i)
      if (ops[i].send && ops[i].bytes)
        MB_CUDA_CALL(cudaMemcpyAsync(base + offs[i], ops[i].buffer, ops[i].bytes,
                                     cudaMemcpyHostToDevice, stream_));
    MB_NCCL_CALL(ncclGroupStart(), comm_);
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      if (op.bytes == 0) continue;  // both sides know the size: skipped on both
      if (op.send)
        MB_NCCL_CALL(ncclSend(base + offs[i], op.bytes, ncclChar, op.peer, comm_, stream_), comm_);
      else
        MB_NCCL_CALL(ncclRecv(base + offs[i], op.bytes, ncclChar, op.peer, comm_, stream_), comm_);
    }
    MB_NCCL_CALL(ncclGroupEnd(), comm_);
    for (size_t i = 0; i < ops.size(); ++i)
      if (!ops[i].send && ops[i].bytes)
        MB_CUDA_CALL(cudaMemcpyAsync(ops[i].buffer, base + offs[i], ops[i].bytes,
                                     cudaMemcpyDeviceToHost, stream_));
    MB_CUDA_CALL(cudaStreamSynchronize(stream_));
    ncclResult_t async = ncclSuccess;
    MB_NCCL_CALL(ncclCommGetAsyncError(comm_, &async), comm_);
    MB_NCCL_CALL(async, comm_);
  }

  std::string name() const override { return "nccl"; }

 private:
  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  uint64_t initial_ = 0;
  cudaStream_t stream_ = nullptr;
  void* arena_ = nullptr;
  uint64_t cap_ = 0;
};

}  // namespace

std::unique_ptr<Forwarder> make_nccl_forwarder(MpiContext& mpi, uint64_t max_block_bytes,
                                               std::string* why) {
  auto refuse = [&](const std::string& reason) -> std::unique_ptr<Forwarder> {
    if (why) *why = reason;
    return nullptr;
  };
  // 1. Each rank picks a device: node-local rank modulo the device count.
  const int local = node_local_rank();
  std::string mine;
  int device = -1;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    mine = std::string("!") + (e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    (void)cudaGetLastError();
  } else {
    device = local % count;
    char bus[64] = {};
    const cudaError_t se = cudaSetDevice(device);
    const cudaError_t be = se == cudaSuccess ? cudaDeviceGetPCIBusId(bus, sizeof bus, device) : se;
    if (be != cudaSuccess) {
      mine = std::string("!") + cudaGetErrorString(be);
      (void)cudaGetLastError();
    } else {
      mine = host_name() + "/" + bus;
    }
  }
  // 2. Every rank sees every rank's device, so all decide alike.
  const std::vector<std::string> all = mpi.all_gather(mine);
  std::map<std::string, int> owner;
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    if (!all[r].empty() && all[r][0] == '!')
      return refuse(fmt::format("rank {} has no usable CUDA device ({})", r, all[r].substr(1)));
    const auto [it, fresh] = owner.emplace(all[r], r);
    if (!fresh)
      return refuse(fmt::format("ranks {} and {} share GPU {} (NCCL needs one GPU per rank)",
                                it->second, r, all[r]));
  }
  // 3. Rank 0 creates the unique id; MPI broadcasts it (or rank 0's failure).
  std::string id_bytes;
  if (mpi.is_root()) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    id_bytes = r == ncclSuccess ? "+" + std::string(id.internal, sizeof id.internal)
                                : "!" + std::string(ncclGetErrorString(r));
  }
  mpi.broadcast(id_bytes);
  if (id_bytes.empty() || id_bytes[0] != '+')
    return refuse("ncclGetUniqueId failed on rank 0: " +
                  (id_bytes.empty() ? "?" : id_bytes.substr(1)));
  ncclUniqueId id;
  MB_CHECK(id_bytes.size() == 1 + sizeof id.internal, "internal: NCCL unique id of {} bytes",
           id_bytes.size() - 1);
  std::memcpy(id.internal, id_bytes.data() + 1, sizeof id.internal);
  // 4. The communicator (collective).
  MB_CUDA_CALL(cudaSetDevice(device));
  ncclComm_t comm = nullptr;
  MB_NCCL_CALL(ncclCommInitRank(&comm, mpi.size(), id, mpi.rank()), comm);
  log::debug("NCCL forwarder: rank {} on GPU {} ({})", mpi.rank(), device, mine);
  return std::make_unique<NcclForwarder>(comm, device, max_block_bytes);
}

}  // namespace mb
