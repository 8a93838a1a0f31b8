// Reads rectangles of Megatron local tensors out of a torch_dist checkpoint:
// each rectangle becomes boxes of the checkpoint keys (dist_pieces), each box
// is cut by the stored chunks, and the bytes are read with pread straight
// from the chunks' torch.save archives (large runs with O_DIRECT). Any chunking works, including
// checkpoints written by Megatron-Core or PyTorch. A column window of a chunk
// (a TP split of its rows) is one strided read per stretch of rows
// (InputFile::pread_rows), not one request per piece.
//
// With verify (manifests whose files use "xxh3-64-distcp-regions"), each
// chunk's bytes are hashed as they are read when they are read in file order
// (a column window's whole rows through the page cache), else read again
// (through the page cache) once the reads move on or at the end;
// finish_verification then checks each file's region checksum, reading only
// the bytes between the chunks' data. No separate full pass.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/megatron_checkpoint.hpp"
#include "core/direct_io.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "engine/copy_engine.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "model/qwen35_dist_keys.hpp"

namespace mb {

class TorchDistSource : public RowSource {
 public:
  TorchDistSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                  IoConfig io = {IoMode::Buffered, 0}, bool verify = false);
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }

  // With verify: re-reads the chunks read out of order, then checks the
  // region checksums of this rank's share of the files (round-robin, as the
  // manifest lists them). The first problem (file, chunk, got and recorded
  // checksum), or "".
  std::string finish_verification(int rank, int ranks);

 private:
  struct Streamed {
    std::string file, name, want;
    uint64_t begin = 0, end = 0, next = 0;  // the chunk's data bytes in the file
    uint64_t seen = 0;                      // bytes read so far, in any order
    Hasher hash;
    bool in_order = true;  // every read so far continued the previous one
    bool checked = false;
  };
  Streamed& streamed(const std::pair<std::string, std::vector<uint64_t>>& k,
                     const TorchTensorItem& ti, const std::string& file);
  void verify_whole(Streamed& s);
  // Reads a column window: `rows` pieces of `piece` bytes, the first at `at`,
  // each `row_bytes` after the previous, whose rows begin `lead` bytes before
  // their pieces; to dst rows `dst_stride` apart.
  void read_window(Streamed* sv, const std::string& rel, InputFile& f, unsigned char* dst,
                   uint64_t dst_stride, uint64_t rows, uint64_t piece, uint64_t at,
                   uint64_t row_bytes, uint64_t lead, const std::string& key);
  File& plain(const std::string& relative);  // the buffered handle of a file
  void check(Streamed& s, uint64_t digest);
  const std::vector<DistPiece>& pieces(uint32_t id);
  const TorchTensorItem& item(const std::string& key, const DcpChunk& chunk);
  InputFile& file(const std::string& relative);

  const MegatronCheckpoint& ck_;
  std::vector<LocalTensorRef> refs_;
  std::map<uint32_t, std::vector<DistPiece>> pieces_;
  std::map<std::pair<std::string, std::vector<uint64_t>>, TorchTensorItem> items_;
  IoConfig io_;
  ReadWindows windows_;
  std::map<std::string, InputFile> files_;
  uint64_t bytes_read_ = 0;
  bool verify_ = false;
  std::map<std::string, std::string> want_;  // chunk name -> the manifest's checksum
  std::map<std::pair<std::string, std::vector<uint64_t>>, Streamed> streamed_;
  Streamed* last_ = nullptr;
  std::map<std::string, File> plain_;   // buffered handles for the out-of-order reads
  std::vector<unsigned char> scratch_;  // whole rows of a column window
  std::string problem_;
};

}  // namespace mb
