// Content checksums (XXH3-64): fast enough to run on every byte we write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace mb {

class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  Hasher(Hasher&& o) noexcept;
  Hasher& operator=(Hasher&& o) noexcept;

  void update(const void* data, uint64_t n);
  uint64_t digest() const;
  // The state as bytes, to continue the same stream in another process of
  // this program (a rank that hashed the first rows of a tensor hands the
  // hash on to the rank that read the next ones), and back.
  std::string save() const;
  // Throws if `bytes` is not a state saved by this build.
  void restore(const std::string& bytes);

 private:
  void* state_;
};

uint64_t hash_bytes(const void* data, uint64_t n);
// Streams the file through the hasher in bounded blocks.
uint64_t hash_file(const std::filesystem::path& path, uint64_t block_bytes = 8u << 20);
// Bytes this process has fetched from storage inside hash_file (from
// /proc/self/io; 0 where it is unavailable). Checksumming an output file
// re-reads it, from the page cache when it is still there: the benchmark
// reports these reads apart from the reads of the input.
uint64_t hash_file_storage_bytes();
// Counts the storage bytes the calling thread reads while it lives into
// hash_file_storage_bytes(), for checksum passes that read files by other
// means (an HDF5 dataset read back to hash it).
class ChecksumReadScope {
 public:
  ChecksumReadScope();
  ~ChecksumReadScope();
  ChecksumReadScope(const ChecksumReadScope&) = delete;
  ChecksumReadScope& operator=(const ChecksumReadScope&) = delete;

 private:
  uint64_t start_;
};
// 16 lowercase hex digits, the form stored in manifests.
std::string hash_hex(uint64_t h);
uint64_t hash_from_hex(const std::string& s);

}  // namespace mb
