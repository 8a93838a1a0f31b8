// A megabridge Megatron output opened for reading: its manifest, the HF
// checkpoint it came from (as a catalogue of names, dtypes and shapes), and
// the exact tensors every shard file must hold, re-derived from the plan.
// Export, verify and reshard all start here.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/verify_chains.hpp"
#include "core/direct_io.hpp"
#include "core/direct_read_queue.hpp"
#include "core/hash.hpp"
#include "core/path_safety.hpp"
#include "engine/copy_engine.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "layout/import_plan.hpp"

namespace mb {

class MpiContext;
class HashRelay;

struct MegatronCheckpoint {
  std::filesystem::path dir;
  std::string format;                // "hdf5" or "torch_dist"
  bool foreign = false;              // torch_dist written by another tool (no megabridge manifest)
  std::filesystem::path iter_dir;    // torch_dist: the iteration directory holding .metadata
  DcpMetadata dcp;                   // torch_dist: the parsed .metadata
  nlohmann::json manifest;           // megabridge's, or one synthesised for a foreign checkpoint
  ModelConfig model;
  ParallelLayout layout;
  std::optional<DType> cast;
  ExpertLayouts experts;           // of the HF source
  uint64_t mtp_not_converted = 0;  // MTP layers the source declared, not held (manifest model.mtp)
  HfCatalog source;                // names, dtypes, shapes, file names (no offsets)
  std::vector<ShardPlan> shards;   // what each shard file holds; segments index `source`
};

// How to read a torch_dist checkpoint that megabridge did not write: its
// model comes from a HF config.json, its HF expert layouts are chosen.
struct ForeignCheckpointOptions {
  std::filesystem::path hf_config;
  ExpertLayouts experts;
};

// Reads the manifest (or, for a torch_dist checkpoint without one, its
// .metadata and `foreign`) and re-derives every shard's tensors. Throws if the
// manifest is malformed or inconsistent with the model it describes.
MegatronCheckpoint open_megatron_checkpoint(const std::filesystem::path& dir,
                                            const ForeignCheckpointOptions* foreign = nullptr);

// Every element `ck` stores, once: the bytes of its canonical local tensors
// (a tensor replicated over ranks counted in one shard). What an export
// reads: whole rows of the canonical copies.
uint64_t canonical_bytes(const MegatronCheckpoint& ck);

// The paths a command reading `ck` depends on (its directory, its manifest's
// data files, its HF side directory), for check_output_apart.
std::vector<NamedPath> checkpoint_files(const MegatronCheckpoint& ck);

// Everything a command reading `ck` may read or list: every file and
// directory under its directory (megabridge's output lock aside), for the
// step stamp of `megabridge run` (docs/pipelines.md, "--resume").
std::vector<std::filesystem::path> checkpoint_sources(const MegatronCheckpoint& ck);

// True for a directory holding a torch_dist checkpoint (a megabridge one, or
// any with latest_checkpointed_iteration.txt / iter_*/.metadata / .metadata).
bool is_torch_dist_dir(const std::filesystem::path& dir);

// A catalogue with the given tensors and no byte offsets, for planning only.
HfCatalog virtual_catalog(const nlohmann::json& source_tensors, const std::vector<std::string>& files);

// Checks shard files before anything is read or written: each must exist,
// match its manifest checksum (unless !checksums), carry the coordinates of
// its place in the layout, and hold exactly the planned datasets with their
// shapes and dtypes. Work is split over the ranks; every rank gets the same
// verdict (an empty string, or the first problem found).
std::string validate_shard_files(const MegatronCheckpoint& ck, bool checksums, MpiContext& mpi);

// The checks of validate_shard_files for one shard (index into ck.shards):
// every problem found, not only the first.
std::vector<std::string> check_shard_file(const MegatronCheckpoint& ck, size_t shard, bool checksums);

// The checks for a torch_dist checkpoint: manifest checksums of the .distcp
// files (megabridge's), chunk tiling, and every key the model needs present
// with its global shape. With several ranks, rank r checks the files i with
// i % ranks == r (reading them is the expensive part) and rank 0 the rest.
std::vector<std::string> check_torch_dist(const MegatronCheckpoint& ck, bool checksums, int rank = 0,
                                          int ranks = 1);

// The xxh3 of every file the manifest lists, against the manifest: rank r
// checks the files i with i % ranks == r. Needs no MPI, so it can run on a
// thread beside the conversion (export).
std::vector<std::string> checksum_problems(const MegatronCheckpoint& ck, int rank, int ranks);

// Reads rectangles of the checkpoint's local tensors (HDF5 datasets, or
// torch_dist chunks). Source ids index `refs`. `io` applies to both (HDF5
// datasets stored contiguous are read without libhdf5; see Hdf5ShardSource).
struct LocalTensorRef;
// How a source that is also checksummed by a separate pass (torch_dist, HDF5
// of older manifests) should be read. The checksum pass
// reads every file through the page cache; with `auto`, the conversion then
// reads through the page cache too, sharing those reads (direct reads would
// fetch every byte from storage a second time). An explicit `direct` is kept.
IoMode source_io_mode(IoMode requested, bool checksums_verified);
// Whether a conversion can check the checksums of `ck` while it reads (an
// HDF5 checkpoint whose manifest records per-tensor checksums and the
// xxh3-64-hdf5-regions file scheme): then no separate checksum pass reads the
// files (see Hdf5ShardSource). Else the files are hashed whole, apart.
bool checksums_streamable(const MegatronCheckpoint& ck);
// How the ranks share the streamed checks of a source: every rank's reads,
// from which each source plans the same chains on every rank (which rank
// hashes which rows of an HDF5 tensor, which bytes of a torch_dist chunk:
// verify_chains.hpp), and the relay that hands the hash states on. Without
// them, each rank checks every tensor or chunk it reads, whole.
struct StreamedChecks {
  HashRelay* relay = nullptr;
  const std::vector<SourceReads>* reads = nullptr;  // src indexing the source's refs
};
// `verify_streamed`: the source checks checksums as it reads
// (checksums_streamable must hold); see source_checksum_problem.
std::unique_ptr<RowSource> open_local_source(const MegatronCheckpoint& ck,
                                             std::vector<LocalTensorRef> refs, const IoConfig& io,
                                             bool verify_streamed = false,
                                             const StreamedChecks& shared = {});
// The direct I/O buffers that source takes out of the configured buffer
// (engine_buffer_bytes) under `io`: its two read windows (ReadWindows) and
// its read-ahead slots (DirectReadQueue); none when buffered.
int local_source_io_buffers(IoMode io);
// After the last read from a source opened with verify_streamed: the first
// corruption found, or "". Collective in nothing; rank r also checks the
// metadata of the files i with i % ranks == r.
std::string source_checksum_problem(RowSource& source, int rank, int ranks);

// Reads rectangles of shard datasets. Source ids index `refs`.
struct LocalTensorRef {
  uint32_t shard = 0;   // index into MegatronCheckpoint::shards
  uint32_t tensor = 0;  // index into that shard's tensors
};

//
// With `verify`, the checksums are checked from the bytes as they are read.
// A tensor's checksum is one XXH3 stream over its rows; the rows are cut into
// a chain of links (StreamedChecks), each hashed by a rank that reads them for
// the conversion: a link is hashed as its rows arrive in order (a column
// window of them is read as whole rows, through the page cache where the
// window alone would be, so no storage read is added), its hash state is
// handed to the next link's rank, and the last link's rank compares the
// digest with the manifest's per-tensor xxh3. Rows of a link that a read
// skips (this rank reads them later) are read ahead and hashed first (fill).
// A link whose predecessor's state had not arrived when its rows did is
// finished in finish_verification(), in tensor order on every rank, so the
// waits for states cannot deadlock; the rows it still needs were read through
// the page cache, where that pass finds them.
// finish_verification() then reads each file's metadata regions, which with
// the per-tensor checksums make up the file checksum (scheme
// xxh3-64-hdf5-regions). Datasets the conversion never reads (replicas of a
// tensor on other ranks) are not read for it: what is converted is checked,
// what is not cannot reach the output; `verify` checks everything.
class Hdf5ShardSource : public RowSource {
 public:
  // The datasets' bytes are read without libhdf5 where they lie contiguous
  // (our shards): with `io` (direct where it says so, through one read
  // window of io.chunk_bytes), as the safetensors source reads.
  Hdf5ShardSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                  const IoConfig& io = {IoMode::Buffered, 0}, bool verify = false,
                  const StreamedChecks& shared = {});
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }
  // Under direct I/O: whole rows are loaded ahead (queue_); narrow column
  // windows, whose whole rows are read through the page cache (read(),
  // InputFile::pread_rows), are asked of it (InputFile::will_read_rows).
  uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                    uint64_t max_bytes) override;
  void prefetch_job(uint64_t job) override { queue_.set_job(job); }
  void jobs_done_before(uint64_t job) override { queue_.release_before(job); }
  uint64_t bytes_loaded_ahead() const override { return queue_.bytes_loaded(); }
  // The first problem found, or "" (see above).
  std::string finish_verification(int rank, int ranks);

 private:
  const Hdf5ShardReader& reader(uint32_t shard);
  InputFile& input(uint32_t shard);
  // Reads rows x cols at (row0, col0) of tensor `id`, as read() does;
  // `page_cache`: through libhdf5 (the page cache) even where the bytes
  // could be read directly.
  void read_bytes(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                  void* dst, uint64_t dst_stride, bool page_cache);
  struct Streamed {
    uint64_t next_row = 0;  // the hash covers rows [0, next_row), hashed here or handed on
    Hasher hash;
    size_t link = 0;       // this rank's next link in the tensor's chain (chain size: none)
    bool broken = false;   // rows of a link came out of order: finish_verification reads them
    bool touched = false;  // read by this rank at all
    // The hull of the rows fill() read ahead, through the page cache: the
    // conversion's own reads of them later go there too, not to storage again.
    uint64_t filled_from = UINT64_MAX, filled_to = 0;
    bool filled(uint64_t row0, uint64_t rows) const {
      return row0 < filled_to && row0 + rows > filled_from;
    }
  };
  const std::vector<ChainLink>& links(uint32_t id);
  size_t next_own_link(uint32_t id, size_t from);
  // Whether a read of rows [row0, row0 + rows) continues (or starts, taking
  // up the previous link's state) the rows this rank hashes. Rows of this
  // rank's links that the read skips are read and hashed first (fill); the
  // tensor is marked broken if the previous link's state is late.
  bool prepare_hash(uint32_t id, uint64_t row0, uint64_t rows);
  // Reads rows [row0, row1) whole, through the page cache, and hashes them
  // (advance).
  void fill(uint32_t id, uint64_t row0, uint64_t row1);
  // Whether any of those rows is still to be hashed by this rank.
  bool left_to_finish(uint32_t id, uint64_t row0, uint64_t rows);
  // Hashes what rows [row0, row0 + rows) (whole, `stride` apart at p) add to
  // this rank's links of the chain; hands on or checks each link it ends.
  void advance(uint32_t id, uint64_t row0, uint64_t rows, const unsigned char* p, uint64_t stride);
  // Takes up the hash where the previous link's rank left it; false if its
  // state did not come within `timeout_s` (negative: waits).
  bool start_link(uint32_t id, double timeout_s);
  void end_link(uint32_t id);
  void finish_links(uint32_t id);  // reads and hashes the rest of this rank's links
  void check_streamed(uint32_t id, uint64_t digest);
  const MegatronCheckpoint& ck_;
  std::vector<LocalTensorRef> refs_;
  std::map<uint32_t, std::unique_ptr<Hdf5ShardReader>> open_;
  std::map<uint32_t, InputFile> inputs_;  // the open_ files' raw handles
  std::vector<uint32_t> lru_;
  IoConfig io_;
  ReadWindows windows_;
  DirectReadQueue queue_;  // after inputs_: its helper stops before they close
  RowsAskedInOrder in_order_;  // with verify_: what queue_ may load
  uint64_t bytes_read_ = 0;
  bool verify_ = false;
  StreamedChecks shared_;                   // empty: one link per tensor, this rank's
  int rank_ = 0;                            // the relay's, else 0
  double wait_s_ = 2.0;                     // for a state, while converting (0 after a miss)
  VerifyChains chains_;                     // per ref; without shared_: one link per tensor
  std::vector<unsigned char> scratch_;      // whole rows of a column window being hashed
  std::vector<unsigned char> fill_buf_;     // skipped rows read ahead (fill)
  std::vector<Streamed> streamed_;          // per ref, with verify
  uint64_t checked_ = 0, handed_on_ = 0;    // tensors checked here; hash states sent
  uint64_t late_links_ = 0, late_bytes_ = 0;  // links finished by reading rows again
  uint64_t filled_ = 0, filled_bytes_ = 0;    // skipped rows read ahead to hash in order
  std::vector<std::string> want_;           // per ref: the manifest's xxh3
  std::string problem_;                     // the first corruption found
};

// For every HF tensor, where its elements live in the checkpoint: the
// canonical copies' segments inverted (src = index into `refs`).
struct ExportIndex {
  std::vector<LocalTensorRef> refs;
  std::vector<std::vector<Segment>> per_hf;  // indexed like the catalogue used to plan
  std::vector<ElementOp> op;                 // the op to undo, per HF tensor
  std::vector<DType> stored_dtype;           // dtype of the canonical copies, per HF tensor
};
ExportIndex build_export_index(const std::vector<ShardPlan>& shards, size_t num_hf_tensors);

// Re-expresses segments that read HF tensors (`in`) as segments that read the
// checkpoint's local tensors, by intersecting rectangles with `index`.
std::vector<Segment> compose_through(const std::vector<Segment>& in, const ExportIndex& index);

}  // namespace mb
