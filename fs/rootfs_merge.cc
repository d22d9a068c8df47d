#include "fs/rootfs_merge.h"

#include <sys/sysmacros.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace regfs {
namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr std::string_view kOpaqueXattrs[] = {"trusted.overlay.opaque", "user.overlay.opaque"};

// The merged view while it is built; emitted into the Tree at the end.
struct MNode {
  Ino src = 0;  // the layer inode giving attributes (dirs) or everything (others)
  uint32_t layer = 0;
  bool dir = false;
  std::map<std::string, std::unique_ptr<MNode>> kids;
};

class Merger {
 public:
  Merger(Tree& tree, WhiteoutMode mode) : tree_(tree), mode_(mode) {}

  void ApplyLayer(Ino layer_root, uint32_t layer) {
    root_.src = layer_root;
    root_.dir = true;
    ApplyDir(layer_root, layer, &root_);
  }

  MergeStats Emit(Ino rootfs) {
    if (root_.src) CopyDirAttr(rootfs, root_.src);
    EmitDir(root_, rootfs);
    return stats_;
  }

 private:
  struct Kid {
    std::string name;
    Ino ino;
    Node node;
  };

  bool IsOverlayWhiteout(const Node& n) const {
    return mode_ == WhiteoutMode::kOverlay && S_ISCHR(n.attr.mode) && n.attr.rdev == makedev(0, 0);
  }
  bool HasOpaqueXattr(const Node& n) const {
    if (mode_ != WhiteoutMode::kOverlay || !n.xattrs) return false;
    for (const auto& kv : *n.xattrs) {
      if (kv.first == kOpaqueXattrs[0] && kv.second == "y") return true;
    }
    return false;
  }

  void ApplyDir(Ino layer_dir, uint32_t layer, MNode* merged) {
    std::vector<Kid> kids;
    (void)tree_.ReadDir(layer_dir, 2, [&](const DirEntry& de, uint64_t) {
      Result<Node> n = tree_.Get(de.ino);
      if (n.ok()) kids.push_back({de.name, de.ino, std::move(*n)});
      return true;
    });
    Result<Node> self = tree_.Get(layer_dir);
    // Whiteouts first: they hide lower layers only, never this layer's names.
    bool opaque = (self.ok() && HasOpaqueXattr(*self));
    for (const Kid& k : kids) {
      if (k.name == kOpaqueMarker) opaque = true;
    }
    if (opaque) {
      ++stats_.opaque;
      for (auto it = merged->kids.begin(); it != merged->kids.end();) {
        it = it->second->layer < layer ? merged->kids.erase(it) : std::next(it);
      }
    }
    for (const Kid& k : kids) {
      std::string hidden;
      if (k.name == kOpaqueMarker) continue;
      if (k.name.rfind(kWhiteoutPrefix, 0) == 0) {
        hidden = k.name.substr(kWhiteoutPrefix.size());
      } else if (IsOverlayWhiteout(k.node)) {
        hidden = k.name;
      } else {
        continue;
      }
      auto it = merged->kids.find(hidden);
      if (it != merged->kids.end() && it->second->layer < layer) {
        merged->kids.erase(it);
        ++stats_.whiteouts;
      }
    }
    for (const Kid& k : kids) {
      if (k.name == kOpaqueMarker || k.name.rfind(kWhiteoutPrefix, 0) == 0 ||
          IsOverlayWhiteout(k.node)) {
        continue;
      }
      std::unique_ptr<MNode>& slot = merged->kids[k.name];
      bool is_dir = S_ISDIR(k.node.attr.mode);
      if (slot && !(is_dir && slot->dir)) {
        ++stats_.replaced;
        slot.reset();
      }
      if (!slot) {
        slot = std::make_unique<MNode>();
        slot->dir = is_dir;
        slot->src = k.ino;
      } else if (!(k.node.flags & Node::kImplicitDir)) {
        slot->src = k.ino;  // an upper layer's own entry: its attributes win
      }
      slot->layer = layer;
      if (is_dir) ApplyDir(k.ino, layer, slot.get());
    }
  }

  void CopyDirAttr(Ino dst, Ino src) {
    Result<Node> s = tree_.Get(src);
    if (!s.ok()) return;
    std::shared_ptr<const Xattrs> x = s->xattrs;
    if (x && mode_ == WhiteoutMode::kOverlay) {
      auto filtered = std::make_shared<Xattrs>();
      for (const auto& kv : *x) {
        if (kv.first != kOpaqueXattrs[0] && kv.first != kOpaqueXattrs[1]) filtered->push_back(kv);
      }
      x = filtered->empty() ? nullptr : filtered;
    }
    NodeAttr a = s->attr;
    tree_.Update(dst, [&](Node& n) {
      uint32_t nlink = n.attr.nlink;
      n.attr = a;
      n.attr.nlink = nlink;
      n.xattrs = x;
    });
  }

  void EmitDir(const MNode& m, Ino dir) {
    for (const auto& [name, kid] : m.kids) {
      ++stats_.entries;
      if (kid->dir) {
        Node n;
        n.attr.mode = S_IFDIR | 0755;
        n.attr.nlink = 2;
        Ino ino = tree_.AddChild(dir, name, std::move(n));
        CopyDirAttr(ino, kid->src);
        EmitDir(*kid, ino);
        continue;
      }
      Result<Node> src = tree_.Get(kid->src);
      if (!src.ok()) continue;
      if (src->attr.nlink <= 1) {
        tree_.Link(dir, name, kid->src, /*count_link=*/false);
        continue;
      }
      // A hard-linked inode: one rootfs inode per group, counting its
      // surviving names.
      auto it = groups_.find(kid->src);
      if (it == groups_.end()) {
        Node n = *src;
        n.attr.nlink = 1;
        groups_[kid->src] = tree_.AddChild(dir, name, std::move(n));
      } else {
        tree_.Link(dir, name, it->second);
      }
    }
  }

  Tree& tree_;
  WhiteoutMode mode_;
  MNode root_;
  std::unordered_map<Ino, Ino> groups_;
  MergeStats stats_;
};

}  // namespace

MergeStats MergeLayers(Tree& tree, const std::vector<Ino>& layer_roots, Ino rootfs,
                       WhiteoutMode mode) {
  Merger m(tree, mode);
  for (size_t i = 0; i < layer_roots.size(); ++i) {
    m.ApplyLayer(layer_roots[i], static_cast<uint32_t>(i));
  }
  return m.Emit(rootfs);
}

}  // namespace regfs
