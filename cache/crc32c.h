// CRC-32C (Castagnoli), the per-block checksum of cached chunks. Uses the
// SSE4.2 crc32 instruction when the CPU has it (checked once at run time) and
// a table-driven fallback otherwise. Cannot fail.
#ifndef REGFS_CACHE_CRC32C_H_
#define REGFS_CACHE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace regfs {

// Extends `crc` (0 to start) over data[0, n).
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The checksum of a cached block: the CRC-32C of the four little-endian
// CRC-32Cs of the block's quarters (q = (n / 4) rounded down to 8 bytes; the
// last quarter takes the tail). Four independent CRC chains run interleaved,
// about three times the speed of one Crc32c over the same bytes.
uint32_t BlockChecksum(const void* data, size_t n);

}  // namespace regfs

#endif  // REGFS_CACHE_CRC32C_H_
