#include "fs/rootfs_merge.h"

#include <sys/sysmacros.h>

#include <map>
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
constexpr std::string_view kOpaqueXattrs[] = {"trusted.overlay.opaque", "user.overlay.opaque"};
constexpr uint32_t kNone = UINT32_MAX;

// The merged view while it is built; emitted into the Tree at the end. Flat:
// nodes refer to each other by index, so nothing (building, walking or
// freeing) recurses in proportion to depth. Nodes a later layer replaces
// stay in the vector until the merge ends.
struct MNode {
  Ino src = 0;  // the layer inode giving attributes (dirs) or everything (others)
  uint32_t layer = 0;
  uint32_t kids = 0;  // directories: 1 + index into Merger::kids_
};

class Merger {
 public:
  Merger(Tree& tree, WhiteoutMode mode, const MergeLimits& limits)
      : tree_(tree), mode_(mode), limits_(limits) {
    nodes_.push_back(MNode{});
    kids_.emplace_back();
    nodes_[0].kids = 1;
  }

  void ApplyLayer(Ino layer_root, uint32_t layer) {
    nodes_[0].src = layer_root;
    pending_.clear();
    // Depth first with an explicit stack of (layer directory, merged node).
    std::vector<Step> stack{{layer_root, 0, kNone}};
    while (!stack.empty()) {
      Step step = stack.back();
      stack.pop_back();
      ApplyDir(step, layer, &stack);
    }
  }

  MergeStats Emit(Ino rootfs);

 private:
  struct Kid {
    std::string name;
    Ino ino;
    Node node;
  };
  using Children = std::map<std::string, uint32_t>;
  // A layer directory to apply: onto merged node `merged`, or (kNone) onto
  // the directory pending_[pending] stands for.
  struct Step {
    Ino dir;
    uint32_t merged;
    uint32_t pending;
  };
  // As in the tar: a directory the layer only implied, that the merged view
  // does not have (as a directory) yet. Extraction (umoci) makes a parent
  // only for an entry that is not a whiteout, so it is made when the first
  // such entry below it is (Materialize), and never if it holds only
  // whiteouts (`.wh.gone`, then `gone/.wh.inner`). One left empty (the
  // entry that implied it was skipped) is made too.
  struct Pending {
    uint32_t parent_merged;   // kNone: below parent_pending
    uint32_t parent_pending;
    std::string name;
    Ino src;
    uint32_t merged = kNone;  // once made
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
  // As in the tar: `.wh.` names are whiteouts, never entries.
  bool IsWhiteoutName(std::string_view name) const {
    return mode_ == WhiteoutMode::kAsInTar && name.substr(0, kWhiteoutPrefix.size()) == kWhiteoutPrefix;
  }
  Children& KidsOf(uint32_t id) { return kids_[nodes_[id].kids - 1]; }

  uint32_t NewNode(Ino src, uint32_t layer, bool dir) {
    if (nodes_.size() - 1 >= limits_.max_entries) {
      if (!over_limit_) {
        LOG_WARN("rootfs: over the limit of " + std::to_string(limits_.max_entries) +
                 " entries: skipping the rest");
      }
      over_limit_ = true;
      ++stats_.skipped;
      return kNone;
    }
    MNode n;
    n.src = src;
    n.layer = layer;
    if (dir) {
      kids_.emplace_back();
      n.kids = static_cast<uint32_t>(kids_.size());
    }
    nodes_.push_back(n);
    return static_cast<uint32_t>(nodes_.size() - 1);
  }

  // The merged node pending_[p] stands for, made (with its pending
  // parents) if it is not yet; kNone over the limits.
  uint32_t Materialize(uint32_t p, uint32_t layer) {
    std::vector<uint32_t> chain;  // p and its unmade pending parents, p first
    for (uint32_t q = p; q != kNone && pending_[q].merged == kNone;
         q = pending_[q].parent_pending) {
      chain.push_back(q);
    }
    for (size_t i = chain.size(); i-- > 0;) {
      Pending& pd = pending_[chain[i]];
      uint32_t parent =
          pd.parent_merged != kNone ? pd.parent_merged : pending_[pd.parent_pending].merged;
      if (parent == kNone) return kNone;
      // What the name holds in the merged view is not a directory (it would
      // not be pending otherwise): the new directory replaces it.
      auto it = KidsOf(parent).find(pd.name);
      if (it != KidsOf(parent).end()) {
        ++stats_.replaced;
        KidsOf(parent).erase(it);
      }
      uint32_t id = NewNode(pd.src, layer, /*dir=*/true);  // may grow kids_
      if (id == kNone) return kNone;
      KidsOf(parent)[pd.name] = id;
      pending_[chain[i]].merged = id;  // pd may dangle: NewNode does not grow pending_
    }
    return pending_[p].merged;
  }

