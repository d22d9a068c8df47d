// BuildLayerIndex: one streaming pass over a layer blob that verifies its
// sha256 digest (and, when given, its DiffID) and produces its LayerIndex.
// The blob is read front to back through BlobSource::ReadAt in large
// sequential pieces (the chunk cache below keeps what passes). gzip:
// checkpoints about every `checkpoint_interval` bytes of output at deflate
// block boundaries (concatenated members work); zstd: frame starts; plain
// tar: nothing beyond the entries.
//
// Failure: digest or DiffID mismatch, truncated or malformed compression, a
// bad tar header, more than max_entries entries, more output than
// max_uncompressed_bytes / max_uncompressed_ratio -> Corrupt and no index;
// cancelled -> Transient; source errors pass through unchanged. Entries
// refused by policy are skipped with a log line and counted in
// skipped_entries (see tar_reader.h); hard links whose target is missing
// are skipped too.
#ifndef REGFS_READER_LAYER_INDEX_BUILDER_H_
#define REGFS_READER_LAYER_INDEX_BUILDER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/image/manifest.h"
#include "reader/layer/layer_index.h"

namespace regfs {

// 4 million entries: ten times the largest layers seen in the wild (a full
// TeX Live is ~250,000 files); an index of that many costs ~1 GiB of memory.
inline constexpr uint64_t kDefaultMaxLayerEntries = 4'000'000;
inline constexpr uint64_t kDefaultMaxUncompressedBytes = uint64_t{1} << 40;  // 1 TiB

struct IndexBuildOptions {
  uint64_t checkpoint_interval = 4 << 20;  // bytes of uncompressed output
  size_t read_size = 4 << 20;              // bytes per BlobSource::ReadAt
  // Called after each piece read: compressed bytes done, blob size. May be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // The layer's DiffID from the image config (rootfs.diff_ids[i], "sha256:
  // <hex>" of the uncompressed tar stream). Empty: not checked. Set: a
  // compressed layer's output is hashed during the pass (every byte, also
  // after the end-of-archive block) and a mismatch fails the build with
  // Corrupt "... does not match its DiffID ..."; an uncompressed layer's
  // DiffID must equal its blob digest. On success LayerIndex::diff_id holds
  // it. A DiffID of another algorithm is Unsupported, a malformed one
  // InvalidArgument.
  std::string expected_diff_id;
  // Tar entries read (duplicates count) before the build fails with Corrupt
  // "... has more than N entries ...". Failing, not truncating: an index cut
  // short would show a tree that is silently incomplete.
  uint64_t max_entries = kDefaultMaxLayerEntries;
  // Decompression bombs: the build fails with Corrupt once the uncompressed
  // stream passes max_uncompressed_bytes, or max_uncompressed_ratio times
  // the blob's (compressed) size when that ratio is not 0 (0: no ratio
  // limit, the default). The pass itself keeps no output; what the caller
  // keeps decompressed later is its own choice.
  uint64_t max_uncompressed_bytes = kDefaultMaxUncompressedBytes;
  uint64_t max_uncompressed_ratio = 0;
  // Asked between reads of the blob and after every 1 MiB of uncompressed
  // output (at most 2048 tar headers), from the building thread; true stops
  // the build with Transient "layer index build cancelled". May be empty.
  std::function<bool()> cancelled;
};

// `compression` kUnknown sniffs the blob's first bytes.
Result<LayerIndex> BuildLayerIndex(BlobSource* source, const BlobDescriptor& blob,
                                   LayerCompression compression,
                                   const IndexBuildOptions& options = {});

}  // namespace regfs

#endif  // REGFS_READER_LAYER_INDEX_BUILDER_H_
