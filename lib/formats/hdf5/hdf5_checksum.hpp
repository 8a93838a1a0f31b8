// The checksum of an HDF5 shard file, computed without reading its data back.
//
// Scheme "xxh3-64-hdf5-regions" (docs/formats.md): the file [0, size) is cut
// into regions in offset order: each contiguous dataset's data bytes
// (H5Dget_offset, H5Dget_storage_size) is one region, and each run of bytes
// between them (HDF5 metadata, alignment padding) is another. The file's
// checksum is the XXH3-64 of the concatenation, region by region, of three
// little-endian u64s: the region's offset, its length and the XXH3-64 of its
// bytes. A data region's XXH3-64 is the tensor's own checksum (the `xxh3`
// attribute and the manifest's per-tensor entry), which the writer computes
// from the bytes as it writes them; so the writer reads back only the
// metadata regions (kilobytes) after HDF5 has closed the file, while a
// verifier reads and hashes every region. Any changed byte changes the
// checksum: a data byte its region's hash, a metadata byte its region's hash
// or, if it moves a dataset, the offsets.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "formats/hdf5/hdf5_shard.hpp"

namespace mb {

inline constexpr const char* kHdf5RegionChecksum = "xxh3-64-hdf5-regions";
inline constexpr const char* kWholeFileChecksum = "xxh3-64";

struct Hdf5FileChecksum {
  uint64_t digest = 0;
  // Datasets whose bytes, as read, do not match their `xxh3` attribute
  // (only for regions that were read, i.e. not in `known`).
  std::vector<std::string> bad_datasets;
};

// `known`: dataset name -> XXH3-64 of its bytes, as the writer computed it
// while writing; the regions of those datasets are not read. Others are read.
Hdf5FileChecksum hdf5_file_checksum(const std::filesystem::path& path,
                                    const std::map<std::string, uint64_t>& known = {});

// The same checksum for a file this process has just written and closed,
// from the data regions its writer recorded (Hdf5ShardWriter::data_regions:
// offsets as HDF5 allocated them, checksums of the bytes as written). Only
// the metadata between them is read. hdf5_file_checksum opens every dataset
// through HDF5 to find its region: for a 1-rank 35B-A3B import's shard
// (2956 datasets) the checksum took 85 ms that way, 12 ms this way.
Hdf5FileChecksum hdf5_written_file_checksum(const std::filesystem::path& path,
                                            const std::vector<Hdf5DataRegion>& written);

// The checksum of `path` under `scheme` (kHdf5RegionChecksum or
// kWholeFileChecksum or kDistcpRegionChecksum), reading every byte: what verifiers call. A mismatch
// message can name the datasets that differ from their own checksums
// (`bad_datasets`, may be null).
uint64_t file_checksum(const std::filesystem::path& path, const std::string& scheme,
                       std::vector<std::string>* bad_datasets = nullptr);

}  // namespace mb
