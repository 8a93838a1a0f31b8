// Per-rank Megatron shards as HDF5 files: one dataset per state_dict tensor,
// named as the rank's state_dict names it, with attributes global_name,
// global_shape, dtype and xxh3. bf16 is stored as an HDF5 floating-point type
// with bf16's bit layout (see docs/formats.md), so the bytes round-trip
// exactly and generic readers (h5py) see bf16 values, never float16.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/direct_io.hpp"
#include "core/dtype.hpp"
#include "core/shape.hpp"

namespace mb {

// Attributes of one dataset.
struct ShardDatasetInfo {
  std::string name;
  std::string global_name;
  Shape shape;
  Shape global_shape;
  DType dtype = DType::BF16;
  std::string xxh3;  // checksum of the raw little-endian bytes, row-major
  // Reader: where the dataset's bytes start in the file, when they lie there
  // contiguous, allocated and inside the file (else UINT64_MAX: read through HDF5).
  uint64_t data_offset = UINT64_MAX;
};

// Where a dataset's bytes lie in its file: contiguous datasets with
// allocated storage only (others have no single region). `xxh3` is its
// checksum attribute ("" if none).
struct Hdf5DataRegion {
  std::string name;
  uint64_t offset = 0, bytes = 0;
  std::string xxh3;
};

// Attributes of the file: where it sits in the parallel layout.
struct ShardFileInfo {
  uint64_t tp_rank = 0, pp_rank = 0, ep_rank = 0, etp_rank = 0;
  uint64_t tp_size = 1, pp_size = 1, ep_size = 1, etp_size = 1;
  std::string format = "megabridge.hdf5-shard.v1";
  std::map<std::string, std::string> extra;  // free-form string attributes
};

// Writes a shard front to back. HDF5 writes only the metadata: every dataset
// is created contiguous with its storage allocated at once (no fill), its
// offset taken from H5Dget_offset, and its raw bytes written by us, in row
// order, through a StreamingRegionWriter: the page-aligned middle with
// O_DIRECT (with `io.mode` not buffered and where the filesystem takes it) on
// a helper thread, two buffers of io.chunk_bytes, so that the next tensor is
// read while the last one is written; the partial pages at its ends through
// the page cache, where HDF5's metadata writes to the same pages also go (a
// page never sees both kinds of write). Datasets of at least
// kHdf5AlignThreshold bytes start on a page boundary, so their heads need no
// buffered part at all.
constexpr uint64_t kHdf5AlignThreshold = 64 << 10;
class Hdf5ShardWriter {
 public:
  Hdf5ShardWriter(const std::filesystem::path& path, const ShardFileInfo& info,
                  IoConfig io = {IoMode::Buffered, 0});
  ~Hdf5ShardWriter();
  Hdf5ShardWriter(const Hdf5ShardWriter&) = delete;
  Hdf5ShardWriter& operator=(const Hdf5ShardWriter&) = delete;

  // Creates the dataset (contiguous layout); rows are written in blocks.
  void begin_dataset(const ShardDatasetInfo& info);
  // Writes rows [row0, row0+rows) of the 2-D view of the current dataset;
  // rows come in increasing order, each block continuing the previous one.
  void write_rows(uint64_t row0, uint64_t rows, const void* data) {
    write_rows(row0, rows, data, row_bytes_);
  }
  // The same, the rows `stride` bytes apart in `data` (this dataset's columns
  // of a wider block: shards written side by side).
  void write_rows(uint64_t row0, uint64_t rows, const void* data, uint64_t stride);
  // Stores the checksum attribute and closes the dataset.
  void end_dataset(const std::string& xxh3);
  void close();
  // Whether the data went (at least partly) with O_DIRECT.
  bool direct() const;
  // The data region of every dataset with bytes, with the checksum given to
  // end_dataset, in the order written (not offset order: HDF5 puts small
  // datasets in the gaps that aligning the large ones leaves): what
  // hdf5_data_regions() reads back from the closed file, known without
  // opening its thousands of datasets again (hdf5_written_file_checksum).
  const std::vector<Hdf5DataRegion>& data_regions() const { return regions_; }

