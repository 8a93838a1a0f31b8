// Reads rectangles of Megatron local tensors out of a torch_dist checkpoint:
// each rectangle becomes boxes of the checkpoint keys (dist_pieces), each box
// is cut by the stored chunks, and the bytes are read with pread straight
// from the chunks' torch.save archives (large runs with O_DIRECT). Any chunking works, including
// checkpoints written by Megatron-Core or PyTorch. A column window of a chunk
// (a TP split of its rows) is one strided read per stretch of rows
// (InputFile::pread_rows), not one request per piece.
//
// With verify (manifests whose files use "xxh3-64-distcp-regions"), each
// chunk's checksum is one XXH3 stream over its bytes in file order, taken by
// the ranks that read them, as for HDF5 sources (Hdf5ShardSource): the bytes
// are cut into a chain of links (verify_chains.hpp), each hashed by a rank
// that reads those bytes anyway, every rank computing the same chains from
// every rank's reads (StreamedChecks::reads). A rank hashes its link as the
// bytes arrive in order (read directly; bytes of its link that a read skips
// are read ahead first, through the page cache, where its later read of them
// finds them), hands the hash state on to the next link's
// rank (HashRelay), and the last link's rank compares the digest with the
// manifest. A column window (a TP split of a row-parallel chunk) is hashed
// from whole rows, read the way the window alone would be (a narrow one
// through the page cache, where the other ranks find their columns). A link
// whose state had not come when its bytes did is finished in
// finish_verification, in chunk order on every rank (so the waits cannot
// deadlock), from the page cache where its bytes were read. Without the
// other ranks' reads, each rank checks every chunk it reads, whole. Then
// finish_verification checks each file's region checksum, reading only the
// bytes between the chunks' data. No separate full pass, no byte hashed twice.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/megatron_checkpoint.hpp"
#include "checkpoint/verify_chains.hpp"
#include "core/direct_io.hpp"
#include "core/direct_read_queue.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/nd_box.hpp"
#include "engine/copy_engine.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "model/qwen35_dist_keys.hpp"

