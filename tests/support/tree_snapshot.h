// A directory tree's full observable state, for comparing a regfs view with
// an oracle's extraction (bsdtar -x, umoci unpack): every path's type, mode,
// owner, size, mtime (ns), link target, device number, xattrs, content
// sha256, and which paths share an inode (hard links).
#ifndef REGFS_TESTS_SUPPORT_TREE_SNAPSHOT_H_
#define REGFS_TESTS_SUPPORT_TREE_SNAPSHOT_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace regfs::testing {

struct PathState {
  uint32_t mode = 0;  // type and permission bits
  uint32_t uid = 0, gid = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t rdev = 0;
  uint32_t nlink = 0;
  std::string link_target;
  std::string content_sha256;              // regular files
  std::map<std::string, std::string> xattrs;
  std::string hardlink_group;              // first path (sorted) sharing the inode
};

struct SnapshotOptions {
  bool content = true;          // hash regular files
  bool xattrs = true;
  bool dir_mtimes = true;       // compare directory mtimes
  bool dir_sizes = false;       // directory st_size is filesystem-specific
  // Xattr name prefixes to ignore (e.g. "security.selinux").
  std::vector<std::string> ignore_xattr_prefixes;
  std::set<std::string> ignore_paths;  // relative paths left out (and below them)
};

using TreeSnapshot = std::map<std::string, PathState>;  // relative path -> state

// Walks `root` without following symlinks. Paths are relative ("" = root).
TreeSnapshot SnapshotTree(const std::string& root, const SnapshotOptions& opts = {});

// Human-readable differences, at most `max_lines`; empty when equal.
std::string DiffSnapshots(const TreeSnapshot& want, const TreeSnapshot& got,
                          const SnapshotOptions& opts = {}, size_t max_lines = 40);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_TREE_SNAPSHOT_H_
