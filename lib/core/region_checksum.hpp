// The region checksum of a file: shared by the HDF5 shard scheme
// ("xxh3-64-hdf5-regions") and the torch_dist scheme
// ("xxh3-64-distcp-regions"); docs/formats.md.
//
// The file [0, size) is cut into regions in offset order: each data region
// (a tensor's bytes, where the format says they are) is one region, and each
// non-empty run of bytes between them is another. The checksum is the
// XXH3-64 of the concatenation, region by region, of three little-endian
// u64s: the region's offset, its length and the XXH3-64 of its bytes. A data
// region's XXH3-64 is the tensor's own checksum, so a writer that hashed each
// tensor as it wrote it, or a reader that hashed it as it read it, only has
// to read the bytes between the data regions (kilobytes).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mb {

struct DataRegion {
  std::string name;
  uint64_t offset = 0, bytes = 0;
  std::string xxh3;  // the tensor's own checksum where the file records one ("" = none)
};

struct RegionChecksum {
  uint64_t digest = 0;
  // Regions whose bytes, as read, do not match their own `xxh3` (only for
  // regions that were read, i.e. not in `known`).
  std::vector<std::string> bad;
};

// Builds the checksum from regions given in offset order (a writer that
// hashes as it writes adds them one by one).
class RegionChecksumBuilder {
 public:
  void add(uint64_t offset, uint64_t n, uint64_t hash);
  uint64_t digest() const;

 private:
  std::vector<unsigned char> list_;
};

// `regions`: the data regions in offset order, non-overlapping, inside the
// file (zero-length regions are skipped). `known`: name -> XXH3-64 of the
// bytes, as a writer or reader computed it; those regions are not read.
RegionChecksum region_file_checksum(const std::filesystem::path& path,
                                    const std::vector<DataRegion>& regions,
                                    const std::map<std::string, uint64_t>& known = {});

}  // namespace mb
