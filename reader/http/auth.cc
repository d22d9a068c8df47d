#include "reader/http/auth.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "reader/base/base64.h"
#include "reader/base/log.h"

namespace regfs {
namespace {

bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~/").find(c) != std::string_view::npos;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string PercentEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

std::vector<AuthChallenge> ParseWwwAuthenticate(std::string_view v) {
  std::vector<AuthChallenge> out;
  size_t i = 0;
  auto skip = [&](std::string_view chars) {
    while (i < v.size() && chars.find(v[i]) != std::string_view::npos) ++i;
  };
  auto token = [&] {
    size_t start = i;
    while (i < v.size() && IsTokenChar(v[i])) ++i;
    return std::string(v.substr(start, i - start));
  };
  while (i < v.size()) {
    skip(" \t,");
    std::string word = token();
    if (word.empty()) {
      if (i < v.size()) ++i;  // skip a stray character
      continue;
    }
    skip(" \t");
    if (i < v.size() && v[i] == '=' && !out.empty()) {
      // name=value inside the current challenge
      ++i;
      skip(" \t");
      std::string value;
      if (i < v.size() && v[i] == '"') {
        ++i;
        while (i < v.size() && v[i] != '"') {
          if (v[i] == '\\' && i + 1 < v.size()) ++i;
          value += v[i++];
        }
        if (i < v.size()) ++i;  // closing quote
      } else {
        value = token();
      }
      out.back().params[Lower(word)] = value;
    } else {
      out.push_back(AuthChallenge{Lower(word), {}});
    }
  }
  return out;
}

std::string BasicAuthorization(const Credentials& creds) {
  return "Basic " + Base64Encode(creds.username + ":" + creds.password);
}

bool MaySendBasicToRealm(std::string_view realm_url, std::string_view registry_url,
                         bool registry_insecure) {
  Result<UrlOrigin> realm = OriginOf(realm_url);
  if (!realm.ok()) return false;
  if (realm->scheme == "https") return true;
  Result<UrlOrigin> registry = OriginOf(registry_url);
  return registry_insecure && registry.ok() && realm->host == registry->host;
}

Authenticator::Authenticator(HttpClient* http, std::optional<Credentials> creds, bool verify_tls)
    : http_(http), creds_(std::move(creds)), verify_tls_(verify_tls) {}

void Authenticator::SetRegistryUrl(const std::string& url) {
  std::lock_guard<std::mutex> lock(mu_);
  registry_url_ = url;
}

Result<std::string> Authenticator::HeaderFor(const std::string& scope, Deadline deadline) {
  std::string stale;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (mode_ == Mode::kNone) return std::string();
    if (mode_ == Mode::kBasic) return "Authorization: " + BasicAuthorization(*creds_);
    auto it = tokens_.find(scope);
    if (it != tokens_.end()) {
      if (Clock::now() < it->second.refresh_at) return it->second.header;
      stale = it->second.header;
    }
  }
  std::lock_guard<std::mutex> fetch_lock(fetch_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tokens_.find(scope);
    if (it != tokens_.end() && Clock::now() < it->second.refresh_at) return it->second.header;
  }
  Status st = FetchToken(scope, deadline);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tokens_.find(scope);
  if (st.ok() && it != tokens_.end()) return it->second.header;
  // A failed early refresh: the old token may still be accepted.
  if (!stale.empty()) return stale;
  return st.ok() ? Status::Protocol("token endpoint gave no token") : st;
}

Status Authenticator::OnRejected(long http_status, std::string_view www_authenticate,
                                 const std::string& scope, const std::string& sent,
                                 Deadline deadline) {
  std::vector<AuthChallenge> challenges = ParseWwwAuthenticate(www_authenticate);
  const AuthChallenge* bearer = nullptr;
  const AuthChallenge* basic = nullptr;
  for (const AuthChallenge& c : challenges) {
    if (c.scheme == "bearer" && !bearer) bearer = &c;
    if (c.scheme == "basic" && !basic) basic = &c;
  }
  const std::string code = "HTTP " + std::to_string(http_status);
  bool sent_bearer = sent.rfind("Authorization: Bearer ", 0) == 0;

  if (bearer || (!basic && sent_bearer)) {
    std::lock_guard<std::mutex> fetch_lock(fetch_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bearer) {
        auto realm = bearer->params.find("realm");
        if (realm == bearer->params.end() || realm->second.empty()) {
          return Status::Protocol(code + ": Bearer challenge without a realm");
        }
        realm_ = realm->second;
        auto service = bearer->params.find("service");
        service_ = service == bearer->params.end() ? "" : service->second;
      }
      mode_ = Mode::kBearer;
      auto it = tokens_.find(scope);
      if (it != tokens_.end()) {
        // Another thread already replaced the token we sent: just retry.
        if (it->second.header != sent) return Status::Ok();
        tokens_.erase(it);
      }
    }
    return FetchToken(scope, deadline);
  }
  if (basic) {
    if (!creds_) {
      return Status::Unauthorized(code +
                                  ": the registry requires credentials and none were "
                                  "found (--creds, --authfile, auth.json)");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (mode_ == Mode::kBasic && !sent.empty()) {
      return Status::Unauthorized(code + ": credentials " + creds_->ToString() + " were rejected");
    }
    mode_ = Mode::kBasic;
    return Status::Ok();
  }
  return Status::Unauthorized(code + ": access denied");
}

Status Authenticator::FetchToken(const std::string& scope, Deadline deadline) {
  std::string url;
  bool may_send_basic = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (realm_.empty()) return Status::Protocol("no token realm known");
    may_send_basic = MaySendBasicToRealm(realm_, registry_url_, !verify_tls_);
    if (creds_ && !may_send_basic && !warned_withheld_) {
      warned_withheld_ = true;
      LOG_WARN("not sending credentials " + creds_->ToString() + " to the token realm " +
               RedactUrl(realm_) + ": plain http, and not the insecure registry's own host (" +
               RedactUrl(registry_url_) + "); asking for an anonymous token");
    }
    url = realm_ + (realm_.find('?') == std::string::npos ? "?" : "&");
    if (!service_.empty()) url += "service=" + PercentEncode(service_) + "&";
    url += "scope=" + PercentEncode(scope);
  }
  HttpRequest req;
  req.url = url;
  req.verify_tls = verify_tls_;
  req.deadline = deadline;
  req.max_body = 1 << 20;
  req.headers.push_back("Accept: application/json");
  // An identity token ("<token>" user) needs the OAuth2 POST flow, which is
  // not implemented; such credentials fetch an anonymous token.
  const bool send_basic = creds_ && creds_->username != "<token>" && may_send_basic;
  if (send_basic) req.headers.push_back("Authorization: " + BasicAuthorization(*creds_));
  token_fetches_.fetch_add(1);
  HttpResult r = http_->Perform(req);
  if (!r.status.ok()) {
    if (creds_ && !may_send_basic && r.status.code() == Code::kUnauthorized) {
      return r.status.Annotate(
          "token endpoint (credentials withheld: it is plain http, and not the insecure "
          "registry's own host)");
    }
    return r.status.Annotate("token endpoint");
  }
  nlohmann::json j = nlohmann::json::parse(r.response.body, nullptr, false);
  if (!j.is_object()) return Status::Protocol("token endpoint: response is not a JSON object");
  std::string token;
  for (const char* key : {"token", "access_token"}) {
    if (token.empty() && j.contains(key) && j[key].is_string()) token = j[key].get<std::string>();
  }
  if (token.empty()) return Status::Protocol("token endpoint: no token in response");
  int64_t ttl = 60;  // the protocol's default
  if (j.contains("expires_in") && j["expires_in"].is_number_integer()) {
    ttl = std::max<int64_t>(1, j["expires_in"].get<int64_t>());
  }
  // Refresh ahead of expiry by half the lifetime, at most 30 s.
  auto life = std::chrono::milliseconds(ttl * 1000);
  auto margin = std::min<std::chrono::milliseconds>(life / 2, std::chrono::seconds(30));
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[scope] = Token{"Authorization: Bearer " + token, Clock::now() + life - margin};
  return Status::Ok();
}

}  // namespace regfs
