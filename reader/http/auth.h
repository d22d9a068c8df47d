// Registry authentication: anonymous and credentialed bearer tokens (the
// Docker token protocol: a 401 carries `WWW-Authenticate: Bearer realm=..,
// service=.., scope=..`; GET realm?service=..&scope=.. answers {"token" or
// "access_token", "expires_in"}) and HTTP basic auth. Tokens are cached per
// scope and refreshed before they expire, and on 401 or 403.
//
// Where Basic credentials go: to the registry's own origin, and to the
// token realm it names when MaySendBasicToRealm() allows (over https to any
// host, as containers/image and docker do, since the registry names its
// realm; over plain http only to the registry's own host, when the user
// made that registry insecure). A realm that may not
// have them gets an anonymous token request instead.
//
// Every request made here ends by the caller's deadline (the retry budget).
//
// Secrets (passwords, tokens, Authorization lines) live only inside this
// class and the request that carries them; no message or log line built here
// contains one. Failures: Unauthorized when credentials are missing or
// refused, Transient/Protocol/NotFound from the token endpoint as the HTTP
// client maps them.
#ifndef REGFS_READER_HTTP_AUTH_H_
#define REGFS_READER_HTTP_AUTH_H_

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "reader/http/http_client.h"
#include "reader/image/credentials.h"

namespace regfs {

struct AuthChallenge {
  std::string scheme;                         // lowercase: "bearer", "basic"
  std::map<std::string, std::string> params;  // names lowercase
};

// Parses a WWW-Authenticate value (one or more challenges, quoted or token
// parameter values). Unparseable input yields what could be parsed.
std::vector<AuthChallenge> ParseWwwAuthenticate(std::string_view value);

// "Basic base64(user:pass)".
std::string BasicAuthorization(const Credentials& creds);

// Whether Basic credentials for the registry at `registry_url` (its base,
// "https://host[:port]" or "http://...") may go to its token realm
// `realm_url`: over https always (any host: the registry names its realm,
// and containers/image and docker send them there too); over plain http
// only when the user made the registry insecure (`registry_insecure`,
// --tls-verify=false) and the realm is on the registry's own host (any
// port: a token server beside the registry), never to another host in
// clear.
bool MaySendBasicToRealm(std::string_view realm_url, std::string_view registry_url,
                         bool registry_insecure);

class Authenticator {
 public:
  // `http` must outlive this object.
  Authenticator(HttpClient* http, std::optional<Credentials> creds, bool verify_tls);
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  using Deadline = std::optional<std::chrono::steady_clock::time_point>;

  // The registry's base URL ("https://host:port"), once decided: where
  // Basic credentials may go (see MaySendBasicToRealm). Until it is set,
  // no token realm gets them.
  void SetRegistryUrl(const std::string& url);

  // The "Authorization: ..." header line for a registry request in `scope`
  // ("repository:a/b:pull"), or "" when none is known to be needed yet. May
  // fetch a token (by `deadline`) when the cached one is about to expire.
  Result<std::string> HeaderFor(const std::string& scope, Deadline deadline = {});

  // The registry answered 401 or 403 to a request that carried `sent` (the
  // header line or ""). OK means retrying may now succeed (new token, or
  // basic credentials to send); Unauthorized means it cannot.
  Status OnRejected(long http_status, std::string_view www_authenticate, const std::string& scope,
                    const std::string& sent, Deadline deadline = {});

  uint64_t token_fetches() const { return token_fetches_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Token {
    std::string header;  // "Authorization: Bearer ..."
    Clock::time_point refresh_at;
  };
  enum class Mode { kNone, kBasic, kBearer };

  // Fetches a token for `scope` into tokens_. Called with fetch_mu_ held.
  Status FetchToken(const std::string& scope, Deadline deadline);

  HttpClient* const http_;
  const std::optional<Credentials> creds_;
  const bool verify_tls_;

  std::mutex fetch_mu_;  // single-flight token fetches; taken before mu_
  mutable std::mutex mu_;
  Mode mode_ = Mode::kNone;              // guarded by mu_
  std::string realm_, service_;          // guarded by mu_
  std::string registry_url_;             // guarded by mu_
  bool warned_withheld_ = false;         // guarded by mu_
  std::map<std::string, Token> tokens_;  // guarded by mu_; by scope
  std::atomic<uint64_t> token_fetches_{0};
};

}  // namespace regfs

#endif  // REGFS_READER_HTTP_AUTH_H_
