#include "fs/layer_tree.h"

#include <sys/sysmacros.h>

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "reader/base/log.h"

namespace regfs {
namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr size_t kNameMax = 255;   // NAME_MAX
constexpr size_t kPathMax = 4096;  // PATH_MAX, counting the terminating NUL
// Per-entry skip lines logged per layer; the rest are counted in one line.
constexpr uint64_t kMaxSkipLines = 100;
// Estimated Tree bytes per node (its packed record and directory entry; a
// directory also has a child list), before its name and side-table data.
constexpr uint64_t kNodeBytes = 96;
constexpr uint64_t kDirBytes = 24;
constexpr uint32_t kNoEntry = std::numeric_limits<uint32_t>::max();

bool IsWhiteoutName(std::string_view name) {
  return name.substr(0, kWhiteoutPrefix.size()) == kWhiteoutPrefix;
}

// Why `name` cannot be a directory entry on Linux, or nullptr.
const char* BadName(std::string_view name) {
  if (name.empty()) return "an empty name";
  if (name == "." || name == "..") return "'.' or '..' as a name";
  if (name.size() > kNameMax) return "a name longer than NAME_MAX (255 bytes)";
  if (name.find('\0') != std::string_view::npos) return "NUL in a name";
  return nullptr;
}

// The layer as extraction leaves it, before it goes into the Tree. Names are
// views into the index's paths, which outlive the builder.
struct SNode {
  enum Kind : uint8_t { kImplicitDir, kDir, kEntry, kWhiteout };
  uint32_t entry = kNoEntry;  // index.entries: attributes (kDir, kEntry, kWhiteout)
  uint32_t dir = 0;           // directories: 1 + index into dirs_
  uint32_t link_headers = 0;  // kApplyLinkHeader: 1 + index into link_headers_
  Kind kind = kImplicitDir;
  bool opaque = false;        // overlay: the directory held `.wh..wh..opq`
  bool shared = false;        // a hard link names it too
  bool replaced_whiteout = false;  // overlay: a directory made over `.wh.x`
  bool IsDir() const { return kind == kImplicitDir || kind == kDir; }
};

class Builder {
 public:
  Builder(Tree& tree, Ino root, uint32_t layer, const LayerIndex& index, WhiteoutMode mode,
          HardLinkMetadata links, const LayerTreeLimits& limits)
      : tree_(tree),
        root_(root),
        layer_(layer),
        index_(index),
        mode_(mode),
        links_(links),
        limits_(limits),
        tree_bytes_(tree.MemoryBytes()) {
    nodes_.push_back(SNode{});  // the layer root, id 0
    nodes_[0].dir = NewDir();
  }

  void Replay() {
    const size_t n = std::min<size_t>(index_.entries.size(), kNoEntry - 1);
    for (size_t i = 0; i < n; ++i) {
      if (over_limit_) {
        ++stats_.skipped;
        ++stats_.over_limit;
        continue;
      }
      Add(static_cast<uint32_t>(i));
    }
  }

  void Emit();

  LayerTreeStats stats() const { return stats_; }

 private:
  using Children = std::map<std::string_view, uint32_t>;

  uint32_t NewDir() {
    dirs_.emplace_back();
    return static_cast<uint32_t>(dirs_.size());
  }
  Children& KidsOf(uint32_t id) { return dirs_[nodes_[id].dir - 1]; }

  // A new node, or kNoEntry when a limit is reached (logged once; every
  // later entry is skipped too).
  uint32_t NewNode(SNode n, uint64_t bytes) {
    bytes += kNodeBytes + (n.IsDir() ? kDirBytes : 0);
    if (nodes_.size() - 1 >= limits_.max_entries ||
        tree_bytes_ + added_bytes_ + bytes > limits_.max_tree_bytes) {
      if (!over_limit_) {
        LOG_WARN("layer " + std::to_string(layer_) + ": over the limit of " +
                 std::to_string(limits_.max_entries) + " entries or " +
                 std::to_string(limits_.max_tree_bytes) +
                 " tree bytes: skipping this entry and the rest of the layer");
      }
      over_limit_ = true;
      return kNoEntry;
    }
    added_bytes_ += bytes;
    if (n.IsDir()) n.dir = NewDir();
    nodes_.push_back(n);
    return static_cast<uint32_t>(nodes_.size() - 1);
  }

