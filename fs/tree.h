// The inode table of a mount: every path regfs shows, with its metadata and
// where its bytes come from. Inode numbers are indexes into tables, so they
// are stable for the life of the mount and lookups are O(log n) in the
// directory. They are also the same in a daemon that takes over the mount
// after a restart (the kernel keeps the old numbers): what is added below a
// pending directory (SetPending(dir, id)) is numbered in a segment of its
// own, id << 32 | n, so the order in which layers are filled (background
// builds racing lookups) does not change anyone's number, only each layer's
// own, deterministic, order does. Storage is packed (an image can have millions of entries):
// Node is the API's view; inside, a node is ~80 bytes, a directory entry 16
// bytes plus its name in one arena, and the rare parts (symlink targets,
// xattrs, children lists) live in side tables. Subtrees may be added after the mount is live (a layer's tree
// appears when its index is ready); a shared_mutex guards that, readers never
// wait for each other.
//
// A subtree can be freed again (the store releases an idle layer): its
// inode numbers are reused by later nodes, each time with a new generation,
// and only once the caller has checked that the kernel no longer knows them.
//
// Failure: nothing here does I/O. Unknown inode -> NotFound.
#ifndef REGFS_FS_TREE_H_
#define REGFS_FS_TREE_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "reader/base/status.h"

namespace regfs {

using Ino = uint64_t;
inline constexpr Ino kRootIno = 1;  // FUSE_ROOT_ID

// Where a regular file's bytes come from. The Tree only stores the tag and
// two numbers; the FsContent (fs/fuse_daemon.h) interprets them.
enum class ContentKind : uint8_t {
  kNone = 0,     // directories, symlinks, devices, empty files
  kInline,       // bytes held in the tree (manifest.json ...): id = inline index
  kBlob,         // a whole registry blob: id = blob index
  kDynamic,      // generated at open (status.json): id = generator index
  kLayerEntry,   // a file inside a layer's tar: id = layer, arg = entry index
};

using Xattrs = std::vector<std::pair<std::string, std::string>>;

struct NodeAttr {
  uint32_t mode = 0;  // type and permission bits
  uint32_t uid = 0, gid = 0;
  uint32_t nlink = 1;
  uint64_t size = 0;
  uint64_t rdev = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
};

struct Node {
  Ino parent = 0;  // directories: for ".."; others: the first directory linked from
  NodeAttr attr;
  ContentKind kind = ContentKind::kNone;
  uint32_t content_id = 0;
  uint64_t content_arg = 0;
  std::string link_target;              // symlinks
  std::shared_ptr<const Xattrs> xattrs;  // shared: most entries have none
  // kImplicitDir: a parent directory its layer did not list (attributes
  // are defaults, so a merge keeps those of a lower layer's real entry).
  static constexpr uint8_t kImplicitDir = 1;
  // (2 is free: a whiteout never hides its own layer's entries, so no flag
  // says that it came after them.)
  // Overlay form: a directory that replaced a whiteout of its own name in
  // its layer (`.wh.x` then `x/`). The changeset rules hide lower layers'
  // x, which overlayfs would merge into it: the merge does hide them.
  static constexpr uint8_t kReplacedWhiteout = 4;
  uint8_t flags = 0;
  // Directories whose contents are filled in later (a layer not yet indexed):
  // nonzero is the id passed to the Tree's populate hook.
  uint32_t pending_id = 0;
  // Bumped each time the inode number is reused after a RemoveSubtree:
  // FUSE's (ino, generation) pair names one node for the mount's life.
  uint32_t generation = 1;
};

struct DirEntry {
  std::string name;
  Ino ino;
  uint32_t mode;
};

class Tree {
 public:
  Tree();  // creates the root directory (mode 0555, dr-xr-xr-x)

  // Building. AddChild keeps the parent's children sorted; adding an existing
  // name replaces nothing and returns the existing inode, with *existed set
  // (callers decide what a duplicate means). Adding names in sorted order is
  // O(1) each (an append); out of order, an insert into the sorted list.
  Ino AddChild(Ino parent, std::string name, Node node, bool* existed = nullptr);
  Ino AddDir(Ino parent, std::string name, uint32_t perm = 0555);
  // A hard link: `name` in `parent` names the existing inode `target`, whose
  // link count goes up by one. False if the name exists or target is a dir.
  // With count_link false the name is an alias that leaves st_nlink alone
  // (rootfs/ shows a layer's file under a second path).
  bool Link(Ino parent, std::string name, Ino target, bool count_link = true);
  // Edits a node in place (not its children), under the write lock.
  void Update(Ino ino, const std::function<void(Node&)>& fn);
  // Marks `dir` as filled later, by populate(id). Entries added below it
  // are numbered in segment `id` (ids of one tree must differ).
  void SetPending(Ino dir, uint32_t id);
  void ClearPending(Ino dir);
  // Replaces a node's attributes, keeping its type bits and link count.
  void SetTimesAndOwner(Ino ino, int64_t mtime_sec, uint32_t uid, uint32_t gid);

  // Removes `name` from `parent` and frees it with everything below it
  // (iteratively: no recursion in proportion to depth), unless `known`
  // (called under the tree's write lock; it must not call the tree) is
  // true for one of those inodes: then nothing changes and nullopt is
  // returned. The subtree's inodes must be named only inside it (a layer's
  // hard links are). Returns the number of inodes freed; their numbers are
  // reused by later nodes, with a new generation.
  std::optional<size_t> RemoveSubtree(Ino parent, std::string_view name,
                                      const std::function<bool(Ino)>& known);

