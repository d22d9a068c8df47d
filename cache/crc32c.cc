#include "cache/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace regfs {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli polynomial

constexpr std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kTable = MakeTable();

uint32_t Crc32cSoftware(const uint8_t* p, size_t n, uint32_t crc) {
  for (size_t i = 0; i < n; ++i) crc = kTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const uint8_t* p, size_t n,
                                                            uint32_t crc) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

__attribute__((target("sse4.2"))) void Crc32c4Hardware(const uint8_t* p, size_t q, size_t n,
                                                      uint32_t out[4]) {
  uint64_t c0 = ~0u, c1 = ~0u, c2 = ~0u, c3 = ~0u;
  for (size_t k = 0; k < q; k += 8) {
    uint64_t v0, v1, v2, v3;
    std::memcpy(&v0, p + k, 8);
    std::memcpy(&v1, p + q + k, 8);
    std::memcpy(&v2, p + 2 * q + k, 8);
    std::memcpy(&v3, p + 3 * q + k, 8);
    c0 = _mm_crc32_u64(c0, v0);
    c1 = _mm_crc32_u64(c1, v1);
    c2 = _mm_crc32_u64(c2, v2);
    c3 = _mm_crc32_u64(c3, v3);
  }
  out[0] = ~static_cast<uint32_t>(c0);
  out[1] = ~static_cast<uint32_t>(c1);
  out[2] = ~static_cast<uint32_t>(c2);
  out[3] = ~Crc32cHardware(p + 4 * q, n - 4 * q, static_cast<uint32_t>(c3));
}

bool HaveSse42() {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (HaveSse42()) return ~Crc32cHardware(p, n, crc);
#endif
  return ~Crc32cSoftware(p, n, crc);
}

uint32_t BlockChecksum(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  const size_t q = (n / 4) & ~size_t{7};
  uint32_t lanes[4];
#if defined(__x86_64__)
  if (HaveSse42()) {
    Crc32c4Hardware(p, q, n, lanes);
  } else
#endif
  {
    lanes[0] = Crc32c(p, q);
    lanes[1] = Crc32c(p + q, q);
    lanes[2] = Crc32c(p + 2 * q, q);
    lanes[3] = Crc32c(p + 3 * q, n - 3 * q);
  }
  uint8_t mix[16];
  for (int i = 0; i < 4; ++i) {
    for (int b = 0; b < 4; ++b) mix[i * 4 + b] = static_cast<uint8_t>(lanes[i] >> (8 * b));
  }
  return Crc32c(mix, sizeof mix);
}

}  // namespace regfs