  void Add(uint32_t i) {
    const TarEntry& e = index_.entries[i];
    if (e.path.empty()) {  // "./": the layer root itself
      if (e.type == EntryType::kDirectory) {
        nodes_[0].kind = SNode::kDir;
        nodes_[0].entry = i;
      }
      return;
    }
    if (e.path.size() >= kPathMax) return Skip(e, "path longer than PATH_MAX (4096 bytes)");
    if ((e.type == EntryType::kSymlink || e.type == EntryType::kHardLink) &&
        e.link_target.size() >= kPathMax) {
      return Skip(e, "link target longer than PATH_MAX (4096 bytes)");
    }
    size_t slash = e.path.rfind('/');
    if (slash == 0) return Skip(e, "empty path component");
    std::string_view dir_path =
        slash == std::string::npos ? std::string_view() : std::string_view(e.path).substr(0, slash);
    std::string_view name =
        slash == std::string::npos ? std::string_view(e.path) : std::string_view(e.path).substr(slash + 1);
    if (const char* bad = BadName(name)) return Skip(e, bad);
    const char* why = nullptr;
    // Entries of one directory usually come together: the last parent is
    // reused while no name was removed or replaced since (a deep path is
    // then not walked again for each of its siblings).
    const bool overlay_whiteout = mode_ == WhiteoutMode::kOverlay && IsWhiteoutName(name);
    uint32_t parent;
    if (dir_path == last_dir_ && generation_ == last_generation_) {
      parent = last_parent_;
    } else {
      parent = Resolve(dir_path, overlay_whiteout ? kWhiteoutParent : kCreate, &why);
      if (parent != kNoEntry) {
        last_dir_ = dir_path;
        last_parent_ = parent;
        last_generation_ = generation_;
      }
    }
    if (parent == kNoEntry) {
      if (over_limit_) return CountOverLimit();
      // `rm -rf gone` leaves `.wh.gone` and then `gone/.wh.inner` in some
      // tools' layers: extraction's mknod of the second fails with ENOTDIR,
      // which containers/storage ignores (the parent is deleted already).
      if (why == kBelowOwnWhiteout) return;
      return Skip(e, why);
    }
    Children& kids = KidsOf(parent);
    if (overlay_whiteout) {
      if (name == kOpaqueMarker) {
        nodes_[parent].opaque = true;
        ++stats_.whiteouts;
        return;
      }
      std::string_view hidden = name.substr(kWhiteoutPrefix.size());
      if (const char* bad_hidden = BadName(hidden)) {
        return Skip(e, std::string("whiteout of an invalid name: ") + bad_hidden);
      }
      // mknod(x, S_IFCHR, 0): whatever x was in this layer is gone.
      SNode w;
      w.kind = SNode::kWhiteout;
      w.entry = i;
      uint32_t id = NewNode(w, hidden.size());
      if (id == kNoEntry) return CountOverLimit();
      auto [slot, added] = KidsOf(parent).try_emplace(hidden, id);
      if (!added) {
        slot->second = id;
        ++generation_;
      }
      ++stats_.whiteouts;
      return;
    }
    auto it = kids.find(name);
    if (it != kids.end() && e.type == EntryType::kDirectory && nodes_[it->second].IsDir()) {
      // A directory over a directory: they merge; the later header's
      // attributes apply.
      nodes_[it->second].kind = SNode::kDir;
      nodes_[it->second].entry = i;
      ++stats_.entries;
      return;
    }
    // Anything else over an existing name: extraction removes it (with all
    // below it) first.
    bool over_whiteout = false;
    if (it != kids.end()) {
      over_whiteout = nodes_[it->second].kind == SNode::kWhiteout;
      kids.erase(it);
      ++generation_;
    }
    uint32_t id;
    if (e.type == EntryType::kHardLink) {
      uint32_t target = Resolve(e.link_target, kLookup, &why);
      if (target == kNoEntry || nodes_[target].IsDir()) {
        return Skip(e, "hard link to '" + Shorten(e.link_target) +
                           "', which is not in this layer (any more)");
      }
      id = target;
      nodes_[id].shared = true;
      if (links_ == HardLinkMetadata::kApplyLinkHeader) {
        if (!nodes_[id].link_headers) {
          link_headers_.emplace_back();
          nodes_[id].link_headers = static_cast<uint32_t>(link_headers_.size());
        }
        link_headers_[nodes_[id].link_headers - 1].push_back(i);
      }
      added_bytes_ += 16 + name.size();
    } else {
      SNode n;
      n.kind = e.type == EntryType::kDirectory ? SNode::kDir : SNode::kEntry;
      n.entry = i;
      n.replaced_whiteout = over_whiteout && n.kind == SNode::kDir;
      uint64_t bytes = name.size() + (e.type == EntryType::kSymlink ? 32 + e.link_target.size() : 0);
      for (const auto& [k, v] : e.xattrs) bytes += 64 + k.size() + v.size();
      id = NewNode(n, bytes);
      if (id == kNoEntry) return CountOverLimit();
    }
    KidsOf(parent)[name] = id;
    ++stats_.entries;
  }

