// Tar headers: the pure, allocation-bounded pieces of tar parsing. One 512-byte
// header block -> RawTarHeader (ustar / GNU / v7, octal or base-256 numbers,
// checksum verified as both unsigned and signed sums), PAX extended-header
// records -> key/value pairs, and path cleaning. The sequencing of headers
// (PAX x/g, GNU L/K, data skipping) lives in tar_reader.h.
//
// Failure: a header that is not a valid tar header (bad checksum, garbage in a
// numeric field) is Corrupt; a PAX record block that is malformed is Corrupt.
// Nothing here trusts a size from the input for an allocation.
#ifndef REGFS_READER_LAYER_TAR_HEADER_H_
#define REGFS_READER_LAYER_TAR_HEADER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "reader/base/status.h"

namespace regfs {

inline constexpr size_t kTarBlockSize = 512;
// Sizes above this are rejected as absurd (2^62 bytes = 4 EiB); they are
// never used for allocation in any case.
inline constexpr uint64_t kMaxTarEntrySize = uint64_t{1} << 62;

// The kinds of entries a layer tree can hold (contiguous files are regular).
enum class EntryType : uint8_t {
  kRegular = 0,
  kHardLink = 1,
  kSymlink = 2,
  kCharDevice = 3,
  kBlockDevice = 4,
  kDirectory = 5,
  kFifo = 6,
};
const char* EntryTypeName(EntryType type);

// One header block, decoded but not yet combined with PAX / GNU long names.
struct RawTarHeader {
  std::string name;      // ustar prefix + "/" + name when the prefix is set
  std::string linkname;
  uint32_t mode = 0;     // the full mode field (permission + setuid/gid/sticky bits)
  uint64_t uid = 0;
  uint64_t gid = 0;
  uint64_t size = 0;     // bytes of data that follow the header (rounded up to 512)
  int64_t mtime = 0;     // seconds since the epoch
  char typeflag = '0';
  std::string uname;
  std::string gname;
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  bool is_ustar = false;  // "ustar\0" magic (POSIX)
  bool is_gnu = false;    // "ustar  \0" magic (GNU)
  // GNU 'S' (old sparse): the header says extension blocks follow.
  bool gnu_sparse_extended = false;
};

// True when all 512 bytes are zero (an end-of-archive block).
bool IsZeroBlock(std::span<const uint8_t, kTarBlockSize> block);

// Decodes one header block. Corrupt on checksum mismatch or malformed numbers.
Result<RawTarHeader> ParseTarHeader(std::span<const uint8_t, kTarBlockSize> block);

// A numeric header field: octal (space/NUL terminated, leading spaces allowed)
// or GNU base-256 (high bit of the first byte set). Corrupt when malformed or
// out of int64 range. Exposed for tests and fuzzing.
Result<int64_t> ParseTarNumber(std::span<const uint8_t> field);

// PAX extended-header records ("%d %s=%s\n"), in order. Values may hold any
// bytes (SCHILY.xattr.* values are binary). Corrupt on malformed records.
using PaxRecords = std::vector<std::pair<std::string, std::string>>;
Result<PaxRecords> ParsePaxRecords(std::string_view data);

// A PAX time ("1700000000.123456789", may be negative) -> seconds + ns.
// Corrupt when malformed.
Result<std::pair<int64_t, uint32_t>> ParsePaxTime(std::string_view s);

// Cleans an archive member path to a relative path without "." components,
// duplicate or trailing slashes: "./a//b/" -> "a/b", "/etc" -> "etc",
// "./" -> "" (the root). nullopt when a ".." component appears (the entry
// must be skipped, as extraction tools refuse it).
std::optional<std::string> CleanTarPath(std::string_view path);

}  // namespace regfs

#endif  // REGFS_READER_LAYER_TAR_HEADER_H_
