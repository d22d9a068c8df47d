// Turns a layer's index (reader/layer/layer_index.h) into a subtree of the
// mount: every tar entry with its metadata, hard links as one inode, whiteouts
// either as the tar has them or in overlayfs form (a 0:0 character device per
// `.wh.name`, and trusted.overlay.opaque=y / user.overlay.opaque=y on a
// directory holding `.wh..wh..opq`), so that the tree can be an overlayfs
// lowerdir.
//
// The layer is what podman's extraction (containers/storage pkg/archive)
// makes of the same tar: entries are replayed in archive order on a staging
// tree, and a later entry of a path wins. A path that exists is removed (a
// directory with everything below it) before the new entry is made, unless
// both are directories, which merge (the later entry's attributes win). In
// overlay form `.wh.x` is a 0:0 device at x that likewise replaces x, and a
// later x replaces the device; a whiteout below such a device (`.wh.gone`,
// then `gone/.wh.inner`, as `rm -rf gone` leaves it) is dropped, as
// extraction ignores the ENOTDIR its mknod fails with. As in the tar,
// whiteouts are names like any other. The final state is then added to the Tree in
// sorted order (one O(1) append per entry), without recursion.
//
// Failure: an entry that cannot be placed is skipped with a log line (the
// first 100 per layer; then one line with the count); the rest of the layer
// is still shown, never failing the whole layer. Skipped, as a Linux
// extraction would fail them: a path under a non-directory, a hard link to a
// name not (or no longer) in the layer, a path component longer than
// NAME_MAX (255) or a path of PATH_MAX (4096) bytes or more, a symlink target
// of PATH_MAX bytes or more; names that are empty, "." or "..", or hold NUL;
// in overlay form a whiteout of an empty name (`.wh.`). Past the limits
// (LayerTreeLimits) every further entry is skipped, with one log line.
#ifndef REGFS_FS_LAYER_TREE_H_
#define REGFS_FS_LAYER_TREE_H_

#include <cstdint>

#include "fs/tree.h"
#include "reader/layer/layer_index.h"

namespace regfs {

enum class WhiteoutMode { kAsInTar, kOverlay };

// What a hard link's own header does to the inode it shares with its target.
// bsdtar and umoci (and `mount`'s layers/ and rootfs/) keep the target's
// metadata; podman's extraction (containers/storage) applies the link
// header's owner, mode, mtime and xattrs to the shared inode, the last entry
// winning (mode and mtime not when the target is a symlink). The layer store
// follows podman, so that a container sees what a normal pull gives it.
enum class HardLinkMetadata { kKeepTarget, kApplyLinkHeader };

struct LayerTreeStats {
  uint64_t entries = 0;        // nodes and links added
  uint64_t implicit_dirs = 0;  // parents the tar did not list
  uint64_t skipped = 0;
  uint64_t whiteouts = 0;      // converted (kOverlay)
  uint64_t over_limit = 0;     // of `skipped`: refused by LayerTreeLimits
};

// Bounds on what one layer may add. Both count every node made while the
// layer is replayed (entries, implied parent directories, whiteouts), also
// those a later entry replaces, so they bound the staging memory too.
struct LayerTreeLimits {
  // Nodes per layer. 4,000,000 is far above real images (the largest seen
  // hold a few hundred thousand files) and a few hundred MB of tree.
  uint64_t max_entries = 4000000;
  // The whole Tree's MemoryBytes() (all layers and rootfs/ so far) plus an
  // estimate of what this layer adds. 3 GiB also keeps the Tree's 32-bit name
  // arena offsets far from overflowing.
  uint64_t max_tree_bytes = uint64_t{3} << 30;
};

// Adds the entries of `index` under the existing directory `root`. Regular
// files get ContentKind::kLayerEntry with content_id = `layer` and
// content_arg = the data's offset in the uncompressed stream.
LayerTreeStats AddLayerEntries(Tree& tree, Ino root, uint32_t layer, const LayerIndex& index,
                               WhiteoutMode mode,
                               HardLinkMetadata links = HardLinkMetadata::kKeepTarget,
                               const LayerTreeLimits& limits = {});

}  // namespace regfs

#endif  // REGFS_FS_LAYER_TREE_H_
