// LayerReader: random access to the uncompressed stream of one layer blob,
// given its LayerIndex. A read maps to the nearest restart point (gzip
// checkpoint / zstd frame / the offset itself for plain tar), fetches the
// compressed bytes from there through the BlobSource (in input_chunk-aligned
// pieces, so they land in the chunk cache) and decompresses up to the range.
// A small LRU of live decoders keeps sequential reads of a large file from
// restarting at the checkpoint on every request.
//
// Thread-safe: each call takes a decoder exclusively; no lock is held during
// I/O or decompression. Failure: source errors pass through; compressed bytes
// that do not decode as the index says (a changed blob) are Corrupt; a decoder
// that failed is dropped, never reused.
#ifndef REGFS_READER_LAYER_LAYER_READER_H_
#define REGFS_READER_LAYER_LAYER_READER_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/layer/codec.h"
#include "reader/layer/layer_index.h"

namespace regfs {

struct LayerReaderOptions {
  size_t max_live_decoders = 8;  // idle decoders kept (LRU)
  size_t input_chunk = 256 << 10;  // compressed bytes per BlobSource::ReadAt
  InflateEngine engine = DefaultInflateEngine();
};

struct LayerReaderStats {
  uint64_t decoders_created = 0;
  uint64_t decoders_reused = 0;
  uint64_t bytes_discarded = 0;  // decompressed only to reach an offset
  uint64_t compressed_fetched = 0;
};

class LayerReader {
 public:
  // `source` and the blob must outlive the reader.
  LayerReader(BlobSource* source, BlobDescriptor blob, std::shared_ptr<const LayerIndex> index,
              LayerReaderOptions options = {});
  ~LayerReader();
  LayerReader(const LayerReader&) = delete;
  LayerReader& operator=(const LayerReader&) = delete;

  // Uncompressed bytes [offset, offset + n) where n = min(out.size(), what is
  // left of the stream); returns n (0 at or past the end). InvalidArgument if
  // the index describes another blob.
  Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> out);
  // Bytes of an entry's data (regular files and hard links to them); returns
  // the count, 0 at or past the entry's end. InvalidArgument for other types.
  Result<size_t> Read(const TarEntry& entry, uint64_t offset, std::span<uint8_t> out);

  const LayerIndex& index() const { return *index_; }
  LayerReaderStats stats() const;

  class Decoder;  // internal

 private:
  Result<std::unique_ptr<Decoder>> NewDecoder(uint64_t offset);

  BlobSource* source_;
  BlobDescriptor blob_;
  std::shared_ptr<const LayerIndex> index_;
  LayerReaderOptions options_;

  std::mutex mu_;  // guards idle_
  std::list<std::unique_ptr<Decoder>> idle_;  // most recently used first

  std::atomic<uint64_t> created_{0}, reused_{0}, discarded_{0};
  std::shared_ptr<std::atomic<uint64_t>> fetched_;
};

}  // namespace regfs

#endif  // REGFS_READER_LAYER_LAYER_READER_H_
