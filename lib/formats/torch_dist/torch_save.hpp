// The torch.save container: an uncompressed zip (always zip64, records aligned
// to 64 bytes with miniz's "FB" padding, data descriptors) holding data.pkl,
// the storages data/<key>, byteorder and version. Every torch_dist item is
// one such archive. See spec megatron-checkpoint-format.md §2.6.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/shape.hpp"

namespace mb {

namespace pickle {
class Writer;
}

// Writes an archive holding one contiguous tensor, at byte `base` of `file`,
// streaming the tensor bytes (only data.pkl is built up front). The archive's
// internal offsets are relative to `base`, as DCP items require, so the bytes
// do not depend on `base`. Records: archive/data.pkl, archive/byteorder,
// archive/data/0, archive/version ("3\n"); torch's .format_version,
// .storage_alignment and .data/serialization_id are left out (spec §2.6.1).
// Layout as miniz writes it (checked against torch 2.15): every record
// stored, local header with zero CRC/sizes, data 64-byte aligned from the
// archive start through an "FB" extra field, then a data descriptor; an empty
// record has neither descriptor nor flag bit 3; zip64 fields where a size or
// offset reaches 0xFFFFFFFF; zip64 end record + locator + classic EOCD.
// The CRC-32 (core/crc32.hpp: ISA-L, about 30 GB/s) is computed as the bytes pass.
class TorchSaveTensorWriter {
 public:
  // With `hash`, every byte of the archive is also fed to it, in file order
  // (the archive is written front to back), so that a file made of archives
  // written one after another can be checksummed without reading it back.
  // `out` is a File (any base) or an AppendFile (base = its current size).
  // With `data_hash` too, the tensor's bytes go to it instead of `hash`
  // (region checksums: formats/torch_dist/distcp_checksum.hpp).
  TorchSaveTensorWriter(ByteOutput& out, uint64_t base, DType dtype, const Shape& shape,
                        Hasher* hash = nullptr, Hasher* data_hash = nullptr);
  // The absolute offset of the tensor's bytes (data/0's payload); known
  // from construction on.
  uint64_t data_offset() const { return base_ + data_start_; }
  // The constructor writes data.pkl, byteorder and data/0's local header.
  // Tensor bytes, in row-major order, in any number of calls; each call is one
  // write at the current position. More bytes than the tensor holds throw.
  void write(const void* data, uint64_t n);
  // Writes the remaining records, the central directory and the end records.
  // Returns the archive's total length. Throws if fewer or more bytes than the
  // tensor holds were written.
  uint64_t finish();

 private:
  ByteOutput& file_;
  Hasher* hash_ = nullptr;
  Hasher* data_hash_ = nullptr;
  uint64_t base_, pos_, data_start_ = 0;
  uint64_t expected_, written_ = 0;
  uint32_t crc_ = 0;
  struct Record {
    std::string name;
    uint64_t header_offset, size;
    uint32_t crc;
  };
  std::vector<Record> records_;
  uint64_t data_record_header_ = 0;
  // Headers and small records are gathered here and written in one call.
  std::string pending_;
  uint64_t pending_at_ = 0;  // archive offset of pending_
  bool finished_ = false;
  void add_record(const std::string& name, std::string_view bytes);
  void begin_record(const std::string& name, uint64_t size);
  void end_record(uint32_t crc, uint64_t size);
  void flush();
};

// A small torch.save archive built in memory: a pickle whose persistent ids
// reference `storages` (data/0, data/1, ...). Used for common.pt, the
// _extra_state payloads and train_state.pt. `archive` is the folder name
// inside the zip ("archive" for streams, the file stem for files). Same
// records and layout as TorchSaveTensorWriter (byte-identical for one tensor);
// a storage may be empty (torch.empty(0) payloads).
std::string torch_save_archive(const std::string& data_pkl, const std::vector<std::string>& storages,
                               std::string_view archive = "archive");

// Emits, into a pickle being built, a contiguous CPU tensor whose storage is
// data/<storage_key>: torch._utils._rebuild_tensor_v2 with the storage as a
// persistent id, as torch.save does.
void pickle_tensor(pickle::Writer& w, const std::string& storage_key, DType dtype, const Shape& shape);

// What a tensor archive holds: the tensor's dtype, shape, strides and where
// its storage bytes lie in the file.
struct TorchTensorItem {
  DType dtype = DType::BF16;
  Shape shape;
  std::vector<uint64_t> stride;  // in elements
  uint64_t storage_offset = 0;   // in elements
  uint64_t data_offset = 0;      // absolute file offset of the storage bytes
  uint64_t storage_bytes = 0;
};

// Parses the archive at [offset, offset+length) of `file` (EOCD, zip64
// records, central directory, the local header of data/0) and its data.pkl,
// with the restricted unpickler. Errors name `what` (the DCP key and file).
// The folder name is whatever the first record uses. data.pkl must be a bare
// tensor: torch._utils._rebuild_tensor_v2 (or _v3 with an explicit dtype and
// UntypedStorage) over a persistent id ('storage', torch.<X>Storage, key,
// location, numel); the only globals allowed are those, collections.OrderedDict,
// torch.Size and the torch dtypes. Checks: byteorder "little" when present,
// CRC of data.pkl/byteorder (when non-zero), data/<key> size == numel x
// itemsize, and the strided view inside its storage. Strides are returned as
// stored (contiguous for anything torch_dist writes); the data itself is not
// read or CRC-checked.
TorchTensorItem read_torch_tensor_item(const File& file, uint64_t offset, uint64_t length,
                                       std::string_view what);

// Reads the raw bytes of a named record (e.g. "data.pkl", "data/0", "byteorder"),
// named without the folder, of an archive; its CRC is checked when non-zero.
// Meant for small records: the whole record is returned in memory.
std::string read_torch_archive_record(const File& file, uint64_t offset, uint64_t length,
                                      std::string_view record, std::string_view what);

}  // namespace mb
