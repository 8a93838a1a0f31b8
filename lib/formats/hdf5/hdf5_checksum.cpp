#include "formats/hdf5/hdf5_checksum.hpp"

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "formats/hdf5/hdf5_shard.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
void put_le64(std::vector<unsigned char>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

// XXH3-64 of bytes [offset, offset + n) of `f`, read in bounded blocks.
uint64_t hash_range(const File& f, uint64_t offset, uint64_t n, std::vector<unsigned char>& buf) {
  Hasher h;
  while (n > 0) {
    const uint64_t k = std::min<uint64_t>(n, buf.size());
    f.pread_exact(buf.data(), k, offset);
    h.update(buf.data(), k);
    offset += k, n -= k;
  }
  return h.digest();
}
}  // namespace

Hdf5FileChecksum hdf5_file_checksum(const fs::path& path,
                                    const std::map<std::string, uint64_t>& known) {
  const ChecksumReadScope counted;  // reported apart from input reads by bench
  const std::vector<Hdf5DataRegion> regions = hdf5_data_regions(path);
  File f(path, File::Mode::Read);
  const uint64_t size = fs::file_size(path);
  // The buffer is sized for the largest range read (only metadata for a writer).
  uint64_t largest = 0, end = 0;
  for (const Hdf5DataRegion& r : regions) {
    largest = std::max(largest, r.offset - std::min(r.offset, end));
    if (!known.count(r.name)) largest = std::max(largest, r.bytes);
    end = r.offset + r.bytes;
  }
  largest = std::max(largest, size - std::min(size, end));
  std::vector<unsigned char> buf(std::clamp<uint64_t>(largest, 1, 8u << 20)), list;
  Hdf5FileChecksum out;
  auto add = [&](uint64_t offset, uint64_t n, uint64_t h) {
    put_le64(list, offset);
    put_le64(list, n);
    put_le64(list, h);
  };
  uint64_t pos = 0;
  for (const Hdf5DataRegion& r : regions) {
    if (r.offset > pos) add(pos, r.offset - pos, hash_range(f, pos, r.offset - pos, buf));
    uint64_t h;
    if (auto it = known.find(r.name); it != known.end()) {
      h = it->second;
    } else {
      h = hash_range(f, r.offset, r.bytes, buf);
      if (!r.xxh3.empty() && r.xxh3 != hash_hex(h)) out.bad_datasets.push_back(r.name);
    }
    add(r.offset, r.bytes, h);
    pos = r.offset + r.bytes;
  }
  if (size > pos) add(pos, size - pos, hash_range(f, pos, size - pos, buf));
  out.digest = hash_bytes(list.data(), list.size());
  return out;
}

uint64_t file_checksum(const fs::path& path, const std::string& scheme,
                       std::vector<std::string>* bad_datasets) {
  if (scheme == kWholeFileChecksum) return hash_file(path);
  MB_CHECK(scheme == kHdf5RegionChecksum,
           "{}: unknown checksum scheme '{}' (this megabridge knows '{}' and '{}')", path.string(),
           scheme, kWholeFileChecksum, kHdf5RegionChecksum);
  Hdf5FileChecksum c = hdf5_file_checksum(path);
  if (bad_datasets) *bad_datasets = std::move(c.bad_datasets);
  return c.digest;
}

}  // namespace mb
