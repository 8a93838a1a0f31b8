// The checksum of a torch_dist .distcp file, computed without a second full
// read: scheme "xxh3-64-distcp-regions" (docs/formats.md). It is the region
// checksum of core/region_checksum.hpp with, as data regions, the storage
// bytes (data/0 of the torch.save archive) of every tensor chunk the sibling
// .metadata places in the file; everything else (ShardedObject archives,
// zip headers, data.pkl, central directories) lies in the regions between.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/region_checksum.hpp"

namespace mb {

inline constexpr const char* kDistcpRegionChecksum = "xxh3-64-distcp-regions";

// The name of a tensor chunk's data region (and of its manifest checksum):
// "<key>@<offsets joined by ','>".
std::string distcp_item_name(const std::string& key, const std::vector<uint64_t>& offsets);

// The data regions of `path` (an iter_*/__R_0.distcp) as its sibling .metadata
// and each chunk's archive say, in offset order; throws naming the file.
std::vector<DataRegion> distcp_data_regions(const std::filesystem::path& path);
// The same with the .metadata already parsed.
struct DcpMetadata;
std::vector<DataRegion> distcp_data_regions(const std::filesystem::path& path,
                                            const DcpMetadata& md);

}  // namespace mb
