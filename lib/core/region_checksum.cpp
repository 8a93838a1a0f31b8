#include "core/region_checksum.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"

namespace mb {
namespace fs = std::filesystem;

void RegionChecksumBuilder::add(uint64_t offset, uint64_t n, uint64_t hash) {
  for (uint64_t v : {offset, n, hash})
    for (int i = 0; i < 8; ++i) list_.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

uint64_t RegionChecksumBuilder::digest() const {
  return hash_bytes(list_.data(), list_.size());
}

namespace {
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

RegionChecksum region_file_checksum(const fs::path& path, const std::vector<DataRegion>& regions,
                                    const std::map<std::string, uint64_t>& known) {
  const ChecksumReadScope counted;  // reported apart from input reads by bench
  File f(path, File::Mode::Read);
  const uint64_t size = fs::file_size(path);
  // The buffer is sized for the largest range read (only gaps for a writer).
  uint64_t largest = 0, end = 0;
  for (const DataRegion& r : regions) {
    MB_CHECK(r.offset >= end && r.offset <= size && r.bytes <= size - r.offset,
             "{}: region '{}' [{}, {}) overlaps the previous one or lies outside the file ({} "
             "bytes)",
             path.string(), r.name, r.offset, r.offset + r.bytes, size);
    largest = std::max(largest, r.offset - end);
    if (!known.count(r.name)) largest = std::max(largest, r.bytes);
    end = r.offset + r.bytes;
  }
  largest = std::max(largest, size - end);
  std::vector<unsigned char> buf(std::clamp<uint64_t>(largest, 1, 8u << 20));
  RegionChecksumBuilder list;
  RegionChecksum out;
  uint64_t pos = 0;
  for (const DataRegion& r : regions) {
    if (r.bytes == 0) continue;
    if (r.offset > pos) list.add(pos, r.offset - pos, hash_range(f, pos, r.offset - pos, buf));
    uint64_t h;
    if (auto it = known.find(r.name); it != known.end()) {
      h = it->second;
    } else {
      h = hash_range(f, r.offset, r.bytes, buf);
      if (!r.xxh3.empty() && r.xxh3 != hash_hex(h)) out.bad.push_back(r.name);
    }
    list.add(r.offset, r.bytes, h);
    pos = r.offset + r.bytes;
  }
  if (size > pos) list.add(pos, size - pos, hash_range(f, pos, size - pos, buf));
  out.digest = list.digest();
  return out;
}

}  // namespace mb
