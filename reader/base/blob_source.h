// BlobSource: the seam between "bytes of blob D at [a, b)" and where they come
// from. The registry client implements it over HTTP Range requests; the chunk
// cache implements it over sqlite and wraps another BlobSource for misses;
// tests implement it over memory with fault injection and request counters.
//
// Implementations are thread-safe: ReadAt may be called from many threads.
#ifndef REGFS_READER_BASE_BLOB_SOURCE_H_
#define REGFS_READER_BASE_BLOB_SOURCE_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "reader/base/status.h"

namespace regfs {

// An OCI content descriptor, reduced to what reading needs.
struct BlobDescriptor {
  std::string media_type;
  std::string digest;  // "sha256:<hex>"; the cache key everywhere
  uint64_t size = 0;
};

class BlobSource {
 public:
  virtual ~BlobSource() = default;

  // Fills `out` with bytes [offset, offset + out.size()) of `blob`. The range
  // must lie inside [0, blob.size); an empty span is a no-op. On error the
  // contents of `out` are unspecified and must not be used.
  virtual Status ReadAt(const BlobDescriptor& blob, uint64_t offset,
                        std::span<uint8_t> out) = 0;

  // Streams bytes [offset, offset + len) to `sink`, in order, each byte
  // once, as they arrive (a long range can be used before its end is in).
  // Same range rules as ReadAt. A non-OK return from the sink stops the read
  // and is returned. This default reads and hands over 1 MiB pieces (one
  // ReadAt each), for sources that are not network requests.
  using ByteSink = std::function<Status(std::span<const uint8_t>)>;
  virtual Status ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                            const ByteSink& sink);

  // Read-ahead: makes [offset, offset + len) cheap to read soon, without
  // handing the bytes to the caller. Same range rules as ReadAt. This default
  // reads them through ReadStream and drops them; a caching source overrides
  // it to fetch into its cache without copying them out.
  virtual Status Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len);

  // For callers that check every byte they use against digests of their
  // own (a TOC layer: the TOC's digest from the manifest, each chunk's
  // digest from the TOC): the same bytes, but a source that holds back a
  // blob's last chunk until the whole blob is verified (so that a plain
  // reader never reaches a clean end of file after wrong bytes) hands it
  // out at once; a TOC lives in that last chunk. This source by default.
  virtual BlobSource* SelfVerifyingReads() { return this; }
};

// Forwards everything to another source. Tests derive from it and override
// one method to inject a fault (leveldb's EnvWrapper idea).
class BlobSourceWrapper : public BlobSource {
 public:
  explicit BlobSourceWrapper(BlobSource* target) : target_(target) {}
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset,
                std::span<uint8_t> out) override {
    return target_->ReadAt(blob, offset, out);
  }

 protected:
  BlobSource* target() const { return target_; }

 private:
  BlobSource* target_;
};

}  // namespace regfs

#endif  // REGFS_READER_BASE_BLOB_SOURCE_H_