  // How Resolve treats missing parents: kLookup finds only; kCreate makes
  // them (0755, root-owned, as extraction's MkdirAll does), also over a
  // whiteout device of this layer; kWhiteoutParent makes them too, but
  // fails with kBelowOwnWhiteout at such a device (overlay form only).
  enum ResolveMode { kLookup, kCreate, kWhiteoutParent };
  static constexpr const char* kBelowOwnWhiteout = "below a whiteout of this layer";

  // The node at `path` below the layer root, walking one component at a
  // time. kNoEntry with *why when a component is not a directory, invalid,
  // missing, or over the limits.
  uint32_t Resolve(std::string_view path, ResolveMode rmode, const char** why) {
    const bool create = rmode != kLookup;
    uint32_t cur = 0;
    while (!path.empty()) {
      size_t slash = path.find('/');
      std::string_view name = path.substr(0, slash);
      path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
      if (slash != std::string_view::npos && path.empty()) {
        *why = "empty path component";
        return kNoEntry;
      }
      if (!nodes_[cur].IsDir()) {
        *why = "its parent is not a directory";
        return kNoEntry;
      }
      if ((*why = BadName(name))) return kNoEntry;
      Children& kids = KidsOf(cur);
      auto it = kids.find(name);
      // Overlay form: a path below a whiteout of this layer (`.wh.x`, then
      // `x/y` with no `x/` header) would fail extraction with ENOTDIR; as in
      // the tar form, x becomes a new directory instead.
      bool over_whiteout = create && it != kids.end() && nodes_[it->second].kind == SNode::kWhiteout;
      if (over_whiteout && rmode == kWhiteoutParent) {
        *why = kBelowOwnWhiteout;
        return kNoEntry;
      }
      if (it != kids.end() && !over_whiteout) {
        cur = it->second;
        continue;
      }
      if (!create) {
        *why = "no such path";
        return kNoEntry;
      }
      SNode implicit;
      implicit.replaced_whiteout = over_whiteout;
      uint32_t id = NewNode(implicit, name.size());
      if (id == kNoEntry) return kNoEntry;
      if (over_whiteout) ++generation_;
      KidsOf(cur)[name] = id;
      ++stats_.implicit_dirs;
      cur = id;
    }
    if (!nodes_[cur].IsDir() && create) {
      *why = "its parent is not a directory";
      return kNoEntry;
    }
    return cur;
  }

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