 private:
  std::filesystem::path path_;
  int64_t file_ = -1;
  int64_t dset_ = -1;
  ShardDatasetInfo cur_;
  IoConfig io_;
  std::unique_ptr<RegionFile> raw_;               // our own handle on the file, for the data
  std::unique_ptr<StreamingRegionWriter> data_;  // the datasets' bytes
  bool in_dataset_ = false;                      // data_ has a region open
  uint64_t row_bytes_ = 0, next_row_ = 0;
  std::vector<Hdf5DataRegion> regions_;
};

// Random-access writing, for read-once mode: every dataset is created up
// The one dataset of a file kept open. Readers and updaters go through a
// tensor block by block, and an open HDF5 dataset costs tens of KiB, so keeping
// all of a shard's hundreds open would cost tens of MiB outside the buffer.
// Callers hold the HDF5 lock.
class OneOpenDataset {
 public:
  OneOpenDataset() = default;
  ~OneOpenDataset() { close(); }
  OneOpenDataset(const OneOpenDataset&) = delete;
  OneOpenDataset& operator=(const OneOpenDataset&) = delete;
  // The handle of dataset `name` of `file` (`path` for errors), opening it
  // and closing the previous one when it is another.
  int64_t get(int64_t file, const std::string& name, const std::filesystem::path& path);
  void close();

 private:
  std::string name_;
  int64_t id_ = -1;
};

// front, then rectangles arrive in any order; at the end each dataset is read
// back once to compute its checksum.
class Hdf5ShardUpdater {
 public:
  Hdf5ShardUpdater(const std::filesystem::path& path, const ShardFileInfo& info,
                   const std::vector<ShardDatasetInfo>& datasets);
  ~Hdf5ShardUpdater();
  Hdf5ShardUpdater(const Hdf5ShardUpdater&) = delete;
  Hdf5ShardUpdater& operator=(const Hdf5ShardUpdater&) = delete;

  // Writes a packed rows x cols block at (row0, col0) of the 2-D view.
  void write_rect(size_t dataset, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                  const void* data);
  // Reads the dataset back in blocks of at most `block_bytes`, stores and
  // returns its xxh3 (hex).
  std::string finish_dataset(size_t dataset, uint64_t block_bytes);
  void close();

 private:
  std::filesystem::path path_;
  int64_t file_ = -1;
  std::vector<ShardDatasetInfo> info_;
  OneOpenDataset open_;
};

class Hdf5ShardReader {
 public:
  explicit Hdf5ShardReader(const std::filesystem::path& path);
  ~Hdf5ShardReader();
  Hdf5ShardReader(const Hdf5ShardReader&) = delete;
  Hdf5ShardReader& operator=(const Hdf5ShardReader&) = delete;

  const ShardFileInfo& file_info() const { return info_; }
  const std::vector<ShardDatasetInfo>& datasets() const { return datasets_; }
  const ShardDatasetInfo* find(const std::string& name) const;
  // Reads a rectangle of the 2-D view of dataset `name` into dst (rows
  // dst_stride bytes apart).
  void read(const std::string& name, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
            void* dst, uint64_t dst_stride) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int64_t file_ = -1;
  ShardFileInfo info_;
  std::vector<ShardDatasetInfo> datasets_;
  mutable OneOpenDataset open_;
};

// The HDF5 type we store for a dtype, and the dtype a stored type stands for.
int64_t hdf5_type_for(DType t);

// The data regions of the file's root datasets, sorted by offset; throws
// (naming the file) when the file cannot be read as HDF5 or two regions
// overlap or one extends past the end of the file.
std::vector<Hdf5DataRegion> hdf5_data_regions(const std::filesystem::path& path);

}  // namespace mb
