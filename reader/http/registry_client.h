// RegistryClient: the OCI distribution API for one repository, over
// HttpClient. Fetches manifests (digest-verified), small blobs such as configs
// (digest-verified), and ranged reads of any blob (the BlobSource that the
// chunk cache wraps). ResolveImage() turns a reference into the manifest,
// config and platform a mount needs.
//
// Behaviour on the wire:
//  - Redirects are followed by hand, at most 10 hops, http(s) only, never
//    from https down to plain http (CheckRedirect). Requests to
//    another origin (scheme, host or port) carry no Authorization and no
//    registry-only header. A blob's redirect target is cached and re-resolved
//    through the registry when it answers 400/403/404.
//  - 401/403 from the registry trigger auth (bearer token fetch/refresh, or
//    basic credentials), at most twice per request.
//  - Transient failures (reset, stall, timeout, 429, 5xx, short body) are
//    retried with exponential backoff honouring Retry-After, bounded by
//    RetryPolicy in attempts and total time. The time budget is also every
//    attempt's deadline: each HTTP exchange of the request (token fetches,
//    redirect hops and the TLS probe included) ends when the budget does,
//    however slowly its answer drips in. A ranged read resumes from the
//    last byte received; an attempt that made progress does not use up an
//    attempt (the time budget still bounds it).
//  - tls_verify=false (skopeo's --tls-verify=false): the first request probes
//    https without certificate verification and falls back to plain http when
//    the TLS handshake fails; the choice is kept for the client's lifetime.
//
// Failures are Status codes from reader/base/status.h; bytes that fail digest
// verification are Corrupt and never returned. Thread-safe.
#ifndef REGFS_READER_HTTP_REGISTRY_CLIENT_H_
#define REGFS_READER_HTTP_REGISTRY_CLIENT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/http/auth.h"
#include "reader/http/http_client.h"
#include "reader/image/credentials.h"
#include "reader/image/manifest.h"
#include "reader/image/reference.h"

namespace regfs {

struct RetryPolicy {
  int max_attempts = 6;  // attempts per request, the first included
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{4000};
  std::chrono::milliseconds total_budget{25000};  // per request, sleeps included
};

struct RegistryClientOptions {
  bool tls_verify = true;
  int pool_size = 8;  // connections per origin
  RetryPolicy retry;
  long low_speed_limit = 1024;  // bytes/s ...
  long low_speed_time_s = 20;   // ... for this long ends a stalled transfer
  long connect_timeout_ms = 10000;
  CredentialOptions credentials;
  std::string user_agent = "regfs/0.1";
  std::string ca_file;       // CA bundle for https instead of the system's
  std::string extra_ca_pem;  // CAs trusted besides the system's (--cert-dir)
  // A client certificate and its key, PEM (--cert-dir's X.cert and X.key).
  std::string client_cert_pem, client_key_pem;
  // See HttpClientOptions::cancel; also ends the retry loop.
  const std::atomic<bool>* cancel = nullptr;
};

struct RegistryCounters {
  uint64_t requests = 0;   // HTTP exchanges, token and redirect hops included
  uint64_t bytes = 0;      // 2xx body bytes received
  uint64_t retries = 0;    // attempts after the first (transient failures)
  uint64_t resumes = 0;    // ranged reads continued after a partial body
  uint64_t redirects = 0;  // redirect hops followed
  uint64_t token_fetches = 0;
};

struct FetchedManifest {
  std::string bytes;
  std::string media_type;  // Content-Type without parameters (may be empty)
  std::string digest;      // sha256 of bytes, verified
};

class RegistryClient : public BlobSource {
 public:
  // Looks up credentials for ref.registry (options.credentials: --creds wins,
  // then the auth files). Errors: InvalidArgument for a bad credentials file.
  static Result<std::unique_ptr<RegistryClient>> Create(const Reference& ref,
                                                        RegistryClientOptions options);
  ~RegistryClient() override;

  // `reference` is a tag or "sha256:..". By digest, the bytes must hash to it;
  // by tag, to Docker-Content-Digest when the registry sends one. Corrupt on
  // mismatch. Manifests over 4 MiB are refused (Protocol).
  Result<FetchedManifest> GetManifest(std::string_view reference);

  // The whole blob, for small blobs (configs): refused above `max_size` or
  // above desc.size; digest-verified (Corrupt on mismatch).
  Result<std::string> GetBlob(const BlobDescriptor& desc, size_t max_size = 16 << 20);

  // BlobSource: bytes [offset, offset + out.size()) of `blob` by HTTP Range.
  // RangeNotSatisfiable when the range is outside [0, blob.size).
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override;
  // BlobSource: the same range, one request, handed to `sink` as it arrives.
  Status ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                    const ByteSink& sink) override;

