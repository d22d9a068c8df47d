// MirrorSet: one image reference's pull sources (registries.conf mirrors in
// order, then the primary location) as one BlobSource.
//
// Each endpoint is its own RegistryClient (its own connection pool,
// credentials for its host, TLS settings), reading the reference as
// rewritten for it. Resolve() asks the endpoints in order for the manifest,
// as containers/image does: a mirror that fails or lacks it is skipped, and
// the first that serves it (manifest, config, all verified) is preferred for
// blobs. A blob read goes to the preferred endpoint, then, when it fails
// there, to the others in order, continuing after the bytes already
// delivered; the read fails only when every endpoint failed. Blobs are
// content-addressed, so the cache above checks them by digest whichever
// endpoint served them. An endpoint that failed is tried last for a while
// (1 s, doubling to 60 s), so that a dead mirror costs one failure, not one
// per read. Thread-safe.
#ifndef REGFS_READER_HTTP_MIRROR_SET_H_
#define REGFS_READER_HTTP_MIRROR_SET_H_

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "reader/base/blob_source.h"
#include "reader/http/registry_client.h"
#include "reader/image/reference.h"

namespace regfs {

struct MirrorEndpoint {
  std::string location;  // registries.conf's location, for reports
  bool mirror = false;
  Reference ref;  // the reference as rewritten for this endpoint
  RegistryClientOptions options;
};

struct EndpointReport {
  std::string location;
  std::string registry;  // host[:port] connected to
  bool mirror = false;
  bool preferred = false;     // served the manifest
  bool cooling_down = false;  // failed lately: tried last
  uint64_t failures = 0;      // reads or resolutions that failed here
  RegistryCounters counters;
  std::string last_error;
};

class MirrorSet : public BlobSource {
 public:
  // InvalidArgument when `endpoints` is empty or a client cannot be made
  // (a bad credentials file).
  static Result<std::unique_ptr<MirrorSet>> Create(std::vector<MirrorEndpoint> endpoints);
  ~MirrorSet() override;

  // The image `logical` (the reference as the user named it) resolves to,
  // from the first endpoint that serves it. The result's ref is `logical`.
  // When all fail: the primary's error, the mirrors' errors added.
  Result<ResolvedImage> Resolve(const Reference& logical,
                                const std::optional<Platform>& platform);

  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override;
  Status ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                    const ByteSink& sink) override;

  // RegistryClient::SetSpareChunkHandler for every endpoint.
  void SetSpareChunkHandler(uint64_t chunk_size, RegistryClient::SpareChunkHandler handler);

  // Sums over the endpoints.
  RegistryCounters Counters() const;
  std::vector<EndpointReport> Endpoints() const;
  // The endpoint that served the manifest ("" before Resolve succeeded).
  std::string ManifestEndpoint() const;
  // Bytes of `digest` each endpoint delivered (location -> bytes), and
  // endpoints that failed a read of it (location -> count).
  std::map<std::string, uint64_t> ServedBy(const std::string& digest) const;
  size_t size() const { return endpoints_.size(); }
  RegistryClient& client(size_t i) { return *endpoints_[i]->client; }

 private:
  struct Endpoint {
    MirrorEndpoint spec;
    std::unique_ptr<RegistryClient> client;
    // Guarded by MirrorSet::mu_.
    std::chrono::steady_clock::time_point cool_until{};
    std::chrono::milliseconds cooldown{0};
    uint64_t failures = 0;
    std::string last_error;
  };
  explicit MirrorSet(std::vector<std::unique_ptr<Endpoint>> endpoints);

  // Endpoint indexes to try for a read: the preferred one first, then the
  // rest in order; those cooling down after all others.
  std::vector<size_t> ReadOrder() const;
  void RecordFailure(size_t i, const Status& s);
  void RecordSuccess(size_t i, const std::string& digest, uint64_t bytes);
  // Tries `attempt(i)` on each endpoint in ReadOrder() until one succeeds;
  // `delivered` says how far a partial attempt got (streaming).
  Status ReadWithFailover(const BlobDescriptor& blob,
                          const std::function<Status(size_t, bool*)>& attempt);

  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  std::atomic<size_t> preferred_{0};
  std::atomic<bool> resolved_{false};
  mutable std::mutex mu_;
  std::map<std::string, std::map<size_t, uint64_t>> served_;  // digest -> endpoint -> bytes
};

}  // namespace regfs

#endif  // REGFS_READER_HTTP_MIRROR_SET_H_
