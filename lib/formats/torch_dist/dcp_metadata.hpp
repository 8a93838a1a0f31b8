// PyTorch Distributed Checkpoint's `.metadata`: which keys exist, their global
// shapes and dtypes, the chunks that tile them, and where each chunk's item
// lies (file, offset, length). Spec megatron-checkpoint-format.md §2.2, §2.5.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.hpp"
#include "core/shape.hpp"

namespace mb {

struct DcpChunk {
  std::vector<uint64_t> offsets;  // global element offsets, one per dimension
  std::vector<uint64_t> sizes;    // extent
  bool operator==(const DcpChunk&) const = default;
};

struct DcpTensor {
  DType dtype = DType::BF16;
  Shape size;  // the global shape
  std::vector<DcpChunk> chunks;
};

struct DcpStorage {
  std::string relative_path;  // e.g. "__3_0.distcp"
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct DcpMetadata {
  std::map<std::string, DcpTensor> tensors;
  std::set<std::string> byte_items;  // BytesStorageMetadata keys (ShardedObjects)
  // Tensor chunks: key + chunk offsets. Byte items: key + no offsets.
  std::map<std::pair<std::string, std::vector<uint64_t>>, DcpStorage> storage;

  // The storage entry of a tensor chunk (its offsets) or a byte item ({});
  // throws an Error naming the key and offsets when there is none.
  const DcpStorage& storage_of(const std::string& key, const std::vector<uint64_t>& offsets) const;
};

// Which TensorProperties class to write (torch <= 2.3 used the _shard path).
enum class TensorPropertiesPath { Checkpoint, ShardedTensor };

// Serialises as PyTorch does (protocol 2; Metadata with state_dict_metadata,
// planner_data=None, storage_data, storage_meta=None, version "1.0.0").
// Keys in sorted order (tensors and byte items merged); TensorProperties with
// the 5-tuple state every torch 2.x accepts (torch 2.15 itself writes a
// 6-tuple with strides and loads both); MetadataIndex(fqn, offset Size or
// None, index None) -> _StorageInfo(relative_path, offset, length). Dicts and
// lists are batched like CPython's pickler (SETITEM/APPEND for one item).
std::string write_dcp_metadata(const DcpMetadata& m,
                               TensorPropertiesPath path = TensorPropertiesPath::Checkpoint);

// Parses a .metadata written by any PyTorch 2.x or Megatron-Core version, with
// the restricted unpickler: only the known checkpoint classes (and opaque
// planner classes Megatron attaches) may appear; any other global is refused.
// Unknown attributes are ignored. Items with stream transforms are refused.
// Allowed globals: Metadata, TensorStorageMetadata, ChunkStorageMetadata,
// BytesStorageMetadata, TensorProperties, (_)MEM_FORMAT_ENCODING,
// MetadataIndex, StorageMeta from both torch.distributed.checkpoint.metadata
// and torch.distributed._shard.sharded_tensor.metadata; filesystem
// _StorageInfo/_StoragePrefix; planner SavePlan, WriteItem, WriteItemType,
// TensorWriteData, BytesIOWriteData; megatron ...strategies.torch
// MCoreSavePlan/MCoreMetadata; torch.Size, torch.strided,
// torch.serialization._get_layout (how torch >= 2.10 pickles layouts), the
// torch dtypes, collections.OrderedDict, pathlib.PosixPath. TensorProperties
// states of 5 (torch <= 2.14) or 6 items (2.15+, strides) are accepted; the
// layout must be strided; a dtype DType cannot represent is an error.
DcpMetadata read_dcp_metadata(std::string_view bytes, std::string_view what);

// Checks that the chunks of every tensor tile it exactly: in bounds, no
// overlap, total volume equal to the tensor's; and that every chunk has a
// storage entry. Returns the problems found (empty when consistent). Also
// reports a chunk of the wrong rank, a non-empty tensor without chunks and a
// byte item without storage. Chunks of zero volume never overlap.
std::vector<std::string> check_dcp_tiling(const DcpMetadata& m);

}  // namespace mb
