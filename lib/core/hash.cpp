#include "core/hash.hpp"

// For XXH3_state_t's layout (save/restore).
#define XXH_STATIC_LINKING_ONLY
#include <fmt/format.h>
#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/proc_stats.hpp"

namespace mb {

Hasher::Hasher() : state_(XXH3_createState()) {
  MB_CHECK(state_ != nullptr, "out of memory creating a hash state");
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Hasher::~Hasher() {
  if (state_) XXH3_freeState(static_cast<XXH3_state_t*>(state_));
}
Hasher::Hasher(Hasher&& o) noexcept : state_(o.state_) { o.state_ = nullptr; }
Hasher& Hasher::operator=(Hasher&& o) noexcept {
  if (this != &o) {
    if (state_) XXH3_freeState(static_cast<XXH3_state_t*>(state_));
    state_ = o.state_;
    o.state_ = nullptr;
  }
  return *this;
}
void Hasher::update(const void* data, uint64_t n) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
}
uint64_t Hasher::digest() const { return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_)); }

std::string Hasher::save() const {
  const auto* st = static_cast<const XXH3_state_t*>(state_);
  return std::string(reinterpret_cast<const char*>(st), sizeof(XXH3_state_t));
}

void Hasher::restore(const std::string& bytes) {
  MB_CHECK(bytes.size() == sizeof(XXH3_state_t), "a saved hash state of {} bytes, expected {}",
           bytes.size(), sizeof(XXH3_state_t));
  auto* st = static_cast<XXH3_state_t*>(state_);
  // The one pointer in the state, to the default secret, is only valid in the
  // process that saved it: keep ours (both streams use the default secret).
  XXH3_64bits_reset(st);
  const unsigned char* secret = st->extSecret;
  std::memcpy(st, bytes.data(), sizeof(XXH3_state_t));
  st->extSecret = secret;
}

uint64_t hash_bytes(const void* data, uint64_t n) { return XXH3_64bits(data, n); }

namespace {
std::atomic<uint64_t> g_hash_file_storage_bytes{0};
}  // namespace

uint64_t hash_file_storage_bytes() { return g_hash_file_storage_bytes.load(); }

// Per thread: a checksum pass may run beside the conversion (export).
// Scopes nest (a checksum pass that hashes a file inside another pass):
// only the outermost counts, or the same bytes would count twice.
namespace {
thread_local int t_checksum_scope_depth = 0;
}
ChecksumReadScope::ChecksumReadScope()
    : start_(t_checksum_scope_depth++ == 0 ? read_thread_io_counters().read_bytes : 0) {}
ChecksumReadScope::~ChecksumReadScope() {
  if (--t_checksum_scope_depth > 0) return;
  const uint64_t now = read_thread_io_counters().read_bytes;
  if (now > start_) g_hash_file_storage_bytes += now - start_;
}

uint64_t hash_file(const std::filesystem::path& path, uint64_t block_bytes) {
  const ChecksumReadScope counted;
  File f(path, File::Mode::Read);
  const uint64_t size = f.size();
  std::vector<char> buf(std::min<uint64_t>(block_bytes, std::max<uint64_t>(size, 1)));
  Hasher h;
  for (uint64_t off = 0; off < size;) {
    uint64_t n = std::min<uint64_t>(buf.size(), size - off);
    f.pread_exact(buf.data(), n, off);
    h.update(buf.data(), n);
    off += n;
  }
  return h.digest();
}

std::string hash_hex(uint64_t h) { return fmt::format("{:016x}", h); }

uint64_t hash_from_hex(const std::string& s) {
  MB_CHECK(s.size() == 16, "malformed checksum '{}' (expected 16 hex digits)", s);
  return std::stoull(s, nullptr, 16);
}

}  // namespace mb
