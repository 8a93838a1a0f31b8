#include "formats/hdf5/hdf5_checksum.hpp"

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/region_checksum.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "formats/torch_dist/distcp_checksum.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
// The region checksum over the datasets' regions `hdf5` (any order).
Hdf5FileChecksum checksum_over(const fs::path& path, const std::vector<Hdf5DataRegion>& hdf5,
                               const std::map<std::string, uint64_t>& known) {
  std::vector<DataRegion> regions;
  regions.reserve(hdf5.size());
  for (const Hdf5DataRegion& r : hdf5) regions.push_back({r.name, r.offset, r.bytes, r.xxh3});
  // In offset order, as the checksum wants (region_file_checksum checks it).
  std::sort(regions.begin(), regions.end(),
            [](const DataRegion& a, const DataRegion& b) { return a.offset < b.offset; });
  RegionChecksum c = region_file_checksum(path, regions, known);
  return {c.digest, std::move(c.bad)};
}
}  // namespace

Hdf5FileChecksum hdf5_file_checksum(const fs::path& path,
                                    const std::map<std::string, uint64_t>& known) {
  return checksum_over(path, hdf5_data_regions(path), known);
}

Hdf5FileChecksum hdf5_written_file_checksum(const fs::path& path,
                                            const std::vector<Hdf5DataRegion>& written) {
  std::map<std::string, uint64_t> known;  // every region: none is read
  for (const Hdf5DataRegion& r : written) {
    MB_CHECK(!r.xxh3.empty(), "internal: {}: dataset '{}' was written without a checksum",
             path.string(), r.name);
    known[r.name] = hash_from_hex(r.xxh3);
  }
  return checksum_over(path, written, known);
}

uint64_t file_checksum(const fs::path& path, const std::string& scheme,
                       std::vector<std::string>* bad_datasets) {
  if (scheme == kWholeFileChecksum) return hash_file(path);
  if (scheme == kDistcpRegionChecksum) {
    RegionChecksum c = region_file_checksum(path, distcp_data_regions(path));
    if (bad_datasets) *bad_datasets = std::move(c.bad);
    return c.digest;
  }
  MB_CHECK(scheme == kHdf5RegionChecksum,
           "{}: unknown checksum scheme '{}' (this megabridge knows '{}', '{}' and '{}')",
           path.string(), scheme, kWholeFileChecksum, kHdf5RegionChecksum, kDistcpRegionChecksum);
  Hdf5FileChecksum c = hdf5_file_checksum(path);
  if (bad_datasets) *bad_datasets = std::move(c.bad_datasets);
  return c.digest;
}

}  // namespace mb