  static void AddOpaque(Node& n) {
    auto x = n.xattrs ? std::make_shared<Xattrs>(*n.xattrs) : std::make_shared<Xattrs>();
    for (std::string_view key : {"trusted.overlay.opaque", "user.overlay.opaque"}) {
      if (std::none_of(x->begin(), x->end(), [&](const auto& kv) { return kv.first == key; })) {
        x->emplace_back(std::string(key), "y");
      }
    }
    n.xattrs = x;
  }

  // The Tree node for staged node `id` (not its children).
  Node MakeNode(uint32_t id) const {
    const SNode& s = nodes_[id];
    Node n;
    switch (s.kind) {
      case SNode::kImplicitDir:
        n.attr.mode = S_IFDIR | 0755;
        n.attr.nlink = 2;
        n.flags = Node::kImplicitDir;
        break;
      case SNode::kWhiteout: {
        // overlayfs: a 0:0 character device hides the name below; mknod
        // makes it with no permission bits, chown gives it the header's owner.
        const TarEntry& e = index_.entries[s.entry];
        n.attr.mode = S_IFCHR;
        n.attr.rdev = makedev(0, 0);
        n.attr.uid = e.uid;
        n.attr.gid = e.gid;
        n.attr.mtime_sec = e.mtime_sec;
        n.attr.mtime_nsec = e.mtime_nsec;
        break;
      }
      case SNode::kDir:
      case SNode::kEntry: {
        const TarEntry& e = index_.entries[s.entry];
        n.attr = AttrOf(e);
        n.xattrs = XattrsOf(e);
        if (e.type == EntryType::kRegular || e.type == EntryType::kHardLink) {
          n.kind = ContentKind::kLayerEntry;
          n.content_id = layer_;
          n.content_arg = e.data_offset;
        } else if (e.type == EntryType::kSymlink) {
          n.link_target = e.link_target;
        }
        if (s.link_headers) {
          for (uint32_t h : link_headers_[s.link_headers - 1]) ApplyLinkHeader(n, index_.entries[h]);
        }
        break;
      }
    }
    if (s.opaque) AddOpaque(n);
    if (s.replaced_whiteout) n.flags |= Node::kReplacedWhiteout;
    return n;
  }

  // podman's order: lchown, set xattrs, chmod and chtimes (the last two only
  // when the target is not a symlink).
  static void ApplyLinkHeader(Node& n, const TarEntry& e) {
    n.attr.uid = e.uid;
    n.attr.gid = e.gid;
    if (!e.xattrs.empty()) {
      auto x = n.xattrs ? std::make_shared<Xattrs>(*n.xattrs) : std::make_shared<Xattrs>();
      for (const auto& header_kv : e.xattrs) {
        const std::string& key = header_kv.first;
        auto same = std::find_if(x->begin(), x->end(), [&](const auto& kv) { return kv.first == key; });
        if (same != x->end()) {
          same->second = header_kv.second;
        } else {
          x->push_back(header_kv);
        }
      }
      n.xattrs = x;
    }
    if (S_ISLNK(n.attr.mode)) return;
    n.attr.mode = (n.attr.mode & S_IFMT) | (e.mode & 07777);
    n.attr.mtime_sec = e.mtime_sec;
    n.attr.mtime_nsec = e.mtime_nsec;
  }

  void Skip(const TarEntry& e, const std::string& why) {
    ++stats_.skipped;
    if (++skip_lines_ <= kMaxSkipLines) {
      LOG_WARN("layer " + std::to_string(layer_) + ": skipping '" + Shorten(e.path) + "': " + why);
    }
  }
  // Log lines stay short whatever the tar holds.
  static std::string Shorten(const std::string& s) {
    if (s.size() <= 512) return s;
    return s.substr(0, 512) + "...(" + std::to_string(s.size()) + " bytes)";
  }
  void CountOverLimit() {
    ++stats_.skipped;
    ++stats_.over_limit;
  }

