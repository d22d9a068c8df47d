// HttpClient: one HTTP exchange at a time per call, over a bounded pool of
// curl easy handles per origin (scheme://host:port). Each easy handle keeps at
// most one connection, so an origin never sees more connections from this
// client than its pool size. A call borrows a handle for the duration of one
// exchange and returns it (RAII lease); nothing outlives the call, nothing is
// tied to an open file, and no handle is ever used by two threads at once.
//
// An exchange never follows redirects (the registry client does that by
// hand), always sends "Accept-Encoding: identity", ends stalls with a
// low-speed limit and a slow drip at its deadline (HttpRequest::deadline,
// the wait for a pooled connection included), and writes the body into a
// caller-provided buffer with a hard cap: a body that would exceed it, or a
// 200 answering a ranged request (unless allowed), aborts the transfer
// instead of buffering it. An answer to a ranged request must state its
// length in Content-Length (no Transfer-Encoding, not delimited by the
// close): a chunked body's lying chunk sizes would hand its framing on as
// bytes of the blob.
//
// Failures: every (CURLcode, HTTP status) pair maps to a Status in one
// function, StatusFromHttp(). Transient = worth retrying (reset, timeout, 408,
// 429, 5xx); Unauthorized = 401/403; NotFound = 404; RangeNotSatisfiable =
// 416; Protocol = a response that breaks HTTP or what we asked for. Registry
// JSON error bodies ({"errors":[{"code","message"}]}) become the message.
// Messages carry redacted URLs (no query, no user info) and never headers.
#ifndef REGFS_READER_HTTP_HTTP_CLIENT_H_
#define REGFS_READER_HTTP_HTTP_CLIENT_H_

#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "reader/http/curl_handles.h"

namespace regfs {

// ---------------------------------------------------------------------------
// Connection pool

struct PoolStats {
  int limit = 0;       // the most easy handles (= connections) it will create
  int created = 0;     // handles created so far (never exceeds limit)
  int borrowed = 0;    // handles lent out right now
  uint64_t waits = 0;  // borrows that had to wait for a free handle
};

// A bounded set of easy handles for one origin. Borrow() waits while all
// `limit` handles are lent out.
class ConnectionPool {
 public:
  explicit ConnectionPool(int limit);
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  // Returns the handle to the pool when destroyed. Move-only.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept : pool_(o.pool_), handle_(std::move(o.handle_)) { o.pool_ = nullptr; }
    Lease& operator=(Lease&& o) noexcept;
    ~Lease();
    CURL* get() const { return handle_.get(); }
    // Closes the handle's connection instead of returning it for reuse.
    void Discard() { handle_.reset(); }

   private:
    friend class ConnectionPool;
    Lease(ConnectionPool* pool, CurlEasyPtr h) : pool_(pool), handle_(std::move(h)) {}
    ConnectionPool* pool_ = nullptr;
    CurlEasyPtr handle_;
  };

  // IoError when curl cannot allocate a handle; Transient when no handle
  // came free before `deadline`.
  Result<Lease> Borrow(std::optional<std::chrono::steady_clock::time_point> deadline = {});
  PoolStats Stats() const;

 private:
  void Return(CurlEasyPtr h);

  const int limit_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<CurlEasyPtr> idle_;  // guarded by mu_; most recently used last
  int created_ = 0;                // guarded by mu_; handles alive (idle or lent)
  int borrowed_ = 0;               // guarded by mu_
  uint64_t waits_ = 0;             // guarded by mu_
};

// ---------------------------------------------------------------------------
// One exchange

struct ByteRange {
  uint64_t first = 0;  // inclusive
  uint64_t last = 0;   // inclusive
  uint64_t size() const { return last - first + 1; }
};

// "bytes first-last/total" ("*" total -> nullopt total).
struct ContentRange {
  uint64_t first = 0, last = 0;
  std::optional<uint64_t> total;
};
std::optional<ContentRange> ParseContentRange(std::string_view value);

struct HttpResponse;