  void ApplyDir(Step step, uint32_t layer, std::vector<Step>* stack) {
    uint32_t merged = step.merged != kNone ? step.merged : pending_[step.pending].merged;
    std::vector<Kid> kids;
    (void)tree_.ReadDir(step.dir, 2, [&](const DirEntry& de, uint64_t) {
      kids.push_back({de.name, de.ino, Node{}});
      return true;
    });
    for (Kid& k : kids) {
      Result<Node> n = tree_.Get(k.ino);
      if (n.ok()) k.node = std::move(*n);
    }
    // An implied directory left empty (its entry was skipped) was implied by
    // something that is not a whiteout: it stays, as in overlay form.
    if (merged == kNone && kids.empty()) {
      Materialize(step.pending, layer);
      return;
    }
    // Whiteouts first: they hide lower layers only, never this layer's
    // names, wherever they come in the tar (OCI image-spec; umoci). In a
    // directory not made yet there is nothing below to hide.
    if (merged != kNone) {
      Result<Node> self = tree_.Get(step.dir);
      bool opaque = self.ok() && HasOpaqueXattr(*self);
      for (const Kid& k : kids) {
        if (mode_ == WhiteoutMode::kAsInTar && k.name == kOpaqueMarker) opaque = true;
      }
      Children& mk = KidsOf(merged);
      if (opaque) {
        ++stats_.opaque;
        for (auto it = mk.begin(); it != mk.end();) {
          it = nodes_[it->second].layer < layer ? mk.erase(it) : std::next(it);
        }
      }
      for (const Kid& k : kids) {
        std::string_view hidden;
        if (IsWhiteoutName(k.name)) {
          if (k.name == kOpaqueMarker) continue;
          hidden = std::string_view(k.name).substr(kWhiteoutPrefix.size());
        } else if (IsOverlayWhiteout(k.node) ||
                   (mode_ == WhiteoutMode::kOverlay && (k.node.flags & Node::kReplacedWhiteout))) {
          hidden = k.name;
        } else {
          continue;
        }
        auto it = mk.find(std::string(hidden));
        if (it != mk.end() && nodes_[it->second].layer < layer) {
          mk.erase(it);
          ++stats_.whiteouts;
        }
      }
    }
    for (const Kid& k : kids) {
      if (IsWhiteoutName(k.name) || IsOverlayWhiteout(k.node)) continue;
      bool is_dir = S_ISDIR(k.node.attr.mode);
      uint32_t slot = kNone;
      if (merged != kNone) {
        auto it = KidsOf(merged).find(k.name);
        if (it != KidsOf(merged).end()) slot = it->second;
      }
      // As in the tar, a directory the layer only implied waits until
      // something that is not a whiteout needs it.
      if (mode_ == WhiteoutMode::kAsInTar && is_dir && (k.node.flags & Node::kImplicitDir) &&
          !(slot != kNone && nodes_[slot].kids)) {
        Pending pd;
        pd.parent_merged = merged;
        pd.parent_pending = merged == kNone ? step.pending : kNone;
        pd.name = k.name;
        pd.src = k.ino;
        pending_.push_back(std::move(pd));
        stack->push_back({k.ino, kNone, static_cast<uint32_t>(pending_.size() - 1)});
        continue;
      }
      if (merged == kNone) {
        merged = Materialize(step.pending, layer);
        if (merged == kNone) return;  // over the limits
      }
      auto it = KidsOf(merged).find(k.name);
      if (slot != kNone && !(is_dir && nodes_[slot].kids)) {
        ++stats_.replaced;
        KidsOf(merged).erase(it);
        slot = kNone;
      }
      if (slot == kNone) {
        slot = NewNode(k.ino, layer, is_dir);  // may grow kids_: no references held
        if (slot == kNone) continue;
        KidsOf(merged)[k.name] = slot;
      } else if (!(k.node.flags & Node::kImplicitDir)) {
        nodes_[slot].src = k.ino;  // an upper layer's own entry: its attributes win
      }
      nodes_[slot].layer = layer;
      if (is_dir) stack->push_back({k.ino, slot, kNone});
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

  Tree& tree_;
  WhiteoutMode mode_;
  MergeLimits limits_;
  bool over_limit_ = false;
  std::vector<MNode> nodes_;  // [0] is rootfs/ itself
  std::vector<Children> kids_;
  std::vector<Pending> pending_;  // this layer's
  MergeStats stats_;
};

MergeStats Merger::Emit(Ino rootfs) {
  if (nodes_[0].src) CopyDirAttr(rootfs, nodes_[0].src);
  // Hard-linked layer inodes: one rootfs inode per group, counting its
  // surviving names.
  std::unordered_map<Ino, Ino> groups;
  // Depth first with an explicit stack; each directory's names go in sorted
  // order, so every AddChild is an append.
  std::vector<std::pair<uint32_t, Ino>> stack{{0, rootfs}};
  while (!stack.empty()) {
    auto [id, dir] = stack.back();
    stack.pop_back();
    for (const auto& [name, kid] : KidsOf(id)) {
      const MNode& m = nodes_[kid];
      ++stats_.entries;
      if (m.kids) {
        Node n;
        n.attr.mode = S_IFDIR | 0755;
        n.attr.nlink = 2;
        Ino ino = tree_.AddChild(dir, name, std::move(n));
        if (ino == 0) continue;
        CopyDirAttr(ino, m.src);
        stack.emplace_back(kid, ino);
        continue;
      }
      Result<Node> src = tree_.Get(m.src);
      if (!src.ok()) continue;
      if (src->attr.nlink <= 1) {
        tree_.Link(dir, name, m.src, /*count_link=*/false);
        continue;
      }
      auto it = groups.find(m.src);
      if (it == groups.end()) {
        Node n = *src;
        n.attr.nlink = 1;
        groups[m.src] = tree_.AddChild(dir, name, std::move(n));
      } else {
        tree_.Link(dir, name, it->second);
      }
    }
  }
  return stats_;
}

}  // namespace

MergeStats MergeLayers(Tree& tree, const std::vector<Ino>& layer_roots, Ino rootfs,
                       WhiteoutMode mode, const MergeLimits& limits) {
  Merger m(tree, mode, limits);
  for (size_t i = 0; i < layer_roots.size(); ++i) {
    m.ApplyLayer(layer_roots[i], static_cast<uint32_t>(i));
  }
  return m.Emit(rootfs);
}

}  // namespace regfs
