// FaultServer: an in-process HTTP/1.1 server for reader tests. It serves
// registered resources (with Range support, keep-alive), emulates the bits of
// a registry a reader needs (bearer token endpoint, basic auth, JSON errors),
// and injects faults per path or per request: resets, stalls, truncated
// bodies, ignored Range, bad Content-Range, 401/403/416/429/500/503,
// redirects and redirect loops. It counts open connections (and the peak),
// connections accepted and requests served.
//
// A liar (SetLiar) may rewrite any answer after it was decided: status,
// headers, body, and how the body is framed (a lying Content-Length, chunked
// with lying chunk sizes, close-delimited, cut short, or never ending), so a
// test can serve a registry that lies about what it serves.
//
// Binds 127.0.0.1 port 0; one thread per connection. Stop() (or the
// destructor) ends every thread and closes every fd it opened; a stalled
// response ends at Stop() or when the client hangs up.
#ifndef REGFS_TESTS_SUPPORT_FAULT_SERVER_H_
#define REGFS_TESTS_SUPPORT_FAULT_SERVER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "reader/base/status.h"

namespace regfs::testing {

enum class FaultKind {
  kNone,
  kResetMidBody,         // headers and half the body, then a TCP reset
  kStall,                // headers and half the body, then silence
  kTruncate,             // full Content-Length, half the body, then close
  kIgnoreRange,          // 200 with the whole body despite Range
  kWrongContentRange,    // 206 whose Content-Range starts one byte late
  kMissingContentRange,  // 206 without Content-Range
  kRangeNotSatisfiable,  // 416
  kUnauthorized,         // 401 with the Bearer challenge, whatever was sent
  kForbidden,            // 403
  kTooManyRequests,      // 429 (Retry-After when retry_after_s >= 0)
  kServiceUnavailable,   // 503 (Retry-After when retry_after_s >= 0)
  kInternalError,        // 500
  kRedirect,             // 307 to `location`
  kRedirectLoop,         // 307 to the request's own URL
  kDrip,                 // the whole answer, its body at drip_bytes_per_s (a slow drip)
};
const char* FaultKindName(FaultKind k);

struct Fault {
  FaultKind kind = FaultKind::kNone;
  int retry_after_s = -1;
  std::string location;                    // kRedirect: absolute URL
  std::chrono::milliseconds stall{60000};  // kStall: at most this long
  bool retry_after_as_date = false;        // send Retry-After as an HTTP-date (now + retry_after_s)
  int drip_bytes_per_s = 2048;             // kDrip: the body's rate (>= 1)
};

struct RecordedRequest {
  std::string method;
  std::string target;                          // path and query as sent
  std::string path;                            // without the query
  std::map<std::string, std::string> headers;  // names lowercase
  int status = 0;                              // the status answered
  FaultKind fault = FaultKind::kNone;
  std::string Header(const std::string& name) const;
};

// An answer as the liar may rewrite it. The server fills status, headers
// (without Content-Length / Transfer-Encoding) and body with the honest
// answer (a 206 carries just the range's bytes), then sends what the liar
// left.
struct LieResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The Content-Length sent; nullopt = body.size(). Ignored when chunked or
  // close_delimited.
  std::optional<uint64_t> content_length;
  bool chunked = false;          // Transfer-Encoding: chunked, one chunk per 64 KiB
  std::string first_chunk_size;  // chunked: this hex size line for the first chunk
  bool close_delimited = false;  // no length at all: the body ends when the server closes
  uint64_t send_at_most = UINT64_MAX;  // body bytes sent before a clean close
  int body_bytes_per_s = 0;            // > 0: the body itself drips at this rate
  // After the body, send filler ('x') until the client hangs up or Stop():
  // at endless_bytes_per_s when > 0, else as fast as it goes. In the headers
  // instead (an endless header section, one line at a time) when endless_headers.
  bool endless = false;
  bool endless_headers = false;
  int endless_bytes_per_s = 0;
  bool close = false;  // close the connection after the answer
  // Sent before the status line: what a previous answer's stray bytes look
  // like to the next request on a kept-alive connection.
  std::string raw_prefix;
};

class FaultServer {
 public:
  FaultServer();
  ~FaultServer();
  FaultServer(const FaultServer&) = delete;
  FaultServer& operator=(const FaultServer&) = delete;

  Status Start();
  void Stop();

  int port() const { return port_; }
  std::string host_port() const;  // "127.0.0.1:N"
  std::string url() const;        // "http://127.0.0.1:N"