  // Queries (shared lock inside).
  Result<Ino> Lookup(Ino parent, std::string_view name) const;
  Result<Node> Get(Ino ino) const;  // a copy (children omitted)
  uint32_t PendingId(Ino ino) const;
  // Whether `ino` names a node. A successor daemon is asked about inodes
  // of segments it has not filled yet: SegmentOf says which to fill.
  bool Contains(Ino ino) const;
  static uint32_t SegmentOf(Ino ino) { return static_cast<uint32_t>(ino >> kSegmentShift); }
  // Fills from the `offset`th child on; `fn` returns false to stop. Offsets 0
  // and 1 are "." and ".."; child k is offset k + 2. `fn` runs without the
  // tree's lock held, so it may call the tree (even to add entries).
  Status ReadDir(Ino dir, uint64_t offset,
                 const std::function<bool(const DirEntry&, uint64_t next_off)>& fn) const;
  // Calls fn(parent, name, ino) for every entry below `dir` (iteratively),
  // under the shared lock: fn must not call the tree.
  void ForEachBelow(Ino dir,
                    const std::function<void(Ino parent, std::string_view name, Ino ino)>& fn) const;
  size_t Count() const;  // live nodes (freed ones not counted)
  // Bytes the table holds (capacities, not just sizes), for status.json.
  uint64_t MemoryBytes() const;

 private:
  // A name in a directory. Hard links are several entries naming one inode.
  struct Child {
    uint32_t name_off;  // in names_
    uint32_t name_len;
    Ino ino;
  };
  static constexpr int kSegmentShift = 32;
  static constexpr uint64_t kIndexMask = (uint64_t{1} << kSegmentShift) - 1;
  // Packed::flags of a freed node (RemoveSubtree); Node's flags are below.
  static constexpr uint8_t kFreed = 0x80;
  struct Packed {
    Ino parent = 0;
    uint64_t size = 0;
    int64_t mtime_sec = 0;
    uint64_t arg = 0;  // content_arg, or rdev for devices
    uint32_t mode = 0, uid = 0, gid = 0, nlink = 1;
    uint32_t mtime_nsec = 0;
    uint32_t content_id = 0;
    uint32_t link = 0;     // 1 + index into links_, or 0
    uint32_t xattrs = 0;   // 1 + index into xattrs_, or 0
    uint32_t dir = 0;      // 1 + index into dirs_, or 0
    uint32_t pending_id = 0;
    uint32_t generation = 1;
    ContentKind kind = ContentKind::kNone;
    uint8_t flags = 0;
  };

  bool Valid(Ino ino) const;
  Packed& At(Ino ino) { return (*segs_[ino >> kSegmentShift])[ino & kIndexMask]; }
  const Packed& At(Ino ino) const { return (*segs_[ino >> kSegmentShift])[ino & kIndexMask]; }
  // The segment a new entry of `parent` is numbered in.
  uint32_t ChildSegment(Ino parent) const;
  Ino AddChildLocked(Ino parent, std::string_view name, const Node& node, bool* existed);
  Result<Ino> LookupLocked(Ino parent, std::string_view name) const;
  std::string_view NameOf(const Child& c) const {
    return std::string_view(names_).substr(c.name_off, c.name_len);
  }
  // The children of a directory inode; nullptr for others.
  std::vector<Child>* Kids(Ino ino);
  const std::vector<Child>* Kids(Ino ino) const;
  // Finds `name` in `kids`: the insertion point, and whether it is there.
  std::pair<size_t, bool> Find(const std::vector<Child>& kids, std::string_view name) const;
  // Find, with an O(1) answer when `name` sorts after every child.
  std::pair<size_t, bool> FindForInsert(const std::vector<Child>& kids, std::string_view name) const;
  Child MakeChild(std::string_view name, Ino ino);
  // Name offsets are 32-bit: a name that would end past 4 GiB of names is
  // refused (the layer builder's memory limit keeps trees far below that).
  bool NameFits(std::string_view name) const {
    return names_.size() + name.size() <= UINT32_MAX;
  }
  void Store(Packed* p, const Node& n);
  // Rewrites names_ without the bytes of removed entries.
  void CompactNames();
  Node Unpack(const Packed& p) const;

  mutable std::shared_mutex mu_;  // guards everything below
  // Segment s holds inodes s << 32 | index; a deque never moves its nodes.
  // Segment 0's [0] is unused (inode 0 is no inode).
  std::vector<std::unique_ptr<std::deque<Packed>>> segs_;
  std::unordered_map<Ino, uint32_t> child_seg_;  // SetPending's dirs: their segment
  size_t count_ = 1;                             // nodes, the root included
  std::string names_;             // every directory entry's name, appended
  std::vector<std::vector<Child>> dirs_;
  std::vector<std::string> links_;
  std::vector<std::shared_ptr<const Xattrs>> xattrs_;
  // Slots freed by RemoveSubtree, reused before the tables grow.
  std::vector<Ino> free_nodes_;
  std::vector<uint32_t> free_dirs_, free_links_, free_xattrs_;
  uint64_t names_garbage_ = 0;  // bytes of names_ no entry uses
};

}  // namespace regfs

#endif  // REGFS_FS_TREE_H_
