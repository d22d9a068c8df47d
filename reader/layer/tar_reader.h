// TarReader: walks a tar stream (already decompressed) entry by entry and
// yields fully resolved entries: PAX 'x'/'g' records and GNU 'L'/'K' long
// names applied, paths cleaned, data offsets recorded. It never reads entry
// data itself; it skips it through the stream.
//
// Policy on odd input (each case logs one line):
//  - '..' in a path or hard-link target, NUL in a path: entry skipped.
//  - GNU sparse ('S' or PAX GNU.sparse.*): entry skipped (Unsupported).
//  - unknown type flags, volume labels, multi-volume parts: entry skipped.
//  - uid/gid beyond 32 bits: entry skipped.
//  - end of stream without the end-of-archive zero block: accepted.
// Fatal (Corrupt, the walk stops): bad header checksum, malformed numbers or
// PAX records, a PAX / long-name block above its cap, data cut short.
#ifndef REGFS_READER_LAYER_TAR_READER_H_
#define REGFS_READER_LAYER_TAR_READER_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "reader/base/status.h"
#include "reader/layer/tar_header.h"

namespace regfs {

// A sequential byte stream (an uncompressed tar). Not thread-safe.
class TarStream {
 public:
  virtual ~TarStream() = default;
  // Reads up to out.size() bytes; fewer only at the end of the stream.
  virtual Result<size_t> Read(std::span<uint8_t> out) = 0;
  // Skips up to n bytes; fewer only at the end of the stream.
  virtual Result<uint64_t> Skip(uint64_t n) = 0;
  // Bytes read or skipped so far (the uncompressed offset).
  virtual uint64_t Position() const = 0;
};

// One tar member as an extraction tool would create it.
struct TarEntry {
  std::string path;  // cleaned, relative; "" is the archive root ("./")
  EntryType type = EntryType::kRegular;
  uint32_t mode = 0;  // permission bits incl. setuid/setgid/sticky (07777)
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string uname;
  std::string gname;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  // Regular files: the data's size and uncompressed offset in the layer.
  // Hard links (after index building): those of the link's target.
  uint64_t size = 0;
  uint64_t data_offset = 0;
  // Symlink: the target verbatim. Hard link: the cleaned path of the target.
  std::string link_target;
  uint32_t dev_major = 0;  // char / block devices
  uint32_t dev_minor = 0;
  // Extended attributes (PAX SCHILY.xattr.*), name -> raw value bytes.
  std::vector<std::pair<std::string, std::string>> xattrs;

  bool operator==(const TarEntry&) const = default;
};

struct TarReaderStats {
  uint64_t entries = 0;          // entries returned
  uint64_t skipped = 0;          // entries skipped by policy (logged)
  uint64_t skipped_sparse = 0;   // of which GNU sparse
  bool saw_end_marker = false;   // the zero block was present
};

class TarReader {
 public:
  // Caps on metadata blocks read into memory.
  static constexpr uint64_t kMaxPaxSize = 8 << 20;
  static constexpr uint64_t kMaxLongNameSize = 1 << 20;

  explicit TarReader(TarStream* stream) : stream_(stream) {}

  // Next entry into *out: true, or false at the end of the archive.
  Result<bool> Next(TarEntry* out);
  const TarReaderStats& stats() const { return stats_; }

 private:
  Result<std::string> ReadBlockData(uint64_t size, uint64_t cap, const char* what);
  Status SkipData(uint64_t n);
  void ResetPending();

  TarStream* stream_;
  TarReaderStats stats_;
  uint64_t pending_skip_ = 0;  // data + padding of the previous entry
  bool done_ = false;
  PaxRecords global_pax_;
  PaxRecords local_pax_;
  std::string long_name_;
  std::string long_link_;
  bool have_long_name_ = false;
  bool have_long_link_ = false;
};

}  // namespace regfs

#endif  // REGFS_READER_LAYER_TAR_READER_H_
