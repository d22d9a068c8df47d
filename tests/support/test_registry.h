// TestRegistry: a real registry for tests. Starts Debian's
// /usr/bin/docker-registry (distribution 2.8) on 127.0.0.1 with a free port,
// a temporary storage directory and one of three auth modes:
//   kAnonymous - no auth;
//   kBasic     - htpasswd (bcrypt) with one user;
//   kToken     - `auth: token`, with an in-process TokenServer (below) that
//                issues RS256 JWTs carrying an x5c self-signed certificate.
// The registry process is always killed and reaped: by Stop(), or by the
// destructor; it also gets SIGKILL when the thread that started it exits
// (setpriv --pdeathsig), so start it from the test's main thread. Start() fails with a Status
// (never aborts) when the binary is missing or the registry does not answer /v2/ within a bounded
// time.
//
// Requests are counted from the registry's access log (one combined-log line
// per request, written to access_log_path()); log lines can lag the response
// by a few ms, so CountRequests callers that need exactness should poll.
#ifndef REGFS_TESTS_SUPPORT_TEST_REGISTRY_H_
#define REGFS_TESTS_SUPPORT_TEST_REGISTRY_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "reader/base/status.h"

namespace regfs::testing {

enum class RegistryAuth { kAnonymous, kBasic, kToken };

struct TestRegistryOptions {
  RegistryAuth auth = RegistryAuth::kAnonymous;
  // The one user for kBasic, and the user the token server accepts for kToken.
  std::string username = "regfs-user";
  std::string password = "regfs-password";
  // kToken: the token server hands anonymous clients pull-only tokens (as
  // Docker Hub does). When false it answers 401 to requests without valid
  // basic credentials.
  bool anonymous_pull = false;
  // kToken: lifetime of issued tokens (the "expires_in" and the exp claim).
  int token_lifetime_s = 300;
  // Path of the registry binary.
  std::string registry_binary = "/usr/bin/docker-registry";
  // Bound on waiting for /v2/ to answer after a start.
  int start_timeout_ms = 30000;
  // Serve https with a self-signed certificate for 127.0.0.1, made at the
  // first start and written to tls_cert_path() (a client that trusts it as
  // a CA can verify the registry).
  bool tls = false;
  // With tls: require a client certificate, self-signed, made at the first
  // start (client_cert_path(), client_key_path()).
  bool require_client_cert = false;
  // When set, the "redirect" storage middleware: a blob GET is answered 307
  // to this base URL + the blob's storage path (as a registry that serves
  // blobs from object storage).
  std::string redirect_base_url;
  // When set, a pull-through cache (distribution's proxy mode) of the
  // registry at this URL ("http://127.0.0.1:PORT"): pulls of anything it
  // lacks are fetched from there and kept; pushes are refused.
  std::string proxy_remote_url;
};

// A minimal HTTP token endpoint (GET /token?service=..&scope=..) for the
// registry's token auth. Runs one thread; answers one request per connection.
// Tokens are signed with a fresh RSA key whose self-signed certificate is
// written to cert_path() for the registry's rootcertbundle.
class TokenServer {
 public:
  TokenServer(std::string service, std::string issuer, std::string username, std::string password,
              bool anonymous_pull, int lifetime_s);
  ~TokenServer();  // Stop()s
  TokenServer(const TokenServer&) = delete;
  TokenServer& operator=(const TokenServer&) = delete;

  // Generates the key and certificate (writing the PEM to `cert_path`) and
  // starts listening on 127.0.0.1 port 0.
  Status Start(const std::string& cert_path);
  void Stop();

  int port() const { return port_; }
  std::string RealmUrl() const;  // "http://127.0.0.1:PORT/token"
  const std::string& service() const { return service_; }
  const std::string& issuer() const { return issuer_; }

