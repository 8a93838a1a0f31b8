// CRC-32 as zip, gzip and zlib define it (reflected polynomial 0xEDB88320):
// every record of a torch.save archive, so every tensor of a torch_dist
// checkpoint, carries one over all its bytes, and torch.load and zip readers
// check it. zlib's crc32_z ran at about 4 GB/s here, a third of a 1-rank
// torch_dist import's CPU time; ISA-L's crc32_gzip_refl (carry-less multiply
// folding, chosen at run time for the CPU) gives the same values at about
// 30 GB/s (docs/performance.md, eighth round).
#pragma once

#include <cstdint>

namespace mb {

// The CRC-32 of `n` more bytes after `crc` (0 to start); chunks give the
// same value as the whole.
uint32_t crc32_update(uint32_t crc, const void* data, uint64_t n);

}  // namespace mb