namespace mb {

class TorchDistSource : public RowSource {
 public:
  // `shared` (with verify): every rank's reads and the relay that hands hash
  // states between ranks; without them this rank checks what it reads, whole.
  TorchDistSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                  IoConfig io = {IoMode::Buffered, 0}, bool verify = false,
                  const StreamedChecks& shared = {});
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }
  // Under direct I/O: runs of whole rows are loaded ahead (queue_); narrow
  // column windows (expert fc2 halves), read through the page cache
  // (read_window), are asked of it (InputFile::will_read_rows).
  uint64_t prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                    uint64_t max_bytes) override;
  void prefetch_job(uint64_t job) override { queue_.set_job(job); }
  void jobs_done_before(uint64_t job) override { queue_.release_before(job); }
  uint64_t bytes_loaded_ahead() const override { return queue_.bytes_loaded(); }

  // With verify: hashes the links this rank could not hash as it read (and
  // those of chunks it never read), then checks the region checksums of this
  // rank's share of the files (round-robin, as the manifest lists them). The
  // first problem (file, chunk, got and recorded checksum), or "".
  std::string finish_verification(int rank, int ranks);

 private:
  using ChunkId = std::pair<std::string, std::vector<uint64_t>>;  // key, chunk offsets
  // A chunk's chain, from every rank's reads: links over its element bytes
  // (ChainLink rows are bytes from the chunk's first element), and the
  // chunk's number, under which its hash states travel.
  struct Chain {
    uint32_t index = 0;
    std::vector<ChainLink> links;
    const DcpChunk* chunk = nullptr;
  };
  // A chunk this rank has a link of, or has read from, with verify.
  struct Streamed {
    std::string file, name, want;
    uint64_t begin = 0, end = 0;  // the storage record in the file (what the checksum covers)
    uint64_t next = 0;            // hashed up to here (a file offset)
    uint32_t index = 0;
    std::vector<ChainLink> links;  // in file offsets: the first from begin, the last to end
    size_t link = 0;               // this rank's next link
    bool broken = false;           // a link not hashed as read: finish_links continues it
    uint64_t filled_from = UINT64_MAX, filled_to = 0;  // the hull of the bytes fill read
    bool filled(uint64_t a, uint64_t b) const { return a < filled_to && b > filled_from; }
    Hasher hash;
  };
  // One box of a read that falls in one stored chunk, in the key's
  // coordinates; a 1-D local tensor's boxes get a trailing axis of extent 1.
  struct Cut {
    const DistPiece* piece = nullptr;
    const DcpTensor* meta = nullptr;
    const DcpChunk* chunk = nullptr;
    Box box;
    std::vector<uint64_t> psizes, poffsets, csizes, coffsets;
  };
  template <class F>
  void for_each_cut(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, F&& f);
  // The chunk elements [first, last) of a cut that walk() reads as whole
  // rows in one run; nullopt where it does not (build_chains).
  static std::optional<std::pair<uint64_t, uint64_t>> contiguous_in_chunk(const Cut& k);
  // Whether walk() reads the cut as column windows (a part of each of the
  // chunk's rows), not as whole rows.
  static bool column_window(const Cut& k);
  // The reads of one cut, offsets from the chunk's first element and from
  // dst: span(at, bytes, dst_off, until) for runs of whole rows (merged where
  // they continue each other; `until`: where load-ahead stops), and
  // window(at, rows, piece, row_bytes, lead, dst_off) for column windows.
  template <class Span, class Window>
  void walk(const Cut& k, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
            uint64_t dst_stride, Span&& span, Window&& window);
  // The chunks of `meta` that may meet `box` (by the first axis).
  std::vector<const DcpChunk*> chunks_near(const std::string& key, const DcpTensor& meta,
                                           const Box& box);
  void build_chains(const std::vector<SourceReads>& reads);
  Streamed& streamed(const ChunkId& k, const DcpChunk& chunk);
  // The chain machinery, over the file offsets [a, b) (Hdf5ShardSource has
  // the same over rows): whether a read of [a, b) continues this rank's link
  // (bytes of the link it skips are hashed first: fill).
  bool prepare(Streamed& s, uint64_t a, uint64_t b);
  // Hashes what of [a, a + n) (at p) continues the link; ends links.
  void advance(Streamed& s, const unsigned char* p, uint64_t a, uint64_t n);
  bool start_link(Streamed& s, double timeout_s);
  void end_link(Streamed& s);
  size_t next_own_link(const Streamed& s, size_t from) const;
  bool left_to_finish(const Streamed& s, uint64_t a, uint64_t b) const;
  void fill(Streamed& s, uint64_t a, uint64_t b);
  void finish_links(Streamed& s);
  void read_span(Streamed* sv, InputFile& f, unsigned char* dst, uint64_t n, uint64_t at,
                 const std::string& key, uint64_t until);
  // Reads a column window: `rows` pieces of `piece` bytes, the first at `at`,
  // each `row_bytes` after the previous, whose rows begin `lead` bytes before
  // their pieces; to dst rows `dst_stride` apart.
  void read_window(Streamed* sv, InputFile& f, unsigned char* dst, uint64_t dst_stride,
                   uint64_t rows, uint64_t piece, uint64_t at, uint64_t row_bytes, uint64_t lead,
                   const std::string& key);
  void check(Streamed& s, uint64_t digest);
  const std::vector<DistPiece>& pieces(uint32_t id);
  const TorchTensorItem& item(const std::string& key, const DcpChunk& chunk);
  // Asks the page cache (File::will_need) for the zip records of the
  // archives that follow `st` in its file (kArchivesAhead of them, each
  // archive once), before item() parses them; why: see the definition.
  void ask_archives_ahead(const DcpStorage& st);
  InputFile& file(const std::string& relative);

  const MegatronCheckpoint& ck_;
  std::vector<LocalTensorRef> refs_;
  std::map<uint32_t, std::vector<DistPiece>> pieces_;
  std::map<ChunkId, TorchTensorItem> items_;
  // Per file, its archives (offset, length) in file order, and which of
  // them have had their records asked for (ask_archives_ahead).
  struct ArchivesAhead {
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    std::vector<bool> asked;
  };
  std::map<std::string, ArchivesAhead> archives_ahead_;
  // Per key, its chunks sorted by their offset on the first axis, and the
  // largest extent on it (chunks_near).
  struct ByFirstAxis {
    std::vector<const DcpChunk*> chunks;
    uint64_t widest = 0;
  };
  std::map<std::string, ByFirstAxis> by_first_axis_;
  IoConfig io_;
  ReadWindows windows_;
  std::map<std::string, InputFile> files_;
  DirectReadQueue queue_;  // after files_: its helper stops before they close
  RowsAskedInOrder in_order_;  // with verify_: what queue_ may load
  uint64_t bytes_read_ = 0;
  bool verify_ = false;
  int rank_ = 0;
  HashRelay* relay_ = nullptr;  // with chains_ from every rank's reads
  std::map<ChunkId, Chain> chains_;
  double wait_s_ = 2.0;                      // for a state, while converting (0 after a miss)
  std::map<std::string, std::string> want_;  // chunk name -> the manifest's checksum
  std::map<ChunkId, Streamed> streamed_;
  std::vector<unsigned char> scratch_;  // whole rows of a column window
  std::vector<unsigned char> fill_buf_;  // blocks hashed ahead or at the end
  std::string problem_;
  uint64_t checked_ = 0, handed_on_ = 0, filled_bytes_ = 0, late_links_ = 0, late_bytes_ = 0;
};

}  // namespace mb
