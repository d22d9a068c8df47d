#include "fs/tree.h"

#include <algorithm>
#include <functional>
#include <mutex>

namespace regfs {

Tree::Tree() {
  segs_.push_back(std::make_unique<std::deque<Packed>>(2));
  Packed& root = At(kRootIno);
  root.parent = kRootIno;
  root.mode = S_IFDIR | 0555;
  root.nlink = 2;
  dirs_.emplace_back();
  root.dir = 1;
}

bool Tree::Valid(Ino ino) const {
  uint64_t seg = ino >> kSegmentShift;
  uint64_t idx = ino & kIndexMask;
  return ino != 0 && seg < segs_.size() && segs_[seg] && idx < segs_[seg]->size() &&
         (seg != 0 || idx != 0) && !((*segs_[seg])[idx].flags & kFreed);
}

uint32_t Tree::ChildSegment(Ino parent) const {
  auto it = child_seg_.find(parent);
  return it != child_seg_.end() ? it->second : static_cast<uint32_t>(parent >> kSegmentShift);
}

std::vector<Tree::Child>* Tree::Kids(Ino ino) {
  Packed& p = At(ino);
  return p.dir ? &dirs_[p.dir - 1] : nullptr;
}

const std::vector<Tree::Child>* Tree::Kids(Ino ino) const {
  const Packed& p = At(ino);
  return p.dir ? &dirs_[p.dir - 1] : nullptr;
}

std::pair<size_t, bool> Tree::Find(const std::vector<Child>& kids, std::string_view name) const {
  auto it = std::lower_bound(kids.begin(), kids.end(), name,
                             [this](const Child& c, std::string_view n) { return NameOf(c) < n; });
  return {static_cast<size_t>(it - kids.begin()), it != kids.end() && NameOf(*it) == name};
}

Tree::Child Tree::MakeChild(std::string_view name, Ino ino) {
  Child c{static_cast<uint32_t>(names_.size()), static_cast<uint32_t>(name.size()), ino};
  names_.append(name);
  return c;
}

void Tree::Store(Packed* p, const Node& n) {
  p->parent = n.parent;
  p->size = n.attr.size;
  p->mtime_sec = n.attr.mtime_sec;
  p->mtime_nsec = n.attr.mtime_nsec;
  p->mode = n.attr.mode;
  p->uid = n.attr.uid;
  p->gid = n.attr.gid;
  p->nlink = n.attr.nlink;
  bool device = S_ISCHR(n.attr.mode) || S_ISBLK(n.attr.mode);
  p->arg = device ? n.attr.rdev : n.content_arg;
  p->content_id = n.content_id;
  p->kind = n.kind;
  p->flags = n.flags;
  p->pending_id = n.pending_id;
  if (!n.link_target.empty()) {
    if (p->link) {
      links_[p->link - 1] = n.link_target;
    } else {
      if (!free_links_.empty()) {
        p->link = free_links_.back();
        free_links_.pop_back();
        links_[p->link - 1] = n.link_target;
      } else {
        links_.push_back(n.link_target);
        p->link = static_cast<uint32_t>(links_.size());
      }
    }
  }
  if (n.xattrs) {
    if (p->xattrs) {
      xattrs_[p->xattrs - 1] = n.xattrs;
    } else {
      if (!free_xattrs_.empty()) {
        p->xattrs = free_xattrs_.back();
        free_xattrs_.pop_back();
        xattrs_[p->xattrs - 1] = n.xattrs;
      } else {
        xattrs_.push_back(n.xattrs);
        p->xattrs = static_cast<uint32_t>(xattrs_.size());
      }
    }
  } else if (p->xattrs) {
    xattrs_[p->xattrs - 1] = nullptr;
  }
  if (S_ISDIR(n.attr.mode) && !p->dir) {
    if (!free_dirs_.empty()) {
      p->dir = free_dirs_.back();
      free_dirs_.pop_back();
    } else {
      dirs_.emplace_back();
      p->dir = static_cast<uint32_t>(dirs_.size());
    }
  }
}

Node Tree::Unpack(const Packed& p) const {
  Node n;
  n.parent = p.parent;
  n.attr.mode = p.mode;
  n.attr.uid = p.uid;
  n.attr.gid = p.gid;
  n.attr.nlink = p.nlink;
  n.attr.size = p.size;
  n.attr.mtime_sec = p.mtime_sec;
  n.attr.mtime_nsec = p.mtime_nsec;
  bool device = S_ISCHR(p.mode) || S_ISBLK(p.mode);
  n.attr.rdev = device ? p.arg : 0;
  n.content_arg = device ? 0 : p.arg;
  n.content_id = p.content_id;
  n.kind = p.kind;
  n.flags = p.flags;
  n.pending_id = p.pending_id;
  n.generation = p.generation;
  if (p.link) n.link_target = links_[p.link - 1];
  if (p.xattrs) n.xattrs = xattrs_[p.xattrs - 1];
  return n;
}

std::pair<size_t, bool> Tree::FindForInsert(const std::vector<Child>& kids,
                                            std::string_view name) const {
  // Layers are emitted in sorted order: appending is the common case, and
  // checking the last name first keeps it O(1) instead of a binary search.
  if (kids.empty() || NameOf(kids.back()) < name) return {kids.size(), false};
  return Find(kids, name);
}

Ino Tree::AddChildLocked(Ino parent, std::string_view name, const Node& node, bool* existed) {
  if (!Valid(parent)) {
    if (existed) *existed = true;  // no such directory: nothing can be added
    return 0;
  }
  std::vector<Child>* kids = Kids(parent);
  if (!kids) {
    if (existed) *existed = true;  // not a directory: nothing can be added
    return 0;
  }
  auto [pos, found] = FindForInsert(*kids, name);
  if (found) {
    if (existed) *existed = true;
    return (*kids)[pos].ino;
  }
  if (!NameFits(name)) {
    if (existed) *existed = true;  // refused like a name that is taken
    return 0;
  }
  uint32_t seg = ChildSegment(parent);
  if (seg >= segs_.size()) segs_.resize(seg + 1);
  if (!segs_[seg]) segs_[seg] = std::make_unique<std::deque<Packed>>();
  std::deque<Packed>& nodes = *segs_[seg];
  if (nodes.size() > kIndexMask) {
    if (existed) *existed = true;  // the segment is full: refused like a taken name
    return 0;
  }
  if (existed) *existed = false;
  Ino ino;
  if (seg == 0 && !free_nodes_.empty()) {
    // A freed number: the kernel forgot it (RemoveSubtree's contract), and
    // the new generation tells the two nodes apart.
    ino = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    ino = (static_cast<Ino>(seg) << kSegmentShift) | nodes.size();
    nodes.emplace_back();
  }
  Store(&At(ino), node);
  At(ino).parent = parent;
  ++count_;
  // Store() may have grown dirs_: take the parent's list again.
  kids = Kids(parent);
  kids->insert(kids->begin() + static_cast<ptrdiff_t>(pos), MakeChild(name, ino));
  if (S_ISDIR(node.attr.mode)) At(parent).nlink++;
  return ino;
}

Ino Tree::AddChild(Ino parent, std::string name, Node node, bool* existed) {
  std::unique_lock lock(mu_);
  return AddChildLocked(parent, name, node, existed);
}

Ino Tree::AddDir(Ino parent, std::string name, uint32_t perm) {
  Node n;
  n.attr.mode = S_IFDIR | perm;
  n.attr.nlink = 2;
  return AddChild(parent, std::move(name), std::move(n));
}

bool Tree::Link(Ino parent, std::string name, Ino target, bool count_link) {
  std::unique_lock lock(mu_);
  if (!Valid(target) || S_ISDIR(At(target).mode)) return false;
  if (!Valid(parent)) return false;
  std::vector<Child>* kids = Kids(parent);
  if (!kids) return false;
  auto [pos, found] = FindForInsert(*kids, name);
  if (found || !NameFits(name)) return false;
  kids->insert(kids->begin() + static_cast<ptrdiff_t>(pos), MakeChild(name, target));
  if (count_link) At(target).nlink++;
  return true;
}

void Tree::Update(Ino ino, const std::function<void(Node&)>& fn) {
  std::unique_lock lock(mu_);
  if (!Valid(ino)) return;
  Node n = Unpack(At(ino));
  fn(n);
  Store(&At(ino), n);
}

void Tree::SetPending(Ino dir, uint32_t id) {
  std::unique_lock lock(mu_);
  if (!Valid(dir)) return;
  At(dir).pending_id = id;
  // Its entries get inode numbers of their own segment, whenever they come.
  child_seg_[dir] = id;
}

void Tree::ClearPending(Ino dir) {
  std::unique_lock lock(mu_);
  if (Valid(dir)) At(dir).pending_id = 0;
}

void Tree::SetTimesAndOwner(Ino ino, int64_t mtime_sec, uint32_t uid, uint32_t gid) {
  std::unique_lock lock(mu_);
  if (!Valid(ino)) return;
  Packed& p = At(ino);
  p.mtime_sec = mtime_sec;
  p.uid = uid;
  p.gid = gid;
}

Result<Ino> Tree::LookupLocked(Ino parent, std::string_view name) const {
  if (!Valid(parent)) return Status::NotFound("no such inode");
  const Packed& p = At(parent);
  const std::vector<Child>* kids = Kids(parent);
  if (!kids) return Status::InvalidArgument("not a directory");
  if (name == ".") return parent;
  if (name == "..") return p.parent;
  auto [pos, found] = Find(*kids, name);
  if (!found) return Status::NotFound(std::string(name));
  return (*kids)[pos].ino;
}

Result<Ino> Tree::Lookup(Ino parent, std::string_view name) const {
  std::shared_lock lock(mu_);
  return LookupLocked(parent, name);
}

Result<Node> Tree::Get(Ino ino) const {
  std::shared_lock lock(mu_);
  if (!Valid(ino)) return Status::NotFound("no such inode");
  return Unpack(At(ino));
}

uint32_t Tree::PendingId(Ino ino) const {
  std::shared_lock lock(mu_);
  return Valid(ino) ? At(ino).pending_id : 0;
}

bool Tree::Contains(Ino ino) const {
  std::shared_lock lock(mu_);
  return Valid(ino);
}

Status Tree::ReadDir(Ino dir, uint64_t offset,
                     const std::function<bool(const DirEntry&, uint64_t)>& fn) const {
  // The callback runs without the lock: it may call back into the tree (the
  // merge does), and a shared_mutex must not be locked twice by one thread.
  // Entries are copied out in batches, so each batch costs one lock and a
  // listing stays linear in the directory's size.
  constexpr size_t kBatch = 256;
  Ino parent;
  {
    std::shared_lock lock(mu_);
    if (!Valid(dir)) return Status::NotFound("no such inode");
    if (!Kids(dir)) return Status::InvalidArgument("not a directory");
    parent = At(dir).parent;
  }
  if (offset == 0 && !fn({".", dir, S_IFDIR}, 1)) return Status::Ok();
  if (offset <= 1 && !fn({"..", parent, S_IFDIR}, 2)) return Status::Ok();
  std::vector<DirEntry> batch;
  batch.reserve(kBatch);
  for (uint64_t k = offset < 2 ? 0 : offset - 2;;) {
    batch.clear();
    {
      std::shared_lock lock(mu_);
      const std::vector<Child>* kids = Kids(dir);
      for (uint64_t i = k; i < kids->size() && batch.size() < kBatch; ++i) {
        const Child& c = (*kids)[i];
        batch.push_back({std::string(NameOf(c)), c.ino, At(c.ino).mode});
      }
    }
    if (batch.empty()) return Status::Ok();
    for (const DirEntry& e : batch) {
      if (!fn(e, k + 3)) return Status::Ok();
      ++k;
    }
  }
}

uint64_t Tree::MemoryBytes() const {
  std::shared_lock lock(mu_);
  uint64_t b = (count_ + 1) * sizeof(Packed) + names_.capacity() +
               dirs_.capacity() * sizeof(std::vector<Child>) +
               links_.capacity() * sizeof(std::string) +
               xattrs_.capacity() * sizeof(std::shared_ptr<const Xattrs>);
  for (const auto& d : dirs_) b += d.capacity() * sizeof(Child);
  for (const auto& l : links_) b += l.capacity() > 15 ? l.capacity() : 0;
  return b;
}

size_t Tree::Count() const {
  std::shared_lock lock(mu_);
  return count_;
}

std::optional<size_t> Tree::RemoveSubtree(Ino parent, std::string_view name,
                                          const std::function<bool(Ino)>& known) {
  std::unique_lock lock(mu_);
  if (!Valid(parent) || name == "." || name == "..") return std::nullopt;
  std::vector<Child>* kids = Kids(parent);
  if (!kids) return std::nullopt;
  auto [pos, found] = Find(*kids, name);
  if (!found) return std::nullopt;
  const Ino top = (*kids)[pos].ino;
  // Every inode below, by an explicit stack (directories are not hard
  // linked, so this walks a tree; files may appear under several names).
  std::vector<Ino> all{top};
  for (size_t i = 0; i < all.size(); ++i) {
    if (const std::vector<Child>* k = Kids(all[i])) {
      for (const Child& c : *k) all.push_back(c.ino);
    }
  }
  std::sort(all.begin() + 1, all.end());
  all.erase(std::unique(all.begin() + 1, all.end()), all.end());
  for (Ino ino : all) {
    if (known(ino)) return std::nullopt;
  }
  names_garbage_ += (*kids)[pos].name_len;
  if (S_ISDIR(At(top).mode)) At(parent).nlink--;
  kids->erase(kids->begin() + static_cast<ptrdiff_t>(pos));
  // A directory that numbers its entries in a segment of its own (a
  // layer's, SetPending) takes the whole segment with it: nothing else is
  // numbered there, and its numbers are not handed out again.
  std::vector<uint32_t> dropped;
  for (Ino ino : all) {
    if (auto it = child_seg_.find(ino); it != child_seg_.end()) {
      if (it->second != 0) dropped.push_back(it->second);
      child_seg_.erase(it);
    }
  }
  for (Ino ino : all) {
    Packed& p = At(ino);
    if (p.dir) {
      std::vector<Child>& d = dirs_[p.dir - 1];
      for (const Child& c : d) names_garbage_ += c.name_len;
      std::vector<Child>().swap(d);
      free_dirs_.push_back(p.dir);
    }
    if (p.link) {
      std::string().swap(links_[p.link - 1]);
      free_links_.push_back(p.link);
    }
    if (p.xattrs) {
      xattrs_[p.xattrs - 1] = nullptr;
      free_xattrs_.push_back(p.xattrs);
    }
    uint32_t generation = p.generation + 1;
    p = Packed{};
    p.generation = generation;
    p.flags = kFreed;
    // Segment 0's numbers are reused (with the new generation); a
    // segment's are not (it goes whole, or they stay tombstones).
    if (SegmentOf(ino) == 0) free_nodes_.push_back(ino);
  }
  count_ -= all.size();
  for (uint32_t seg : dropped) {
    if (seg < segs_.size()) segs_[seg].reset();
  }
  // Reused from the end of the list first: keep the lowest numbers for last,
  // so that a tree that shrinks and grows again stays dense.
  std::sort(free_nodes_.begin(), free_nodes_.end(), std::greater<>());
  if (names_garbage_ > (64u << 10) && names_garbage_ * 2 > names_.size()) CompactNames();
  return all.size();
}

void Tree::ForEachBelow(Ino dir,
                        const std::function<void(Ino, std::string_view, Ino)>& fn) const {
  std::shared_lock lock(mu_);
  if (!Valid(dir)) return;
  std::vector<Ino> stack{dir};
  while (!stack.empty()) {
    Ino d = stack.back();
    stack.pop_back();
    const std::vector<Child>* kids = Kids(d);
    if (!kids) continue;
    for (const Child& c : *kids) {
      fn(d, NameOf(c), c.ino);
      if (S_ISDIR(At(c.ino).mode)) stack.push_back(c.ino);
    }
  }
}

void Tree::CompactNames() {
  std::string names;
  names.reserve(names_.size() - names_garbage_);
  for (std::vector<Child>& d : dirs_) {
    for (Child& c : d) {
      uint32_t off = static_cast<uint32_t>(names.size());
      names.append(NameOf(c));
      c.name_off = off;
    }
  }
  names_.swap(names);
  names_garbage_ = 0;
}

}  // namespace regfs
