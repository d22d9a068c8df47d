// TarWriter: builds tar archives in memory for test layers, with every header
// form a layer parser meets in real images: ustar (with the prefix field),
// PAX extended headers (long path/linkpath, mtime with nanoseconds, large
// uid/gid, SCHILY.xattr.*), GNU long names ('L'/'K'), base-256 numbers, all
// entry types, whiteouts. No failure modes: any TarEntry is representable.
#ifndef REGFS_TESTS_SUPPORT_TAR_WRITER_H_
#define REGFS_TESTS_SUPPORT_TAR_WRITER_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace regfs::testing {

enum class TarType { kFile, kDir, kSymlink, kHardlink, kCharDev, kBlockDev, kFifo };

// How a name (or link target) that does not fit the 100-byte field is written.
enum class LongNameStyle {
  kPax,          // PAX "path"/"linkpath" records (what Go's archive/tar and buildkit write)
  kGnu,          // GNU ././@LongLink entries, type 'L' (name) and 'K' (link)
  kUstarPrefix,  // split into ustar prefix (155) + name (100) when possible, else PAX
};

struct TarEntry {
  TarType type = TarType::kFile;
  std::string path;         // relative, e.g. "etc/passwd"; a trailing '/' is added for dirs
  std::string content;      // kFile only
  std::string link_target;  // kSymlink, kHardlink
  uint32_t mode = 0644;     // permission bits including setuid/setgid/sticky (07777)
  uint64_t uid = 0, gid = 0;
  std::string uname, gname;
  int64_t mtime = 1700000000;  // seconds since the epoch
  uint32_t mtime_nsec = 0;     // non-zero -> a PAX "mtime" record with the fraction
  uint32_t dev_major = 0, dev_minor = 0;
  std::map<std::string, std::string> xattrs;  // written as PAX SCHILY.xattr.<name>
  LongNameStyle long_names = LongNameStyle::kPax;
  bool force_pax = false;  // write a PAX header even when nothing needs one

  static TarEntry File(std::string path, std::string content, uint32_t mode = 0644);
  static TarEntry Dir(std::string path, uint32_t mode = 0755);
  static TarEntry Symlink(std::string path, std::string target);
  static TarEntry Hardlink(std::string path, std::string target);
  static TarEntry CharDev(std::string path, uint32_t major, uint32_t minor, uint32_t mode = 0666);
  static TarEntry BlockDev(std::string path, uint32_t major, uint32_t minor, uint32_t mode = 0660);
  static TarEntry Fifo(std::string path, uint32_t mode = 0644);
  // "dir/name" -> an empty file "dir/.wh.name" (the overlay whiteout of name).
  static TarEntry Whiteout(std::string_view path);
  // "dir" -> "dir/.wh..wh..opq" (dir is opaque: lower layers' contents hidden).
  static TarEntry OpaqueWhiteout(std::string_view dir);
};

// Appends one entry (its extension headers, header and padded data) to `out`.
void AppendTarEntry(std::string* out, const TarEntry& entry);
// Appends the two zero blocks that end an archive.
void FinishTar(std::string* out);
// A whole archive.
std::string BuildTar(const std::vector<TarEntry>& entries);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_TAR_WRITER_H_