  // Serves `body` at `path` (exact, query ignored) for GET and HEAD.
  void AddResource(const std::string& path, std::string body,
                   std::string content_type = "application/octet-stream",
                   std::vector<std::pair<std::string, std::string>> extra_headers = {});
  // The next `count` requests for `path` ("" = any path) get `fault`.
  void AddFault(const std::string& path, Fault fault, int count = 1);
  // Consulted for requests without a queued fault; must be thread-safe.
  void SetFaultPicker(std::function<Fault(const RecordedRequest&)> picker);
  // Called for every answer (token endpoint and errors included, HEAD too),
  // after faults applied; must be thread-safe. Empty: answers stay honest.
  void SetLiar(std::function<void(const RecordedRequest&, LieResponse&)> liar);

  // Registry auth emulation. With bearer on, every path but /token needs
  // "Authorization: Bearer <token>" from GET /token; tokens are valid for
  // `valid_for` and advertised with expires_in = `expires_in_s`.
  void RequireBearer(int expires_in_s, std::chrono::milliseconds valid_for);
  // The token endpoint additionally demands basic credentials.
  void RequireBasicForToken(const std::string& user, const std::string& password);
  // Every path needs "Authorization: Basic ..." for user:password.
  void RequireBasic(const std::string& user, const std::string& password);
  void ExpireTokens();
  // The realm named in Bearer challenges instead of url() + "/token" (say,
  // the same server as "http://localhost:PORT/token", another origin).
  void SetTokenRealm(const std::string& realm);
  // Answers 400 to any request carrying Authorization (as S3 does for a
  // presigned URL).
  void RejectAuthorization(bool reject);

  int open_connections() const;
  int peak_connections() const;
  uint64_t accepted_connections() const;
  uint64_t total_requests() const;
  uint64_t body_bytes_sent() const { return body_bytes_sent_.load(); }
  uint64_t token_requests() const { return token_requests_.load(); }
  std::vector<RecordedRequest> requests() const;
  int RequestCount(const std::string& path) const;
  void ResetPeak();

 private:
  struct Conn;
  struct Resource {
    std::shared_ptr<const std::string> body;
    std::string content_type;
    std::vector<std::pair<std::string, std::string>> extra_headers;
  };
  void AcceptLoop();
  void Serve(Conn* c);
  // Returns false when the connection must close.
  bool Handle(Conn* c, RecordedRequest& req);
  void ReapLocked();  // marks peer-closed connections; joins finished threads
  void Record(const RecordedRequest& r);
  bool WaitStall(int fd, std::chrono::milliseconds d);
  // Sends `len` bytes at about `bytes_per_s`; false when the client hung up.
  bool Drip(int fd, const char* data, size_t len, int bytes_per_s);
  // Sends `lie` as told (see LieResponse); false when the connection must close.
  bool SendLie(int fd, bool head_only, LieResponse& lie);
  std::string RealmLocked() const;  // the Bearer realm; mu_ held

  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::atomic<bool> stop_{false};

  mutable std::mutex mu_;
  std::condition_variable stall_cv_;
  std::vector<std::unique_ptr<Conn>> conns_;                         // guarded by mu_
  int open_ = 0, peak_ = 0;                                          // guarded by mu_
  uint64_t accepted_ = 0;                                            // guarded by mu_
  std::map<std::string, Resource> resources_;                        // guarded by mu_
  std::map<std::string, std::deque<std::pair<Fault, int>>> faults_;  // guarded by mu_
  std::function<Fault(const RecordedRequest&)> picker_;              // guarded by mu_
  std::function<void(const RecordedRequest&, LieResponse&)> liar_;   // guarded by mu_
  std::optional<std::pair<int, std::chrono::milliseconds>> bearer_;  // guarded by mu_
  std::string token_basic_, basic_;  // guarded by mu_; expected header values
  std::map<std::string, std::chrono::steady_clock::time_point> tokens_;  // guarded by mu_
  uint64_t next_token_ = 0;                                              // guarded by mu_
  bool reject_auth_ = false;                                             // guarded by mu_
  std::string token_realm_;                                              // guarded by mu_
  std::vector<RecordedRequest> log_;                                     // guarded by mu_
  uint64_t total_requests_ = 0;                                          // guarded by mu_
  std::atomic<uint64_t> body_bytes_sent_{0}, token_requests_{0};
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_FAULT_SERVER_H_
