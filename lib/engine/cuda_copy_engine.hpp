// The device copy engine: executes a CopyJob like CopyEngine (copy_engine.hpp)
// and produces exactly the same bytes, checksum, not-invertible count and
// report_block() calls, doing the re-layout and the element op/cast on a CUDA
// device. Plain C++ header (no CUDA types); built only with
// MEGABRIDGE_HAVE_CUDA. Design in docs/cuda.md.
//
// Per block of destination rows: the source rectangles are read from the
// RowSource into a packed, page-locked host buffer (one rectangle after the
// other, source-major), copied to the device, placed by the segment gather
// kernel, converted by the op/cast kernel, copied back and handed to the
// sink. Two slots (streams, buffers) alternate, so the host reads block k+1
// while the device works on block k. Host staging stays within buffer_bytes
// (both slots together); device memory is about twice that.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/copy_engine.hpp"

namespace mb {

// Whether a CUDA device can be used: a driver, at least one device, and the
// runtime answering. Never aborts; says why not in `why`.
bool cuda_device_available(std::string* why);

class CudaCopyEngine : public CopyEngine {
 public:
  // `device` < 0 picks the rank's local index (OMPI_COMM_WORLD_LOCAL_RANK,
  // MPI_LOCALRANKID, SLURM_LOCALID; else 0) modulo the device count, so the
  // ranks of a node spread over its GPUs (several ranks may share one).
  explicit CudaCopyEngine(uint64_t buffer_bytes, int device = -1);
  ~CudaCopyEngine() override;
  CudaCopyEngine(const CudaCopyEngine&) = delete;
  CudaCopyEngine& operator=(const CudaCopyEngine&) = delete;

  CopyResult run(const CopyJob& job, RowSource& src, RowSink& sink) override;
  std::string device() const override;  // "cuda:<n>"

  // Largest device allocation held so far (both slots).
  uint64_t peak_device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mb
