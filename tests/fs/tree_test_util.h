// Helpers for the tree tests: hand-made tar entries, path walks, and a dump
// of a subtree as "path type" lines (iterative, so deep trees are fine).
#ifndef REGFS_TESTS_FS_TREE_TEST_UTIL_H_
#define REGFS_TESTS_FS_TREE_TEST_UTIL_H_

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fs/tree.h"
#include "reader/base/log.h"
#include "reader/layer/layer_index.h"

namespace regfs::testing {

inline TarEntry TDir(std::string path, uint32_t mode = 0755) {
  TarEntry e;
  e.path = std::move(path);
  e.type = EntryType::kDirectory;
  e.mode = mode;
  return e;
}

inline TarEntry TFile(std::string path, uint64_t size = 1, uint64_t offset = 0) {
  TarEntry e;
  e.path = std::move(path);
  e.type = EntryType::kRegular;
  e.mode = 0644;
  e.size = size;
  e.data_offset = offset;
  return e;
}

inline TarEntry TSym(std::string path, std::string target) {
  TarEntry e;
  e.path = std::move(path);
  e.type = EntryType::kSymlink;
  e.mode = 0777;
  e.link_target = std::move(target);
  return e;
}

inline TarEntry TLink(std::string path, std::string target) {
  TarEntry e;
  e.path = std::move(path);
  e.type = EntryType::kHardLink;
  e.mode = 0644;
  e.link_target = std::move(target);
  return e;
}

inline LayerIndex IndexOf(std::vector<TarEntry> entries) {
  LayerIndex idx;
  idx.entries = std::move(entries);
  return idx;
}

// The inode at `path` ("a/b/c") below `root`, or 0.
inline Ino Walk(const Tree& t, Ino root, std::string_view path) {
  Ino cur = root;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view name = path.substr(0, slash);
    Result<Ino> next = t.Lookup(cur, name);
    if (!next.ok()) return 0;
    cur = *next;
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
  }
  return cur;
}

inline char TypeChar(uint32_t mode, uint64_t rdev) {
  if (S_ISDIR(mode)) return 'd';
  if (S_ISLNK(mode)) return 'l';
  if (S_ISCHR(mode)) return rdev == makedev(0, 0) ? 'w' : 'c';
  if (S_ISBLK(mode)) return 'b';
  if (S_ISFIFO(mode)) return 'p';
  return 'f';
}

// Every path below `root` as "path T" (T from TypeChar), in listing order
// (depth first, names sorted). Walks with an explicit stack.
inline std::vector<std::string> Dump(const Tree& t, Ino root) {
  std::vector<std::string> out;
  std::vector<std::pair<std::string, Ino>> stack{{"", root}};  // to list
  while (!stack.empty()) {
    std::string path = std::move(stack.back().first);
    Ino ino = stack.back().second;
    stack.pop_back();
    if (!path.empty()) {
      Result<Node> n = t.Get(ino);
      if (!n.ok()) continue;
      out.push_back(path + " " + TypeChar(n->attr.mode, n->attr.rdev));
      if (!S_ISDIR(n->attr.mode)) continue;
    }
    std::vector<std::pair<std::string, Ino>> kids;
    (void)t.ReadDir(ino, 2, [&](const DirEntry& e, uint64_t) {
      kids.emplace_back(path.empty() ? e.name : path + "/" + e.name, e.ino);
      return true;
    });
    for (auto it = kids.rbegin(); it != kids.rend(); ++it) stack.push_back(std::move(*it));
  }
  return out;
}

// Captures log lines while alive (open_memstream: no file descriptor).
class LogCapture {
 public:
  LogCapture() : f_(open_memstream(&buf_, &len_)) { SetLogFile(f_); }
  ~LogCapture() {
    SetLogFile(nullptr);
    std::fclose(f_);
    std::free(buf_);
  }
  std::string Text() {
    std::fflush(f_);
    return std::string(buf_, len_);
  }
  size_t Lines() {
    std::string s = Text();
    size_t n = 0;
    for (char c : s) n += c == '\n';
    return n;
  }

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  std::FILE* f_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_FS_TREE_TEST_UTIL_H_
