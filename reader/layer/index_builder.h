// BuildLayerIndex: one streaming pass over a layer blob that verifies its
// sha256 digest and produces its LayerIndex. The blob is read front to back
// through BlobSource::ReadAt in large sequential pieces (the chunk cache below
// keeps what passes). gzip: checkpoints about every `checkpoint_interval`
// bytes of output at deflate block boundaries (concatenated members work);
// zstd: frame starts; plain tar: nothing beyond the entries.
//
// Failure: digest mismatch, truncated or malformed compression, a bad tar
// header -> Corrupt and no index; source errors pass through unchanged.
// Entries refused by policy are skipped with a log line (see tar_reader.h);
// hard links whose target is missing are skipped too.
#ifndef REGFS_READER_LAYER_INDEX_BUILDER_H_
#define REGFS_READER_LAYER_INDEX_BUILDER_H_

#include <cstdint>
#include <functional>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/image/manifest.h"
#include "reader/layer/layer_index.h"

namespace regfs {

struct IndexBuildOptions {
  uint64_t checkpoint_interval = 4 << 20;  // bytes of uncompressed output
  size_t read_size = 4 << 20;              // bytes per BlobSource::ReadAt
  // Called after each piece read: compressed bytes done, blob size. May be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// `compression` kUnknown sniffs the blob's first bytes.
Result<LayerIndex> BuildLayerIndex(BlobSource* source, const BlobDescriptor& blob,
                                   LayerCompression compression,
                                   const IndexBuildOptions& options = {});

}  // namespace regfs

#endif  // REGFS_READER_LAYER_INDEX_BUILDER_H_
