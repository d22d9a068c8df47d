// CRC-32C against its standard check value, and BlockChecksum against its
// definition (four quarter CRCs, mixed by one more CRC), at awkward sizes.
#include "cache/crc32c.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/support/fake_blob_source.h"

namespace regfs::testing {
namespace {

TEST(Crc32cTest, CheckValue) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  // Incremental equals one-shot.
  EXPECT_EQ(Crc32c("6789", 4, Crc32c("12345", 5)), 0xE3069283u);
}

TEST(Crc32cTest, BlockChecksumMatchesItsDefinition) {
  std::string data = RandomBytes(40000, 3);
  for (size_t n : {0, 1, 7, 31, 32, 33, 100, 4095, 32768, 32771, 40000}) {
    const auto* p = reinterpret_cast<const uint8_t*>(data.data());
    const size_t q = (n / 4) & ~size_t{7};
    uint32_t lanes[4] = {Crc32c(p, q), Crc32c(p + q, q), Crc32c(p + 2 * q, q),
                         Crc32c(p + 3 * q, n - 3 * q)};
    uint8_t mix[16];
    for (int i = 0; i < 16; ++i) mix[i] = static_cast<uint8_t>(lanes[i / 4] >> (8 * (i % 4)));
    EXPECT_EQ(BlockChecksum(p, n), Crc32c(mix, 16)) << n;
  }
  // A flipped bit anywhere changes it.
  std::string copy = data.substr(0, 32768);
  const uint32_t good = BlockChecksum(copy.data(), copy.size());
  for (size_t pos : {0, 8191, 8192, 20000, 32767}) {
    copy[pos] ^= 1;
    EXPECT_NE(BlockChecksum(copy.data(), copy.size()), good) << pos;
    copy[pos] ^= 1;
  }
}

}  // namespace
}  // namespace regfs::testing
