// Shared by layer_tree_fuzz and rootfs_merge_fuzz: turns fuzz bytes into
// tar entry lists (names drawn mostly from a small set, so that paths
// collide, replace and white each other out; now and then hostile ones:
// over NAME_MAX, PATH_MAX, NUL, ".", "..", `.wh.`, thousands of levels), and
// checks a tree's invariants with an iterative walk.
#ifndef REGFS_TESTS_FUZZ_TREE_FUZZ_UTIL_H_
#define REGFS_TESTS_FUZZ_TREE_FUZZ_UTIL_H_

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "fs/tree.h"
#include "reader/layer/layer_index.h"

namespace regfs::fuzz {

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  uint8_t Next() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

inline std::string Component(Bytes& in) {
  static const char* const kNames[] = {"a",    "b",    "c",  ".wh.a", ".wh.b", ".wh..wh..opq",
                                       ".wh.", ".wh..", ".", "..",    "",      "d",
                                       ".wh.d", "x"};
  constexpr unsigned kCount = sizeof(kNames) / sizeof(kNames[0]);
  uint8_t s = in.Next();
  if (s < 224) return kNames[s % kCount];
  switch (s & 15) {
    case 0: return std::string(256, 'n');
    case 1: return std::string(255, 'm');
    case 2: {  // raw bytes
      std::string raw;
      for (uint8_t len = in.Next() % 16; len > 0; --len) raw.push_back(static_cast<char>(in.Next()));
      return raw;
    }
    case 3: return std::string("n\0l", 3);
    case 4: return ".wh." + std::string(252, 'w');
    default: return "e" + std::to_string(s & 15);
  }
}

inline std::string Path(Bytes& in) {
  uint8_t d = in.Next();
  if (d == 255) {  // very deep: past PATH_MAX or just under it
    uint32_t levels = 1500 + 100u * (in.Next() % 200);
    std::string p;
    for (uint32_t i = 0; i < levels; ++i) p += "a/";
    return p + Component(in);
  }
  std::string p;
  for (int i = 0, n = d % 5 + 1; i < n; ++i) {
    if (i) p += '/';
    p += Component(in);
  }
  return p;
}

// One layer's entries, until the input ends, an end-of-layer byte comes, or
// `max` entries.
inline std::vector<TarEntry> Entries(Bytes& in, size_t max) {
  std::vector<TarEntry> out;
  while (!in.empty() && out.size() < max) {
    uint8_t t = in.Next();
    if (t == 0xff) break;  // end of this layer
    TarEntry e;
    e.mode = 0755;
    e.mtime_sec = t;
    e.uid = t & 3;
    switch (t % 9) {
      case 0: e.type = EntryType::kDirectory; break;
      case 1:
      case 2: e.type = EntryType::kRegular; e.size = t; e.data_offset = t * 512u; break;
      case 3: e.type = EntryType::kSymlink; break;
      case 4: e.type = EntryType::kHardLink; break;
      case 5: e.type = EntryType::kCharDevice; e.dev_major = t & 16 ? 1 : 0; break;
      case 6: e.type = EntryType::kFifo; break;
      case 7: e.type = EntryType::kDirectory; e.xattrs = {{"user.x", "1"}}; break;
      case 8: e.type = EntryType::kRegular; e.size = 0; break;
    }
    e.path = (t % 9 == 0 && (t & 0x80) && (t & 0x40)) ? std::string() : Path(in);
    if (e.type == EntryType::kHardLink) e.link_target = Path(in);
    if (e.type == EntryType::kSymlink) {
      e.link_target = (t & 0x40) ? std::string(4096, 't') : "target";
    }
    out.push_back(std::move(e));
  }
  return out;
}

[[noreturn]] inline void Fail(const std::string& what) {
  std::fprintf(stderr, "invariant broken: %s\n", what.c_str());
  std::abort();
}

// Walks everything below `root` (explicit stack): every directory lists;
// names are valid, unique and sorted; Lookup agrees with ReadDir; no
// directory is reached twice. Returns the number of names seen.
inline uint64_t CheckTree(const Tree& t, Ino root) {
  uint64_t names = 0;
  std::unordered_set<Ino> seen_dirs{root};
  std::vector<Ino> stack{root};
  while (!stack.empty()) {
    Ino dir = stack.back();
    stack.pop_back();
    std::vector<std::pair<std::string, Ino>> kids;
    Status s = t.ReadDir(dir, 2, [&](const DirEntry& e, uint64_t) {
      kids.emplace_back(e.name, e.ino);
      return true;
    });
    if (!s.ok()) Fail("a directory does not list: " + s.ToString());
    for (size_t i = 0; i < kids.size(); ++i) {
      const auto& [name, ino] = kids[i];
      ++names;
      if (name.empty() || name.size() > 255 || name == "." || name == ".." ||
          name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
        Fail("bad name '" + name + "'");
      }
      if (i > 0 && !(kids[i - 1].first < name)) Fail("names not sorted/unique at '" + name + "'");
      Result<Ino> found = t.Lookup(dir, name);
      if (!found.ok() || *found != ino) Fail("Lookup disagrees with ReadDir for '" + name + "'");
      Result<Node> n = t.Get(ino);
      if (!n.ok()) Fail("a listed inode is missing");
      if (S_ISDIR(n->attr.mode)) {
        if (!seen_dirs.insert(ino).second) Fail("a directory is reached twice");
        stack.push_back(ino);
      }
    }
  }
  return names;
}

}  // namespace regfs::fuzz

#endif  // REGFS_TESTS_FUZZ_TREE_FUZZ_UTIL_H_
