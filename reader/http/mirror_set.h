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
// per read.
//
// Pull-through caches filling a blob (issue 18): distribution's proxy mode
// (2.8), asked for a blob it does not hold, starts one background fetch from
// the upstream to store it, and answers the request itself with a second
// fetch streamed through whole (200), whatever Range was asked; so does every
// request for the blob until the stored copy is committed, after which the
// blob is served from storage (206 to a Range). Each request during the fill
// thus costs the upstream a fetch of its own: the whole blob, or what the
// upstream sent before the request went away. So a mirror's answer of 200 to
// a Range request is taken as "filling" and dropped at its headers, and the
// blob's reads from that mirror wait for the fill: one of them asks again
// when a blob of its size should be in (MirrorFillOptions), then at growing
// intervals, until the mirror answers 206; meanwhile the others wait for
// that answer instead of asking. A fleet of readers then costs the upstream
// the background fetch and one dropped answer per reader and blob, not a
// fetch per request.
//
// distribution 3 instead fills its copy from the first answer it streams,
// and a dropped answer cancels that fill: until a mirror was seen filling a
// blob by itself, a blob still answered 200 after twice its expected fill
// time (plus MirrorFillOptions::unproven_wait) is read once from a whole
// answer to its end (every byte kept in the chunk cache through the
// spare-chunk handler), which lets such a fill complete. Blobs too small to
// be worth waiting for, and blobs never served by range before max_wait (a
// mirror without range support), are taken out of the 200 (windowed) as
// before. Thread-safe.
#ifndef REGFS_READER_HTTP_MIRROR_SET_H_
#define REGFS_READER_HTTP_MIRROR_SET_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
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

// How reads treat a mirror answering 200 (the whole blob) to a Range
// request, as a pull-through cache does while it fills its copy.
struct MirrorFillOptions {
  // False: the range is taken out of the 200 at once (windowed).
  bool wait_for_fills = true;
  // Blobs up to this size are windowed at once: one read of such a blob
  // costs the upstream about what an answer dropped at its headers costs.
  uint64_t window_below = 512 << 10;
  // The fill rate assumed for the first ask after a 200 (a blob of size S is
  // asked for again S / rate after the first 200), until a fill was timed.
  double assumed_bytes_per_s = 100e6;
  // Later asks come a quarter of the time waited so far apart, within these
  // bounds.
  std::chrono::milliseconds min_interval{100};
  std::chrono::milliseconds max_interval{2000};
  // Until the mirror was seen filling a blob by itself, a blob still
  // answered 200 after twice its expected fill time plus this is read once
  // from a whole answer; one still answered 200 after twice that is windowed,
  // and so is every blob of a mirror that never answered 206 by then.
  std::chrono::milliseconds unproven_wait{2000};
  // Once it was: a blob still answered 200 this long after its first 200 is
  // windowed.
  std::chrono::milliseconds max_wait{60000};
};

struct EndpointReport {
  std::string location;
  std::string registry;  // host[:port] connected to
  bool mirror = false;
  bool preferred = false;     // served the manifest
  bool cooling_down = false;  // failed lately: tried last
  uint64_t failures = 0;      // reads or resolutions that failed here
  // 200 answers to Range requests dropped at their headers (a mirror filling
  // the blob), and blobs whose fill was waited for until a 206 came.
  uint64_t filling_answers = 0;
  uint64_t fills_waited = 0;
  RegistryCounters counters;
  std::string last_error;
};

class MirrorSet : public BlobSource {
 public:
  // InvalidArgument when `endpoints` is empty or a client cannot be made
  // (a bad credentials file).
  static Result<std::unique_ptr<MirrorSet>> Create(std::vector<MirrorEndpoint> endpoints,
                                                   MirrorFillOptions fill = {});
  ~MirrorSet() override;

  // The image `logical` (the reference as the user named it) resolves to,
  // from the first endpoint that serves it. The result's ref is `logical`.
  // When all fail: the primary's error, the mirrors' errors added.
  Result<ResolvedImage> Resolve(const Reference& logical, const std::optional<Platform>& platform);

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
    // Guarded by MirrorSet::fill_mu_.
    bool served_a_range = false;  // answered a Range request with 206
    bool windows_only = false;    // gave up waiting for fills: windowed from now on
    double fill_rate = 0;         // bytes/s of the last fill timed (0: none yet)
    uint64_t filling_answers = 0;
    uint64_t fills_waited = 0;
  };
  // One blob at one mirror, as its answers showed it.
  struct BlobFill {
    enum class State { kUnasked, kAsking, kFilling, kServed, kWindowed };
    State state = State::kUnasked;
    std::chrono::steady_clock::time_point first_fill_answer;  // the first 200
    std::chrono::steady_clock::time_point next_ask;           // kFilling: ask again then
    int filling_answers = 0;
    bool read_whole = false;  // a whole answer was read to its end once
  };
  MirrorSet(std::vector<std::unique_ptr<Endpoint>> endpoints, MirrorFillOptions fill);

  // A ranged read from endpoint i, given the options to read with.
  using RangeRead = std::function<Status(const RegistryClient::RangeReadOptions&)>;
  // `read` from endpoint i; for a mirror, through the blob's fill state
  // (see the class comment).
  Status ReadFromEndpoint(size_t i, const BlobDescriptor& blob, const RangeRead& read);
  // The time a blob of this size should take to fill there (fill_mu_ held).
  std::chrono::milliseconds ExpectedFill(const Endpoint& e, const BlobDescriptor& blob) const;
  // When to ask again after a 200 (fill_mu_ held).
  std::chrono::steady_clock::time_point NextAsk(const Endpoint& e, const BlobFill& f,
                                                const BlobDescriptor& blob,
                                                std::chrono::steady_clock::time_point now) const;

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
  const MirrorFillOptions fill_;
  mutable std::mutex fill_mu_;
  std::condition_variable fill_cv_;
  std::map<std::pair<size_t, std::string>, BlobFill> fills_;  // guarded by fill_mu_
};

}  // namespace regfs

#endif  // REGFS_READER_HTTP_MIRROR_SET_H_
