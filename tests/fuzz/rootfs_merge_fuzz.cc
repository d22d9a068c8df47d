// libFuzzer target: several fuzzed layers -> AddLayerEntries -> MergeLayers,
// in both whiteout forms. rootfs/ must keep the tree invariants
// (tree_fuzz_util.h) and show no whiteouts; and when the layers avoid the
// cases where the two forms legitimately differ (listed in SameInBothForms),
// both forms must give the same rootfs/.
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fs/layer_tree.h"
#include "fs/rootfs_merge.h"
#include "reader/base/log.h"
#include "tests/fs/tree_test_util.h"
#include "tests/fuzz/tree_fuzz_util.h"

namespace {

using regfs::EntryType;
using regfs::TarEntry;

bool IsWhiteout(std::string_view name) { return name.substr(0, 4) == ".wh."; }

std::string_view Base(std::string_view p) {
  size_t s = p.rfind('/');
  return s == std::string_view::npos ? p : p.substr(s + 1);
}

bool Below(std::string_view path, std::string_view top) {
  return path == top || (path.size() > top.size() && path.substr(0, top.size()) == top &&
                         path[top.size()] == '/');
}

// Whether every component of `path` is a name an entry can have (and the
// path is short enough), so that an entry at `path` is not skipped for it.
bool ValidPath(std::string_view path) {
  if (path.empty() || path.size() >= 4096) return false;
  for (size_t start = 0;;) {
    size_t slash = path.find('/', start);
    std::string_view c = path.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (c.empty() || c == "." || c == ".." || c.size() > 255 ||
        c.find('\0') != std::string_view::npos) {
      return false;
    }
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

// The two forms see different things in: 0:0 devices (whiteouts only in
// overlay form), whiteout names that are not regular files or are parents,
// hard links to whiteout names; a whiteout after x (or a path below x) in
// its own layer (as in the tar it hides only lower layers, as umoci does;
// in overlay form the device replaced x); and a whiteout in a directory the
// layer only implies, unless an entry that is not a whiteout needs that
// directory too (as in the tar, whiteouts make no parents, as in umoci; in
// overlay form extraction's MkdirAll makes them).
bool SameInBothForms(const std::vector<std::vector<TarEntry>>& layers) {
  for (const auto& entries : layers) {
    for (size_t i = 0; i < entries.size(); ++i) {
      const TarEntry& e = entries[i];
      if (e.type == EntryType::kCharDevice && e.dev_major == 0) return false;
      if (e.type == EntryType::kHardLink && e.link_target.find(".wh.") != std::string::npos) {
        return false;
      }
      std::string_view path = e.path;
      std::string_view base = Base(path);
      if (path.substr(0, path.size() - base.size()).find(".wh.") != std::string_view::npos) return false;
      if (!IsWhiteout(base)) continue;
      if (e.type != EntryType::kRegular) return false;
      std::string_view parent = path.substr(0, path.size() - base.size());
      std::string hidden = std::string(parent) + std::string(base.substr(4));
      for (size_t j = 0; j < i; ++j) {
        if (Below(entries[j].path, hidden) ||
            (entries[j].type == EntryType::kHardLink && Below(entries[j].link_target, hidden))) {
          return false;
        }
      }
      if (parent.empty()) continue;
      parent.remove_suffix(1);  // the slash
      bool needed = false;
      for (size_t k = 0; k < entries.size() && !needed; ++k) {
        const TarEntry& o = entries[k];
        if (o.type == EntryType::kHardLink || IsWhiteout(Base(o.path)) || !ValidPath(o.path) ||
            o.link_target.size() >= 4096 || !Below(o.path, parent)) {
          continue;
        }
        // A later entry at o's path (or above it) removes o first; when that
        // entry is then skipped (a hard link to a missing name) nothing
        // replaces o, and whether the directory o implied stays is where the
        // forms part: extraction made it; the tar form makes it only for
        // what is left in it.
        bool removed_later = false;
        for (size_t j = k + 1; j < entries.size() && !removed_later; ++j) {
          removed_later = Below(o.path, entries[j].path);
        }
        needed = !removed_later;
      }
      if (!needed) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace regfs;
  SetLogLevel(LogLevel::kError);
  fuzz::Bytes in(data, size);
  uint8_t flags = in.Next();
  std::vector<std::vector<TarEntry>> layers;
  for (int i = 0, n = flags % 4 + 1; i < n; ++i) layers.push_back(fuzz::Entries(in, 256));
  std::vector<std::vector<std::string>> dumps;
  for (WhiteoutMode mode : {WhiteoutMode::kAsInTar, WhiteoutMode::kOverlay}) {
    Tree t;
    std::vector<Ino> roots;
    for (size_t i = 0; i < layers.size(); ++i) {
      Ino dir = t.AddDir(kRootIno, "layer" + std::to_string(i), 0755);
      LayerIndex index;
      index.entries = layers[i];
      AddLayerEntries(t, dir, static_cast<uint32_t>(i), index, mode);
      roots.push_back(dir);
    }
    Ino rootfs = t.AddDir(kRootIno, "rootfs", 0755);
    MergeLimits limits;
    if (flags & 0x80) limits.max_entries = (flags >> 2) & 0x1f;
    MergeStats ms = MergeLayers(t, roots, rootfs, mode, limits);
    fuzz::CheckTree(t, kRootIno);
    std::vector<std::string> dump = testing::Dump(t, rootfs);
    for (const std::string& line : dump) {
      std::string_view path(line.data(), line.size() - 2);
      char type = line.back();
      if (mode == WhiteoutMode::kAsInTar && IsWhiteout(Base(path))) fuzz::Fail("whiteout in rootfs: " + line);
      if (mode == WhiteoutMode::kOverlay && type == 'w') fuzz::Fail("0:0 device in rootfs: " + line);
    }
    if ((flags & 0x80) && ms.entries > limits.max_entries) fuzz::Fail("merge limit not kept");
    dumps.push_back(std::move(dump));
  }
  if (!(flags & 0x80) && dumps[0] != dumps[1] && SameInBothForms(layers)) {
    std::string msg = "the two whiteout forms give different rootfs/:\n";
    for (const auto& d : dumps) {
      for (const auto& l : d) msg += "  " + l.substr(0, 200) + "\n";
      msg += "  --\n";
    }
    fuzz::Fail(msg);
  }
  return 0;
}
