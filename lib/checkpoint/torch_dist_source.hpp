// Reads rectangles of Megatron local tensors out of a torch_dist checkpoint:
// each rectangle becomes boxes of the checkpoint keys (dist_pieces), each box
// is cut by the stored chunks, and the bytes are read with pread straight
// from the chunks' torch.save archives (large runs with O_DIRECT). Any chunking works, including
// checkpoints written by Megatron-Core or PyTorch.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/megatron_checkpoint.hpp"
#include "core/direct_io.hpp"
#include "engine/copy_engine.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "model/qwen35_dist_keys.hpp"

namespace mb {

class TorchDistSource : public RowSource {
 public:
  TorchDistSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                  IoConfig io = {IoMode::Buffered, 0});
  void read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols, void* dst,
            uint64_t dst_stride) override;
  uint64_t bytes_read() const override { return bytes_read_; }

 private:
  const std::vector<DistPiece>& pieces(uint32_t id);
  const TorchTensorItem& item(const std::string& key, const DcpChunk& chunk);
  InputFile& file(const std::string& relative);

  const MegatronCheckpoint& ck_;
  std::vector<LocalTensorRef> refs_;
  std::map<uint32_t, std::vector<DistPiece>> pieces_;
  std::map<std::pair<std::string, std::vector<uint64_t>>, TorchTensorItem> items_;
  IoConfig io_;
  ReadWindow window_;  // allocated when the first file opens for direct reads
  std::map<std::string, InputFile> files_;
  uint64_t bytes_read_ = 0;
};

}  // namespace mb