struct HttpRequest {
  std::string url;
  bool head = false;                 // HEAD instead of GET
  std::vector<std::string> headers;  // extra "Name: value" lines
  // A closed range: sends Range, and requires 206 with a matching
  // Content-Range (and total == expected_total when given).
  std::optional<ByteRange> range;
  std::optional<uint64_t> expected_total;
  // Accept a 200 (whole body) in answer to `range`; the body cap still holds.
  bool allow_full_body_for_range = false;
  // Accept a 200 (the whole blob, as a pull-through cache filling its own
  // copy sends, or storage behind a redirect) in answer to `range`, when its
  // Content-Length is expected_total (if both are known): the bytes before
  // the range are skipped (handed to `outside_range` when set), the range's
  // go where a 206's would, and the transfer ends after the range's last
  // byte (the connection is closed then, not reused).
  bool window_full_body_for_range = false;
  // With window_full_body_for_range: read such a 200 to its end, the bytes
  // after the range to `outside_range` too (a pull-through cache that fills
  // its copy from this very answer needs it read whole).
  bool window_reads_to_end = false;
  // Bytes of such a 200 body outside `range` that arrived anyway, with their
  // offset in the body. Must not fail; an exception is swallowed.
  std::function<void(uint64_t, std::span<const uint8_t>)> outside_range;
  // Called once the final answer's headers are in (not for a 1xx interim
  // one), before they are checked and before any body byte: a caller can
  // act on the status while the body is still to come. Must not fail; an
  // exception is swallowed.
  std::function<void(const HttpResponse&)> on_headers;
  // Where a 2xx body goes: into `body_out` (cap = its size) when non-empty,
  // else to `body_sink` when set (cap = sink_cap), else into
  // HttpResponse::body up to `max_body` bytes.
  std::span<uint8_t> body_out;
  // Called with the body's bytes in order, as they arrive. A non-OK return
  // stops the transfer, and the result's status is that one.
  std::function<Status(std::span<const uint8_t>)> body_sink;
  uint64_t sink_cap = 0;
  size_t max_body = 1 << 20;
  bool verify_tls = true;
  // On a new connection rather than the pooled one: its receive window
  // starts small, so a server that streams before it notices the request
  // dropped has sent little (a pooled connection's window may have grown to
  // megabytes on earlier transfers).
  bool fresh_connection = false;
  // When the exchange must be over, waiting for a connection included: a
  // transfer still running then (say, a body dripping slowly enough to pass
  // the low-speed limit) ends with a Transient error. None: no bound but the
  // low-speed limit.
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

struct HttpResponse {
  long status = 0;                                           // 0 when no status line arrived
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  std::string body;            // 2xx body (no body_out) or the (capped) error body
  uint64_t body_bytes = 0;     // 2xx body bytes delivered (body_out or body)
  uint64_t skipped_bytes = 0;  // bytes of a windowed 200 body outside the range
  bool headers_complete = false;

  // First value of header `name` (lowercase), or empty.
  std::string Header(std::string_view name) const;
};

struct HttpResult {
  Status status;          // StatusFromHttp() or a validation failure
  HttpResponse response;  // as much as arrived, also on error
};

// THE mapping of transport result and HTTP status to a Status. `http_status`
// 0 means no response; `body` is an error body (registry JSON or text); `what`
// prefixes the message ("GET <redacted url>"); `curl_detail` is curl's error
// buffer (empty: curl_easy_strerror). An HTTP error status wins over a
// transport error that followed it.
Status StatusFromHttp(CURLcode code, long http_status, std::string_view body, std::string_view what,
                      std::string_view curl_detail = {});
// "CODE: message; CODE2: message2" from a registry error body, or empty.
std::string RegistryErrorMessage(std::string_view body);

struct HttpClientOptions {
  int pool_size = 8;  // per origin
  long connect_timeout_ms = 10000;
  // A transfer slower than low_speed_limit bytes/s for low_speed_time_s ends
  // with a Transient error (stalls end).
  long low_speed_limit = 1024;
  long low_speed_time_s = 20;
  std::string user_agent = "regfs/0.1";
  std::string ca_file;  // CA bundle file instead of the system's; empty = system default
  // PEM certificates trusted in addition to the system's CAs (a registry's
  // own CA, as skopeo's --cert-dir). A system bundle that cannot be read
  // leaves only these.
  std::string extra_ca_pem;
  // A client certificate and its private key (PEM), presented to servers
  // that ask for one. Both or neither.
  std::string client_cert_pem, client_key_pem;
  // When set and true, transfers in progress end (Transient "cancelled")
  // within about a second and new ones are not started: a daemon whose
  // mount went away stops its downloads. Must outlive the client.
  const std::atomic<bool>* cancel = nullptr;
};

struct HttpCounters {
  uint64_t requests = 0;
  uint64_t body_bytes = 0;  // 2xx body bytes received
  uint64_t transport_errors = 0;
};

class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options);
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One exchange; blocks while the origin's pool is exhausted. Thread-safe.
  HttpResult Perform(const HttpRequest& request);

  // Pool state for the origin of `url`; zeros when it has no pool yet.
  PoolStats PoolStatsFor(std::string_view url) const;
  HttpCounters Counters() const;
  const HttpClientOptions& options() const { return options_; }

 private:
  Result<ConnectionPool*> PoolFor(const UrlOrigin& origin);

  const HttpClientOptions options_;
  // The system's CAs and extra_ca_pem, for CURLOPT_CAINFO_BLOB; empty when
  // there are no extra CAs. Outlives every handle (CURL_BLOB_NOCOPY).
  std::string ca_blob_;
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<ConnectionPool>> pools_;  // guarded by mu_
  std::atomic<uint64_t> requests_{0}, body_bytes_{0}, transport_errors_{0};
};

}  // namespace regfs

#endif  // REGFS_READER_HTTP_HTTP_CLIENT_H_
