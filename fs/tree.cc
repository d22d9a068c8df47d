#include "fs/tree.h"

#include <algorithm>
#include <mutex>

namespace regfs {

Tree::Tree() {
  nodes_.resize(2);
  Node& root = nodes_[kRootIno];
  root.parent = kRootIno;
  root.attr.mode = S_IFDIR | 0555;
  root.attr.nlink = 2;
}

namespace {
bool ChildLess(const Child& c, std::string_view n) { return c.name < n; }
}  // namespace

Ino Tree::AddChildLocked(Ino parent, std::string name, Node node, bool* existed) {
  std::vector<Child>& kids = nodes_[parent].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), name, ChildLess);
  if (it != kids.end() && it->name == name) {
    if (existed) *existed = true;
    return it->ino;
  }
  if (existed) *existed = false;
  Ino ino = nodes_.size();
  bool is_dir = S_ISDIR(node.attr.mode);
  node.parent = parent;
  size_t pos = it - kids.begin();
  nodes_.push_back(std::move(node));
  // push_back may have moved the vector; re-take the parent by index.
  std::vector<Child>& pkids = nodes_[parent].children;
  pkids.insert(pkids.begin() + pos, Child{std::move(name), ino});
  if (is_dir) nodes_[parent].attr.nlink++;
  return ino;
}

Ino Tree::AddChild(Ino parent, std::string name, Node node, bool* existed) {
  std::unique_lock lock(mu_);
  return AddChildLocked(parent, std::move(name), std::move(node), existed);
}

Ino Tree::AddDir(Ino parent, std::string name, uint32_t perm) {
  Node n;
  n.attr.mode = S_IFDIR | perm;
  n.attr.nlink = 2;
  return AddChild(parent, std::move(name), std::move(n));
}

bool Tree::Link(Ino parent, std::string name, Ino target, bool count_link) {
  std::unique_lock lock(mu_);
  if (target == 0 || target >= nodes_.size() || S_ISDIR(nodes_[target].attr.mode)) return false;
  std::vector<Child>& kids = nodes_[parent].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), name, ChildLess);
  if (it != kids.end() && it->name == name) return false;
  kids.insert(it, Child{std::move(name), target});
  if (count_link) nodes_[target].attr.nlink++;
  return true;
}

void Tree::Update(Ino ino, const std::function<void(Node&)>& fn) {
  std::unique_lock lock(mu_);
  if (ino == 0 || ino >= nodes_.size()) return;
  fn(nodes_[ino]);
}

void Tree::SetPending(Ino dir, uint32_t id) {
  std::unique_lock lock(mu_);
  nodes_[dir].pending_id = id;
}

void Tree::ClearPending(Ino dir) {
  std::unique_lock lock(mu_);
  nodes_[dir].pending_id = 0;
}

void Tree::SetTimesAndOwner(Ino ino, int64_t mtime_sec, uint32_t uid, uint32_t gid) {
  std::unique_lock lock(mu_);
  if (ino == 0 || ino >= nodes_.size()) return;
  nodes_[ino].attr.mtime_sec = mtime_sec;
  nodes_[ino].attr.uid = uid;
  nodes_[ino].attr.gid = gid;
}

void Tree::Mutate(const std::function<void(Tree&)>& fn) {
  // Callers use the public Add* methods inside fn, which lock themselves:
  // Mutate only serialises whole subtrees against each other.
  static std::mutex mutate_mu;
  std::lock_guard lock(mutate_mu);
  fn(*this);
}

Result<Ino> Tree::LookupLocked(Ino parent, std::string_view name) const {
  if (parent == 0 || parent >= nodes_.size()) return Status::NotFound("no such inode");
  const Node& p = nodes_[parent];
  if (!S_ISDIR(p.attr.mode)) return Status::InvalidArgument("not a directory");
  if (name == ".") return parent;
  if (name == "..") return p.parent;
  const std::vector<Child>& kids = p.children;
  auto it = std::lower_bound(kids.begin(), kids.end(), name, ChildLess);
  if (it == kids.end() || it->name != name) return Status::NotFound(std::string(name));
  return it->ino;
}

Result<Ino> Tree::Lookup(Ino parent, std::string_view name) const {
  std::shared_lock lock(mu_);
  return LookupLocked(parent, name);
}

Result<Node> Tree::Get(Ino ino) const {
  std::shared_lock lock(mu_);
  if (ino == 0 || ino >= nodes_.size()) return Status::NotFound("no such inode");
  const Node& n = nodes_[ino];
  Node copy;
  copy.parent = n.parent;
  copy.attr = n.attr;
  copy.kind = n.kind;
  copy.content_id = n.content_id;
  copy.content_arg = n.content_arg;
  copy.link_target = n.link_target;
  copy.xattrs = n.xattrs;
  copy.pending_id = n.pending_id;
  copy.flags = n.flags;
  return copy;
}

uint32_t Tree::PendingId(Ino ino) const {
  std::shared_lock lock(mu_);
  return ino < nodes_.size() ? nodes_[ino].pending_id : 0;
}

Status Tree::ReadDir(Ino dir, uint64_t offset,
                     const std::function<bool(const DirEntry&, uint64_t)>& fn) const {
  std::shared_lock lock(mu_);
  if (dir == 0 || dir >= nodes_.size()) return Status::NotFound("no such inode");
  const Node& d = nodes_[dir];
  if (!S_ISDIR(d.attr.mode)) return Status::InvalidArgument("not a directory");
  if (offset == 0 && !fn({".", dir, S_IFDIR}, 1)) return Status::Ok();
  if (offset <= 1 && !fn({"..", d.parent, S_IFDIR}, 2)) return Status::Ok();
  for (uint64_t k = offset < 2 ? 0 : offset - 2; k < d.children.size(); ++k) {
    const Child& c = d.children[k];
    if (!fn({c.name, c.ino, nodes_[c.ino].attr.mode}, k + 3)) break;
  }
  return Status::Ok();
}

size_t Tree::Count() const {
  std::shared_lock lock(mu_);
  return nodes_.size() - 1;
}

}  // namespace regfs
