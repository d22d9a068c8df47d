// Turns a layer's index (reader/layer/layer_index.h) into a subtree of the
// mount: every tar entry with its metadata, hard links as one inode, whiteouts
// either as the tar has them or in overlayfs form (a 0:0 character device per
// `.wh.name`, and trusted.overlay.opaque=y / user.overlay.opaque=y on a
// directory holding `.wh..wh..opq`), so that the tree can be an overlayfs
// lowerdir.
//
// Failure: an entry that cannot be placed (a path under a non-directory, a
// hard link to a name not in the layer) is skipped with a log line; the rest
// of the layer is still shown. Never fails the whole layer.
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
};

// Adds the entries of `index` under the existing directory `root`. Regular
// files get ContentKind::kLayerEntry with content_id = `layer` and
// content_arg = the data's offset in the uncompressed stream.
LayerTreeStats AddLayerEntries(Tree& tree, Ino root, uint32_t layer, const LayerIndex& index,
                               WhiteoutMode mode,
                               HardLinkMetadata links = HardLinkMetadata::kKeepTarget);

}  // namespace regfs

#endif  // REGFS_FS_LAYER_TREE_H_