  Tree& tree_;
  Ino root_;
  uint32_t layer_;
  const LayerIndex& index_;
  WhiteoutMode mode_;
  HardLinkMetadata links_;
  LayerTreeLimits limits_;
  uint64_t tree_bytes_;
  uint64_t added_bytes_ = 0;
  bool over_limit_ = false;
  uint64_t skip_lines_ = 0;
  std::vector<SNode> nodes_;
  std::vector<Children> dirs_;
  std::vector<std::vector<uint32_t>> link_headers_;
  // The last parent resolved, valid while generation_ (bumped whenever a
  // name is removed or replaced) is unchanged.
  std::string_view last_dir_;
  uint32_t last_parent_ = 0;
  uint64_t generation_ = 0;
  uint64_t last_generation_ = UINT64_MAX;
  LayerTreeStats stats_;
};

void Builder::Emit() {
  if (skip_lines_ > kMaxSkipLines) {
    LOG_WARN("layer " + std::to_string(layer_) + ": " + std::to_string(skip_lines_ - kMaxSkipLines) +
             " more entries skipped (not logged one by one)");
  }
  // The layer root exists already: it takes the root entry's attributes and
  // the opaque marker, keeping its link count (and any xattrs it has).
  if (nodes_[0].kind == SNode::kDir || nodes_[0].opaque) {
    Node staged = MakeNode(0);
    bool explicit_root = nodes_[0].kind == SNode::kDir;
    tree_.Update(root_, [&](Node& n) {
      if (explicit_root) {
        uint32_t nlink = n.attr.nlink;
        n.attr = staged.attr;
        n.attr.nlink = nlink;
        n.flags &= static_cast<uint8_t>(~Node::kImplicitDir);
      }
      if (staged.xattrs) {
        auto merged = std::make_shared<Xattrs>(*staged.xattrs);
        if (n.xattrs) {
          for (const auto& kv : *n.xattrs) {
            if (std::none_of(merged->begin(), merged->end(),
                             [&](const auto& m) { return m.first == kv.first; })) {
              merged->push_back(kv);
            }
          }
        }
        n.xattrs = merged;
      }
    });
  }
  // Shared (hard-linked) nodes: the inode made for their first name.
  std::unordered_map<uint32_t, Ino> emitted;
  // Depth first with an explicit stack; each directory's names go in sorted
  // order, so every AddChild is an append.
  std::vector<std::pair<uint32_t, Ino>> stack{{0, root_}};
  while (!stack.empty()) {
    auto [id, dir] = stack.back();
    stack.pop_back();
    for (const auto& [name, kid] : KidsOf(id)) {
      const SNode& s = nodes_[kid];
      if (s.shared) {
        auto done = emitted.find(kid);
        if (done != emitted.end()) {
          if (!tree_.Link(dir, std::string(name), done->second)) {
            LOG_WARN("layer " + std::to_string(layer_) + ": cannot link '" + std::string(name) +
                     "': the name exists already");
          }
          continue;
        }
      }
      bool existed = false;
      Ino ino = tree_.AddChild(dir, std::string(name), MakeNode(kid), &existed);
      if (existed) {
        // Only when the layer's directory had entries before this call.
        Result<Node> there = tree_.Get(ino);  // NotFound for 0
        if (!(s.IsDir() && there.ok() && S_ISDIR(there->attr.mode))) {
          LOG_WARN("layer " + std::to_string(layer_) + ": skipping '" + std::string(name) +
                   "': the name exists already");
          continue;
        }
      }
      if (s.shared) emitted[kid] = ino;
      if (s.IsDir()) stack.emplace_back(kid, ino);
    }
  }
}

}  // namespace

LayerTreeStats AddLayerEntries(Tree& tree, Ino root, uint32_t layer, const LayerIndex& index,
                               WhiteoutMode mode, HardLinkMetadata links,
                               const LayerTreeLimits& limits) {
  Builder b(tree, root, layer, index, mode, links, limits);
  b.Replay();
  b.Emit();
  return b.stats();
}

}  // namespace regfs
