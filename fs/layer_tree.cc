#include "fs/layer_tree.h"

#include <sys/sysmacros.h>

#include <algorithm>
#include <memory>
#include <string>
#include <unordered_map>

#include "reader/base/log.h"

namespace regfs {
namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";

std::pair<std::string_view, std::string_view> SplitPath(std::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return {"", path};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

class Builder {
 public:
  Builder(Tree& tree, Ino root, uint32_t layer, WhiteoutMode mode, HardLinkMetadata links)
      : tree_(tree), layer_(layer), mode_(mode), links_(links) {
    dirs_[""] = root;
  }

  void Add(const TarEntry& e) {
    if (e.path.empty()) {  // "./": the layer root itself
      if (e.type == EntryType::kDirectory) SetDirAttr(dirs_[""], e);
      return;
    }
    auto [dir, name] = SplitPath(e.path);
    Ino parent = EnsureDir(dir);
    if (parent == 0) {
      Skip(e, "its parent is not a directory");
      return;
    }
    if (mode_ == WhiteoutMode::kOverlay && name.substr(0, kWhiteoutPrefix.size()) == kWhiteoutPrefix) {
      AddWhiteout(parent, name, e);
      return;
    }
    Node n;
    n.attr = AttrOf(e);
    n.xattrs = XattrsOf(e);
    switch (e.type) {
      case EntryType::kDirectory: {
        bool existed = false;
        Ino ino = tree_.AddChild(parent, std::string(name), std::move(n), &existed);
        if (existed && !IsDir(ino)) {
          Skip(e, "a non-directory of that name came first");
          return;
        }
        if (existed) SetDirAttr(ino, e);
        dirs_[e.path] = ino;
        ++stats_.entries;
        return;
      }
      case EntryType::kHardLink: {
        auto it = files_.find(e.link_target);
        if (it == files_.end()) {
          Skip(e, "hard link to '" + e.link_target + "', which is not in this layer");
          return;
        }
        if (!tree_.Link(parent, std::string(name), it->second)) {
          Skip(e, "the name exists already");
          return;
        }
        files_[e.path] = it->second;
        if (links_ == HardLinkMetadata::kApplyLinkHeader) ApplyLinkHeader(it->second, e);
        ++stats_.entries;
        return;
      }
      case EntryType::kRegular:
        n.kind = ContentKind::kLayerEntry;
        n.content_id = layer_;
        n.content_arg = e.data_offset;
        break;
      case EntryType::kSymlink:
        n.link_target = e.link_target;
        break;
      default:
        break;
    }
    bool existed = false;
    Ino ino = tree_.AddChild(parent, std::string(name), std::move(n), &existed);
    if (existed) {
      Skip(e, "the name exists already");
      return;
    }
    files_[e.path] = ino;
    ++stats_.entries;
  }

  LayerTreeStats stats() const { return stats_; }

 private:
  static uint32_t TypeBits(EntryType t) {
    switch (t) {
      case EntryType::kRegular:
      case EntryType::kHardLink: return S_IFREG;
      case EntryType::kSymlink: return S_IFLNK;
      case EntryType::kCharDevice: return S_IFCHR;
      case EntryType::kBlockDevice: return S_IFBLK;
      case EntryType::kDirectory: return S_IFDIR;
      case EntryType::kFifo: return S_IFIFO;
    }
    return S_IFREG;
  }

  static NodeAttr AttrOf(const TarEntry& e) {
    NodeAttr a;
    a.mode = TypeBits(e.type) | (e.mode & 07777);
    a.uid = e.uid;
    a.gid = e.gid;
    a.nlink = e.type == EntryType::kDirectory ? 2 : 1;
    a.size = e.type == EntryType::kRegular ? e.size
             : e.type == EntryType::kSymlink ? e.link_target.size()
                                             : 0;
    if (e.type == EntryType::kCharDevice || e.type == EntryType::kBlockDevice) {
      a.rdev = makedev(e.dev_major, e.dev_minor);
    }
    a.mtime_sec = e.mtime_sec;
    a.mtime_nsec = e.mtime_nsec;
    return a;
  }

  static std::shared_ptr<const Xattrs> XattrsOf(const TarEntry& e) {
    if (e.xattrs.empty()) return nullptr;
    return std::make_shared<const Xattrs>(e.xattrs.begin(), e.xattrs.end());
  }

  bool IsDir(Ino ino) {
    Result<Node> n = tree_.Get(ino);
    return n.ok() && S_ISDIR(n->attr.mode);
  }

  void SetDirAttr(Ino ino, const TarEntry& e) {
    NodeAttr a = AttrOf(e);
    auto x = XattrsOf(e);
    tree_.Update(ino, [&](Node& n) {
      uint32_t nlink = n.attr.nlink;
      n.flags &= static_cast<uint8_t>(~Node::kImplicitDir);
      n.attr = a;
      n.attr.nlink = nlink;  // counts subdirectories already added
      if (x) {
        // Keep an opaque marker that a whiteout already set.
        if (n.xattrs) {
          auto merged = std::make_shared<Xattrs>(*x);
          for (const auto& kv : *n.xattrs) merged->push_back(kv);
          n.xattrs = merged;
        } else {
          n.xattrs = x;
        }
      }
    });
  }

  // The inode of directory `path`, creating parents the tar did not list
  // (0755, root-owned, as extraction does). 0 when a non-directory is in the way.
  Ino EnsureDir(std::string_view path) {
    auto it = dirs_.find(std::string(path));
    if (it != dirs_.end()) return it->second;
    auto [dir, name] = SplitPath(path);
    Ino parent = EnsureDir(dir);
    if (parent == 0) return 0;
    Node n;
    n.attr.mode = S_IFDIR | 0755;
    n.attr.nlink = 2;
    n.flags = Node::kImplicitDir;
    bool existed = false;
    Ino ino = tree_.AddChild(parent, std::string(name), std::move(n), &existed);
    if (existed && !IsDir(ino)) return 0;
    if (!existed) ++stats_.implicit_dirs;
    dirs_[std::string(path)] = ino;
    return ino;
  }

  void AddWhiteout(Ino parent, std::string_view name, const TarEntry& e) {
    ++stats_.whiteouts;
    if (name == kOpaqueMarker) {
      tree_.Update(parent, [](Node& n) {
        auto x = n.xattrs ? std::make_shared<Xattrs>(*n.xattrs) : std::make_shared<Xattrs>();
        x->emplace_back("trusted.overlay.opaque", "y");
        x->emplace_back("user.overlay.opaque", "y");
        n.xattrs = x;
      });
      return;
    }
    Node n;
    n.attr.mode = S_IFCHR;  // overlayfs: a 0:0 character device hides the name below
    n.attr.rdev = makedev(0, 0);
    n.attr.mtime_sec = e.mtime_sec;
    n.attr.mtime_nsec = e.mtime_nsec;
    std::string hidden(name.substr(kWhiteoutPrefix.size()));
    bool existed = false;
    tree_.AddChild(parent, hidden, std::move(n), &existed);
    if (existed) Skip(e, "whiteout of a name this layer also has");
  }

  // podman's order: lchown, set xattrs, chmod and chtimes (the last two only
  // when the target is not a symlink).
  void ApplyLinkHeader(Ino ino, const TarEntry& e) {
    tree_.Update(ino, [&](Node& n) {
      n.attr.uid = e.uid;
      n.attr.gid = e.gid;
      if (!e.xattrs.empty()) {
        auto x = n.xattrs ? std::make_shared<Xattrs>(*n.xattrs) : std::make_shared<Xattrs>();
        for (const auto& [key, value] : e.xattrs) {
          auto same = std::find_if(x->begin(), x->end(), [&](const auto& kv) { return kv.first == key; });
          if (same != x->end()) {
            same->second = value;
          } else {
            x->emplace_back(key, value);
          }
        }
        n.xattrs = x;
      }
      if (S_ISLNK(n.attr.mode)) return;
      n.attr.mode = (n.attr.mode & S_IFMT) | (e.mode & 07777);
      n.attr.mtime_sec = e.mtime_sec;
      n.attr.mtime_nsec = e.mtime_nsec;
    });
  }

  void Skip(const TarEntry& e, const std::string& why) {
    ++stats_.skipped;
    LOG_WARN("layer " + std::to_string(layer_) + ": skipping '" + e.path + "': " + why);
  }

  Tree& tree_;
  uint32_t layer_;
  WhiteoutMode mode_;
  HardLinkMetadata links_;
  std::unordered_map<std::string, Ino> dirs_;
  std::unordered_map<std::string, Ino> files_;
  LayerTreeStats stats_;
};

}  // namespace

LayerTreeStats AddLayerEntries(Tree& tree, Ino root, uint32_t layer, const LayerIndex& index,
                               WhiteoutMode mode, HardLinkMetadata links) {
  Builder b(tree, root, layer, mode, links);
  for (const TarEntry& e : index.entries) b.Add(e);
  return b.stats();
}

}  // namespace regfs
