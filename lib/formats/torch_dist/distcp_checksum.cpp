#include "formats/torch_dist/distcp_checksum.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/file.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/torch_save.hpp"

namespace mb {
namespace fs = std::filesystem;

std::string distcp_item_name(const std::string& key, const std::vector<uint64_t>& offsets) {
  return fmt::format("{}@{}", key, fmt::join(offsets, ","));
}

std::vector<DataRegion> distcp_data_regions(const fs::path& path) {
  const fs::path meta = path.parent_path() / ".metadata";
  return distcp_data_regions(path, read_dcp_metadata(read_text_file(meta), meta.string()));
}

std::vector<DataRegion> distcp_data_regions(const fs::path& path, const DcpMetadata& md) {
  const std::string file = path.filename().string();
  File f(path, File::Mode::Read);
  std::vector<DataRegion> out;
  for (const auto& [k, st] : md.storage) {
    if (st.relative_path != file || md.byte_items.count(k.first)) continue;
    const std::string name = distcp_item_name(k.first, k.second);
    const TorchTensorItem ti = read_torch_tensor_item(f, st.offset, st.length,
                                                      fmt::format("{} in {}", name, path.string()));
    out.push_back({name, ti.data_offset, ti.storage_bytes, {}});
  }
  std::sort(out.begin(), out.end(),
            [](const DataRegion& a, const DataRegion& b) { return a.offset < b.offset; });
  return out;
}

}  // namespace mb
