// TarReader: walks a tar stream (already decompressed) entry by entry and
// yields fully resolved entries: PAX 'x'/'g' records and GNU 'L'/'K' long
// names applied, paths cleaned, data offsets recorded. It never reads entry
// data itself; it skips it through the stream.
//
// Policy on odd input (each case logs one line; after the first 100 such
// lines per archive the rest are logged at debug level, so a hostile layer
// cannot flood the log):
//  - a path that a Linux unpack would fail: '..' component, NUL, a component
//    over 255 bytes, over 4096 bytes in all (also for hard-link targets and
//    symlink targets): entry skipped.
//  - GNU sparse ('S' or PAX GNU.sparse.*): entry skipped (Unsupported).
//  - unknown type flags, volume labels, multi-volume parts: entry skipped.
//  - uid/gid beyond 32 bits: entry skipped.
//  - a PAX 'x' block (or a run of them) over kMaxPaxSize, a GNU long name or
//    link over kMaxLongNameSize: not read into memory; the entry it describes
//    is skipped.
//  - global PAX 'g' records change no entry (as Go's archive/tar, which
//    containers/storage and so podman use, and bsdtar; GNU tar applies
//    them). Up to kMaxGlobalPaxSize of them in all are parsed and kept (see
//    global_pax()); a 'g' block beyond that is skipped unread and counted in
//    `skipped`.
//  - xattrs beyond Linux's limits (name over 255 bytes, value over 64 KiB) or
//    ours (over 128 per entry, over 64 KiB of names + values per entry):
//    those xattrs are dropped, the entry is kept.
//  - end of stream without the end-of-archive zero block: accepted.
// Entry types '1'-'6' (and a v7 '\0' entry whose name ends in '/') carry no
// data whatever their size field says: the next header follows at once.
// Fatal (Corrupt, the walk stops): bad header checksum, malformed numbers or
// PAX records, data cut short.
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
  uint64_t ignored_global_pax = 0;  // 'g' blocks beyond the cap (also in `skipped`)
  uint64_t dropped_xattrs = 0;      // xattrs beyond the per-entry limits
};

class TarReader {
 public:
  // Caps on metadata read into memory. 1 MiB of PAX per entry is what Go's
  // archive/tar allows (it fails the archive beyond; we skip the entry):
  // room for a 4 KiB path and link and 64 KiB of xattrs written twice
  // (bsdtar adds LIBARCHIVE.xattr.* beside SCHILY.xattr.*).
  static constexpr uint64_t kMaxPaxSize = 1 << 20;
  static constexpr uint64_t kMaxGlobalPaxSize = 64 << 10;
  static constexpr uint64_t kMaxLongNameSize = 64 << 10;
  // Linux: NAME_MAX, PATH_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX.
  static constexpr size_t kMaxNameComponent = 255;
  static constexpr size_t kMaxPath = 4096;
  static constexpr size_t kMaxXattrName = 255;
  static constexpr size_t kMaxXattrValue = 64 << 10;
  // Ours, per entry.
  static constexpr size_t kMaxXattrs = 128;
  static constexpr size_t kMaxXattrBytes = 64 << 10;  // names + values

  explicit TarReader(TarStream* stream) : stream_(stream) {}

  // Next entry into *out: true, or false at the end of the archive.
  Result<bool> Next(TarEntry* out);
  const TarReaderStats& stats() const { return stats_; }
  // The global PAX records seen (at most kMaxGlobalPaxSize of them in all).
  // They are not applied to entries; kept for diagnostics.
  const PaxRecords& global_pax() const { return global_pax_; }

 private:
  Result<std::string> ReadBlockData(uint64_t size, const char* what);
  Status SkipData(uint64_t n);
  void ResetPending();
  // Logs why an entry (or a global header) is skipped and counts it.
  void Skipped(const std::string& why);

  TarStream* stream_;
  TarReaderStats stats_;
  uint64_t pending_skip_ = 0;  // data + padding of the previous entry
  bool done_ = false;
  PaxRecords global_pax_;
  uint64_t global_pax_bytes_ = 0;
  PaxRecords local_pax_;
  uint64_t local_pax_bytes_ = 0;
  // Why the next entry must be skipped (its metadata was over a cap); empty
  // when it need not be.
  std::string skip_next_;
  std::string long_name_;
  std::string long_link_;
  bool have_long_name_ = false;
  bool have_long_link_ = false;
  uint64_t warnings_ = 0;
};


}  // namespace regfs

#endif  // REGFS_READER_LAYER_TAR_READER_H_