  // One ranged read's options, for a caller that treats a pull-through
  // cache still filling its copy of a blob differently (MirrorSet).
  struct RangeReadOptions {
    // A 200 (the whole blob) in answer to the Range request ends the read
    // at its headers, before any body byte is taken (the connection is
    // closed), with Code::kProtocol and no retry, instead of the range being
    // taken out of it (also when the range is the whole blob).
    bool refuse_whole_body = false;
    // Each attempt on a new connection (HttpRequest::fresh_connection).
    bool fresh_connection = false;
    // Called with the HTTP status of the blob's answer (not a redirect
    // hop's) as soon as its headers are in, before its body; once per
    // attempt. Must not fail.
    std::function<void(long status)> on_answer;
    // A 200 is read to its end: the range taken out of it, every byte
    // outside the range offered to the spare-chunk handler (a cache that
    // fills its copy from this answer needs it read whole).
    bool whole_body_to_end = false;
  };
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out,
                const RangeReadOptions& options);
  Status ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len, const ByteSink& sink,
                    const RangeReadOptions& options);

  // Whole chunks (offsets multiple of `chunk_size`, `chunk_size` bytes or
  // up to the blob's end) of bytes that arrived outside the range a read
  // asked for: a pull-through cache still filling answers a Range request
  // with 200 and the whole blob, and what precedes the range is otherwise
  // thrown away. `handler` (say, a chunk cache's store) runs on the reading
  // thread and must not fail the read. Set before the first read.
  using SpareChunkHandler =
      std::function<void(const BlobDescriptor&, uint64_t offset, std::span<const uint8_t>)>;
  void SetSpareChunkHandler(uint64_t chunk_size, SpareChunkHandler handler);

  RegistryCounters Counters() const;
  const Reference& reference() const { return ref_; }
  // "https://host" or "http://host" once decided (after the first request).
  std::string BaseUrl();
  HttpClient& http() { return http_; }

 private:
  RegistryClient(const Reference& ref, RegistryClientOptions options,
                 std::optional<Credentials> creds);

  struct Call;  // one logical request across attempts, hops and auth rounds
  Status Execute(Call& call);
  // Bytes [offset, offset + len) of `blob` by a Range request, into
  // call.out or call.sink (whichever the caller set).
  Status ReadRange(const BlobDescriptor& blob, uint64_t offset, uint64_t len, Call& call);
  Status AttemptOnce(Call& call, bool* progressed);
  Result<std::string> ResolveBase(std::optional<std::chrono::steady_clock::time_point> deadline);

  const Reference ref_;
  const RegistryClientOptions options_;
  const std::string scope_;
  HttpClient http_;
  Authenticator auth_;

  std::mutex base_mu_;
  std::string base_url_;  // guarded by base_mu_; "" until decided

  std::mutex redirect_mu_;
  std::map<std::string, std::string> redirects_;  // guarded by redirect_mu_; digest -> URL

  std::atomic<uint64_t> retries_{0}, resumes_{0}, redirects_followed_{0};
  uint64_t spare_chunk_size_ = 0;
  SpareChunkHandler spare_;
};

// The image a reference resolves to, with every byte verified.
struct ResolvedImage {
  Reference ref;
  std::optional<std::string> index_bytes;  // when the reference named an index
  std::string index_digest;
  std::string index_media_type;
  std::string manifest_bytes;
  std::string manifest_digest;
  std::string manifest_media_type;
  ImageManifest manifest;
  std::string config_bytes;
  ImageConfig config;
  Platform platform;  // the platform chosen (from the index, else the config's)
};

// Whether a redirect from `from_url` to `to_url` may be followed: not from
// https down to plain http (the rest of the exchange, and a blob's bytes,
// would cross in clear), Protocol error saying so; http -> https is fine.
Status CheckRedirect(std::string_view from_url, std::string_view to_url);

// Fetches ref's manifest (Accepting OCI index/manifest and Docker list/schema
// 2); for an index picks `platform` (default HostPlatform()), skipping entries
// of unknown media types, and fetches that manifest; then fetches and verifies
// the config. NotFound (listing what is on offer) when no entry matches;
// Corrupt when the config's diff_ids do not pair with the manifest's layers.
Result<ResolvedImage> ResolveImage(RegistryClient& client, const Reference& ref,
                                   const std::optional<Platform>& platform = std::nullopt);

}  // namespace regfs

#endif  // REGFS_READER_HTTP_REGISTRY_CLIENT_H_
