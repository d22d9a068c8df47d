// Helpers for tests that mount for real: whether FUSE works here, temp dirs.
#ifndef REGFS_TESTS_SUPPORT_FUSE_ENV_H_
#define REGFS_TESTS_SUPPORT_FUSE_ENV_H_

#include <sys/types.h>

#include <string>

namespace regfs::testing {

// Empty when /dev/fuse and fusermount3 are usable; else why not.
std::string FuseUnavailableReason();

// A fresh directory under $TMPDIR (or /tmp), removed recursively by the
// destructor (after a lazy unmount attempt, in case a test left a mount).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "regfs-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// True when `path` is a mount point (its st_dev differs from its parent's).
bool IsMountPoint(const std::string& path);

// Reads a whole file; empty optional-like: returns false on error.
bool ReadWholeFile(const std::string& path, std::string* out);

// lgetxattr(path, name) from a child process running as uid:gid `uid` (the
// parent directory is entered as root first, so the directories above it
// need not be open to that user). Returns the value's size, or -errno.
long GetxattrAs(uid_t uid, const std::string& path, const std::string& name);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_FUSE_ENV_H_
