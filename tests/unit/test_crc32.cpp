// core/crc32.hpp against zlib's crc32_z, the CRC-32 that zip readers (and so
// torch.load) check: the standard check value, buffers of many lengths and
// alignments, and the same bytes fed in uneven chunks.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <random>
#include <vector>

#include "core/crc32.hpp"

using namespace mb;

namespace {
uint32_t zlib_crc(const unsigned char* p, size_t n) {
  return static_cast<uint32_t>(crc32_z(0, p, static_cast<z_size_t>(n)));
}
}  // namespace

TEST(Crc32, StandardCheckValue) {
  const char* s = "123456789";  // CRC-32/ISO-HDLC check value
  EXPECT_EQ(crc32_update(0, s, 9), 0xCBF43926u);
  EXPECT_EQ(crc32_update(0, s, 0), 0u);
  EXPECT_EQ(crc32_update(0x12345678u, s, 0), 0x12345678u);  // nothing added
}

TEST(Crc32, SameAsZlibForEveryLengthAndOffset) {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> buf((1 << 20) + 64);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t n : {1ul, 2ul, 3ul, 7ul, 15ul, 16ul, 17ul, 63ul, 64ul, 65ul, 255ul, 256ul, 1000ul,
                   4095ul, 4096ul, 4097ul, 65537ul, size_t{1} << 20})
    for (size_t off : {0ul, 1ul, 3ul, 8ul, 33ul}) {
      const unsigned char* p = buf.data() + off;
      EXPECT_EQ(crc32_update(0, p, n), zlib_crc(p, n)) << n << " bytes at offset " << off;
    }
}

TEST(Crc32, ChunksGiveTheWholesValue) {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> buf(3 << 20);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  const uint32_t whole = zlib_crc(buf.data(), buf.size());
  for (int trial = 0; trial < 20; ++trial) {
    uint32_t crc = 0;
    size_t at = 0;
    while (at < buf.size()) {
      const size_t n = std::min<size_t>(buf.size() - at, rng() % (trial < 10 ? 97 : 300000));
      crc = crc32_update(crc, buf.data() + at, n);
      at += n;
    }
    EXPECT_EQ(crc, whole) << "trial " << trial;
  }
}