  // Runtime knobs (thread-safe).
  // Lifetime reported as expires_in and used for the exp claim.
  void set_lifetime_s(int s) { lifetime_s_ = s; }
  // Added to the exp claim only: a negative skew beyond the registry's 60 s
  // leeway makes tokens the registry rejects although expires_in says valid.
  void set_exp_skew_s(int s) { exp_skew_s_ = s; }
  // When true every token request gets 401 (credentials "revoked").
  void set_reject_all(bool v) { reject_all_ = v; }

  // Counters.
  int requests() const { return requests_; }  // all token requests
  int tokens_issued() const { return tokens_issued_; }
  // The raw query strings received, for assertions on scope/service.
  std::vector<std::string> Queries() const;

  // Signs a token for `access` ("repository:NAME:ACTIONS" scopes) now; the
  // in-process path the HTTP handler also uses. Exposed for tests that want
  // to forge or inspect tokens.
  Result<std::string> IssueToken(const std::string& subject,
                                 const std::vector<std::string>& scopes);

 private:
  struct Keys;
  void Serve();
  void HandleConnection(int fd);

  std::string service_, issuer_, username_, password_;
  bool anonymous_pull_;
  std::atomic<int> lifetime_s_;
  std::atomic<int> exp_skew_s_{0};
  std::atomic<bool> reject_all_{false};
  std::atomic<int> requests_{0};
  std::atomic<int> tokens_issued_{0};
  mutable std::mutex mu_;
  std::vector<std::string> queries_;  // guarded by mu_
  std::unique_ptr<Keys> keys_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd
  int port_ = 0;
  std::thread thread_;
};

// One access-log line of the registry.
struct AccessLogEntry {
  std::string method;  // "GET"
  std::string path;    // "/v2/a/b/blobs/sha256:..", query included
  int status = 0;
  std::string user;  // "-" when anonymous
};

class TestRegistry {
 public:
  explicit TestRegistry(TestRegistryOptions opts = {});
  ~TestRegistry();  // Stop()s and removes the temp dir
  TestRegistry(const TestRegistry&) = delete;
  TestRegistry& operator=(const TestRegistry&) = delete;

  // Makes the temp dir, config (and htpasswd / token server) on first call,
  // picks a free port on first call, starts the process and waits for /v2/.
  Status Start();
  // Kills (SIGTERM, then SIGKILL after 5 s) and reaps. Idempotent.
  void Stop();
  // Stop() then Start() on the same port and storage.
  Status Restart();
  bool running() const { return pid_ > 0; }

  int port() const { return port_; }
  std::string HostPort() const;  // "127.0.0.1:PORT"
  std::string Url() const;       // "http://127.0.0.1:PORT" (https with tls)
  std::string tls_cert_path() const { return dir_ + "/tls-cert.pem"; }
  std::string client_cert_path() const { return dir_ + "/client.cert"; }
  std::string client_key_path() const { return dir_ + "/client.key"; }
  // "127.0.0.1:PORT/repo:tag" or ".../repo@sha256:.." (ref starting "sha256:").
  std::string Ref(std::string_view repo, std::string_view tag_or_digest) const;

  const TestRegistryOptions& options() const { return opts_; }
  const std::string& dir() const { return dir_; }
  const std::string& storage_dir() const { return storage_dir_; }
  const std::string& config_path() const { return config_path_; }
  const std::string& access_log_path() const { return access_log_path_; }  // stdout
  const std::string& log_path() const { return log_path_; }                // stderr
  // nullptr unless auth == kToken.
  TokenServer* token_server() { return token_server_.get(); }

  std::vector<AccessLogEntry> AccessLog() const;
  // Requests whose method equals `method` (empty = any) and whose path
  // contains `path_contains` (empty = any).
  int CountRequests(std::string_view method = "", std::string_view path_contains = "") const;
  // The tail of the registry's stderr log, for failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  Status Prepare();
  Status WaitReady();

  TestRegistryOptions opts_;
  std::string dir_, storage_dir_, config_path_, access_log_path_, log_path_;
  std::unique_ptr<TokenServer> token_server_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_TEST_REGISTRY_H_
