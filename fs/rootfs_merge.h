// rootfs/: the image's filesystem, built from the layer subtrees already in
// the Tree (layers/0 .. layers/N-1) by the OCI image-spec changeset rules,
// bottom to top:
//  - `.wh.NAME` hides NAME of lower layers; `.wh..wh..opq` hides everything
//    lower layers had in that directory (in overlay whiteout mode: a 0:0
//    character device, and the trusted.overlay.opaque xattr, mean the same);
//    a whiteout never hides what its own layer adds, wherever it comes in
//    the tar (umoci keeps x when `.wh.x` follows it in the same layer);
//  - a later entry replaces an earlier one of any type; directories merge,
//    taking the upper layer's attributes (unless the upper layer only
//    implied the directory as a parent);
//  - whiteouts themselves never appear; hard links stay within their layer;
//  - whiteouts as in the tar: a directory the layer only implied as a
//    parent is made only for an entry that is not a whiteout (as umoci's
//    extraction does), so `.wh.gone` with `gone/.wh.inner` leaves no gone;
//  - overlay form: a directory made over `.wh.x` in its layer
//    (Node::kReplacedWhiteout) hides lower layers' x as the whiteout would
//    have. (`.wh.x` after x in one layer leaves only the device there, so
//    x is hidden in this form: podman refuses such layers anyway.)
// The merged view is built flat (indexes, explicit stacks), so nothing
// recurses in proportion to path depth, and emitted in sorted order.
// Non-directories are shared with their layer's inode (same bytes, no copy);
// hard-linked ones get a rootfs inode per group so st_nlink counts the names
// that survive the merge. Directories are new inodes.
//
// Failure: none; it works on what the Tree holds. Past MergeLimits the rest
// is left out, with one log line.
#ifndef REGFS_FS_ROOTFS_MERGE_H_
#define REGFS_FS_ROOTFS_MERGE_H_

#include <cstdint>
#include <vector>

#include "fs/layer_tree.h"
#include "fs/tree.h"

namespace regfs {

struct MergeStats {
  uint64_t entries = 0;     // names in rootfs/
  uint64_t whiteouts = 0;   // whiteouts applied
  uint64_t opaque = 0;      // opaque directories applied
  uint64_t replaced = 0;    // entries replaced by an upper layer
  uint64_t skipped = 0;     // left out over MergeLimits
};

struct MergeLimits {
  // Names in rootfs/ (and nodes of the merge's working tree, which holds at
  // most one per layer entry). Each layer is bounded by LayerTreeLimits
  // already; this bounds the merge's own memory (~100 bytes per node).
  uint64_t max_entries = 16000000;
};

MergeStats MergeLayers(Tree& tree, const std::vector<Ino>& layer_roots, Ino rootfs,
                       WhiteoutMode mode, const MergeLimits& limits = {});

}  // namespace regfs

#endif  // REGFS_FS_ROOTFS_MERGE_H_
