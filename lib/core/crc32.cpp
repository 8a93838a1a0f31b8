#include "core/crc32.hpp"

#include <isa-l/crc.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mb {
namespace {

#if defined(__x86_64__)
// ISA-L's AVX-512 CRC returns with the upper halves of the vector registers
// in use (no vzeroupper), and the SSE code that runs next on the thread (XXH3
// from libxxhash, on the same bytes) then pays a state-transition penalty:
// XXH3 over 1 MiB blocks went from 0.06 to 0.20 s per GiB after it, which
// ate the whole gain of the faster CRC. Cleared on CPUs that have the state.
__attribute__((target("avx"))) void clear_upper_vector_state() { _mm256_zeroupper(); }
bool has_avx() {
  __builtin_cpu_init();  // a static initializer may run before the runtime's own
  return __builtin_cpu_supports("avx");
}
const bool kHasAvx = has_avx();
#endif

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, uint64_t n) {
  if (n == 0) return crc;
  crc = crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), n);
#if defined(__x86_64__)
  if (kHasAvx) clear_upper_vector_state();
#endif
  return crc;
}

}  // namespace mb
