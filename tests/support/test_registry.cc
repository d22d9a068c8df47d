#include "tests/support/test_registry.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "reader/base/digest.h"
#include "reader/base/base64.h"

extern char** environ;

namespace regfs::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kSetpriv = "/usr/bin/setpriv";

// ---- small RAII types ----------------------------------------------------

struct FdCloser {
  int fd;
  explicit FdCloser(int f) : fd(f) {}
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
};

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
};
struct CurlFree {
  void operator()(CURL* p) const { curl_easy_cleanup(p); }
};

struct SpawnActions {
  posix_spawn_file_actions_t fa;
  SpawnActions() { posix_spawn_file_actions_init(&fa); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&fa); }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
};

// ---- encodings -------------------------------------------------------------

std::string UrlDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes));
  return HexEncode(raw);
}

Status WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return Status::IoError("cannot write " + path);
  return Status::Ok();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<int> FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::IoError(std::string("socket: ") + std::strerror(errno));
  FdCloser closer(fd);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::IoError(std::string("bind: ") + std::strerror(errno));
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return static_cast<int>(ntohs(addr.sin_port));
}

// bcrypt through libxcrypt, as htpasswd -B would.
Result<std::string> Bcrypt(const std::string& password) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn("$2b$", 5, nullptr, 0, salt, sizeof salt)) {
    return Status::IoError("crypt_gensalt for bcrypt failed");
  }
  crypt_data data{};
  const char* hash = crypt_r(password.c_str(), salt, &data);
  if (!hash || hash[0] == '*') return Status::IoError("bcrypt crypt_r failed");
  return std::string(hash);
}

// A fresh RSA key and a self-signed CA certificate for it (CN `cn`; with
// `san` such as "IP:127.0.0.1", also a server certificate for that name).
Status MakeSelfSigned(const std::string& cn, const char* san,
                      std::unique_ptr<EVP_PKEY, PkeyFree>* key_out,
                      std::unique_ptr<X509, X509Free>* cert_out) {
  std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_RSA_gen(2048));
  if (!key) return Status::IoError("RSA key generation failed");
  std::unique_ptr<X509, X509Free> cert(X509_new());
  X509* x = cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 7 * 24 * 3600);
  X509_set_pubkey(x, key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  std::vector<std::pair<int, const char*>> exts = {{NID_basic_constraints, "critical,CA:TRUE"}};
  if (san) exts.emplace_back(NID_subject_alt_name, san);
  for (const auto& [nid, value] : exts) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (!ext) return Status::IoError("certificate extension " + std::string(value));
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(x, key.get(), EVP_sha256()) == 0) {
    return Status::IoError("signing the certificate failed");
  }
  *key_out = std::move(key);
  *cert_out = std::move(cert);
  return Status::Ok();
}

// PEM text of whatever `write` puts into a memory BIO.
template <typename F>
std::string Pem(F&& write) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  write(bio.get());
  char* pem = nullptr;
  long pem_len = BIO_get_mem_data(bio.get(), &pem);
  return std::string(pem, static_cast<size_t>(pem_len));
}

// MakeSelfSigned, written as PEM to key_path and cert_path.
Status WriteSelfSigned(const std::string& cn, const char* san, const std::string& key_path,
                       const std::string& cert_path) {
  std::unique_ptr<EVP_PKEY, PkeyFree> key;
  std::unique_ptr<X509, X509Free> cert;
  RETURN_IF_ERROR(MakeSelfSigned(cn, san, &key, &cert));
  EVP_PKEY* k = key.get();
  X509* c = cert.get();
  RETURN_IF_ERROR(WriteFile(key_path, Pem([k](BIO* b) {
                              PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
                            })));
  return WriteFile(cert_path, Pem([c](BIO* b) { PEM_write_bio_X509(b, c); }));
}

}  // namespace

// ---- TokenServer -----------------------------------------------------------

struct TokenServer::Keys {
  std::unique_ptr<EVP_PKEY, PkeyFree> key;
  std::unique_ptr<X509, X509Free> cert;
  std::string cert_der_b64;
};

TokenServer::TokenServer(std::string service, std::string issuer, std::string username,
                         std::string password, bool anonymous_pull, int lifetime_s)
    : service_(std::move(service)),
      issuer_(std::move(issuer)),
      username_(std::move(username)),
      password_(std::move(password)),
      anonymous_pull_(anonymous_pull),
      lifetime_s_(lifetime_s) {}

TokenServer::~TokenServer() { Stop(); }

std::string TokenServer::RealmUrl() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/token";
}

std::vector<std::string> TokenServer::Queries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queries_;
}

Status TokenServer::Start(const std::string& cert_path) {
  if (listen_fd_ >= 0) return Status::Ok();
  if (!keys_) {
    auto keys = std::make_unique<Keys>();
    RETURN_IF_ERROR(MakeSelfSigned("regfs test token issuer", nullptr, &keys->key, &keys->cert));
    X509* x = keys->cert.get();
    unsigned char* der = nullptr;
    int der_len = i2d_X509(x, &der);
    if (der_len <= 0) return Status::IoError("i2d_X509 failed");
    keys->cert_der_b64 = Base64Encode(std::string_view(reinterpret_cast<char*>(der), der_len));
    OPENSSL_free(der);
    RETURN_IF_ERROR(WriteFile(cert_path, Pem([x](BIO* b) { PEM_write_bio_X509(b, x); })));
    keys_ = std::move(keys);
  }

  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::IoError(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port_));  // same port on a restart
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0) {
    int e = errno;
    ::close(fd);
    return Status::IoError(std::string("token server bind/listen: ") + std::strerror(e));
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (stop_fd_ < 0) {
    ::close(fd);
    return Status::IoError("eventfd failed");
  }
  listen_fd_ = fd;
  thread_ = std::thread([this] { Serve(); });
  return Status::Ok();
}

void TokenServer::Stop() {
  if (listen_fd_ < 0) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t w = ::write(stop_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
  listen_fd_ = stop_fd_ = -1;
}

void TokenServer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds[1].revents) return;
    if (fds[0].revents & POLLIN) {
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        FdCloser closer(c);
        HandleConnection(c);
      }
    }
  }
}

Result<std::string> TokenServer::IssueToken(const std::string& subject,
                                            const std::vector<std::string>& scopes) {
  if (!keys_) return Status::InvalidArgument("token server not started");
  json header = {{"typ", "JWT"}, {"alg", "RS256"}, {"x5c", json::array({keys_->cert_der_b64})}};
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  json access = json::array();
  for (const std::string& scope : scopes) {
    // "repository:a/b:pull,push" (the name itself has no ':' in our tests,
    // but a host:port would; split on the first and last ':').
    size_t first = scope.find(':'), last = scope.rfind(':');
    if (first == std::string::npos || first == last) continue;
    json actions = json::array();
    std::string acts = scope.substr(last + 1);
    size_t start = 0;
    while (start <= acts.size()) {
      size_t comma = acts.find(',', start);
      std::string a = acts.substr(start, comma == std::string::npos ? comma : comma - start);
      if (!a.empty()) actions.push_back(a);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    access.push_back({{"type", scope.substr(0, first)},
                      {"name", scope.substr(first + 1, last - first - 1)},
                      {"actions", actions}});
  }
  json claims = {{"iss", issuer_},       {"sub", subject},
                 {"aud", service_},      {"iat", now},
                 {"nbf", now - 10},      {"exp", now + lifetime_s_.load() + exp_skew_s_.load()},
                 {"jti", RandomHex(12)}, {"access", access}};
  std::string signing_input = Base64Encode(header.dump(), true) + "." + Base64Encode(claims.dump(), true);
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  size_t sig_len = 0;
  if (!md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, keys_->key.get()) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &sig_len,
                     reinterpret_cast<const unsigned char*>(signing_input.data()),
                     signing_input.size()) != 1) {
    return Status::IoError("JWT signing setup failed");
  }
  std::string sig(sig_len, '\0');
  if (EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                     reinterpret_cast<const unsigned char*>(signing_input.data()),
                     signing_input.size()) != 1) {
    return Status::IoError("JWT signing failed");
  }
  sig.resize(sig_len);
  ++tokens_issued_;
  return signing_input + "." + Base64Encode(sig, true);
}

void TokenServer::HandleConnection(int fd) {
  // Read the request head, bounded in size and time.
  std::string req;
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
    char buf[4096];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0) return;
    req.append(buf, static_cast<size_t>(r));
  }
  ++requests_;
  auto reply = [&](int code, const std::string& reason, const std::string& body,
                   const std::string& extra_headers) {
    std::string resp =
        "HTTP/1.1 " + std::to_string(code) + " " + reason +
        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nConnection: close\r\n" + extra_headers + "\r\n" + body;
    size_t off = 0;
    while (off < resp.size()) {
      ssize_t w = ::send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
      if (w <= 0) return;
      off += static_cast<size_t>(w);
    }
  };
  size_t line_end = req.find("\r\n");
  std::string line = req.substr(0, line_end);
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string::npos || sp2 == sp1) {
    reply(400, "Bad Request", "{}", "");
    return;
  }
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string path = target, query;
  size_t q = target.find('?');
  if (q != std::string::npos) {
    path = target.substr(0, q);
    query = target.substr(q + 1);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queries_.push_back(query);
  }
  if (path != "/token") {
    reply(404, "Not Found", R"({"error":"not found"})", "");
    return;
  }
  std::vector<std::string> scopes;
  std::string service, account;
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    std::string kv = query.substr(start, amp == std::string::npos ? amp : amp - start);
    size_t eq = kv.find('=');
    std::string k = UrlDecode(kv.substr(0, eq));
    std::string v = eq == std::string::npos ? "" : UrlDecode(kv.substr(eq + 1));
    if (k == "scope") {
      // A scope parameter may hold several space-separated scopes.
      std::istringstream ss(v);
      std::string one;
      while (ss >> one) scopes.push_back(one);
    } else if (k == "service") {
      service = v;
    } else if (k == "account") {
      account = v;
    }
    if (amp == std::string::npos) break;
    start = amp + 1;
  }
  // Authorization: Basic ...
  std::string user, pass;
  bool has_auth = false;
  {
    std::istringstream hs(req.substr(line_end + 2));
    std::string h;
    while (std::getline(hs, h)) {
      if (!h.empty() && h.back() == '\r') h.pop_back();
      size_t colon = h.find(':');
      if (colon == std::string::npos) continue;
      std::string name = h.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (name != "authorization") continue;
      std::string v = h.substr(colon + 1);
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      if (v.rfind("Basic ", 0) == 0) {
        std::string dec = Base64Decode(v.substr(6)).value_or("");
        size_t c = dec.find(':');
        if (c != std::string::npos) {
          user = dec.substr(0, c);
          pass = dec.substr(c + 1);
          has_auth = true;
        }
      }
    }
  }
  const std::string challenge = "WWW-Authenticate: Basic realm=\"regfs-token\"\r\n";
  if (reject_all_) {
    reply(401, "Unauthorized", R"({"errors":[{"code":"UNAUTHORIZED","message":"rejected"}]})",
          challenge);
    return;
  }
  if (service != service_) {
    reply(400, "Bad Request", R"({"errors":[{"code":"DENIED","message":"unknown service"}]})", "");
    return;
  }
  bool authed = has_auth && user == username_ && pass == password_;
  if (has_auth && !authed) {
    reply(401, "Unauthorized",
          R"({"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]})", challenge);
    return;
  }
  if (!authed && !anonymous_pull_) {
    reply(401, "Unauthorized",
          R"({"errors":[{"code":"UNAUTHORIZED","message":"credentials required"}]})", challenge);
    return;
  }
  if (!authed) {
    // Anonymous: pull only.
    for (std::string& s : scopes) {
      size_t last = s.rfind(':');
      if (last != std::string::npos) {
        std::string acts = s.substr(last + 1);
        s = s.substr(0, last + 1) + (acts.find("pull") != std::string::npos ? "pull" : "");
      }
    }
  }
  auto token = IssueToken(authed ? user : "", scopes);
  if (!token.ok()) {
    reply(500, "Internal Server Error", "{}", "");
    return;
  }
  char issued[64];
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(issued, sizeof issued, "%Y-%m-%dT%H:%M:%SZ", &tm);
  json body = {{"token", *token},
               {"access_token", *token},
               {"expires_in", lifetime_s_.load()},
               {"issued_at", issued}};
  reply(200, "OK", body.dump(), "");
}

// ---- TestRegistry ----------------------------------------------------------

TestRegistry::TestRegistry(TestRegistryOptions opts) : opts_(std::move(opts)) {}

TestRegistry::~TestRegistry() {
  Stop();
  if (token_server_) token_server_->Stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string TestRegistry::HostPort() const { return "127.0.0.1:" + std::to_string(port_); }
std::string TestRegistry::Url() const {
  return (opts_.tls ? "https://" : "http://") + HostPort();
}

std::string TestRegistry::Ref(std::string_view repo, std::string_view tag_or_digest) const {
  std::string r = HostPort() + "/" + std::string(repo);
  if (tag_or_digest.starts_with("sha256:")) return r + "@" + std::string(tag_or_digest);
  return r + ":" + std::string(tag_or_digest);
}

Status TestRegistry::Prepare() {
  if (!dir_.empty()) return Status::Ok();
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/regfs-registry-XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    return Status::IoError("mkdtemp " + tmpl + ": " + std::strerror(errno));
  }
  dir_ = tmpl;
  storage_dir_ = dir_ + "/storage";
  config_path_ = dir_ + "/config.yml";
  access_log_path_ = dir_ + "/access.log";
  log_path_ = dir_ + "/registry.log";
  std::filesystem::create_directories(storage_dir_);
  ASSIGN_OR_RETURN(port_, FreeLoopbackPort());

  std::string tls;
  if (opts_.tls) {
    if (::access(tls_cert_path().c_str(), R_OK) != 0) {  // kept across restarts
      RETURN_IF_ERROR(
          WriteSelfSigned("127.0.0.1", "IP:127.0.0.1", dir_ + "/tls-key.pem", tls_cert_path()));
    }
    tls = "  tls:\n    certificate: " + tls_cert_path() + "\n    key: " + dir_ + "/tls-key.pem\n";
    if (opts_.require_client_cert) {
      if (::access(client_cert_path().c_str(), R_OK) != 0) {
        RETURN_IF_ERROR(WriteSelfSigned("regfs test client", nullptr, client_key_path(),
                                        client_cert_path()));
      }
      // The client's self-signed certificate is its own CA.
      tls += "    clientcas:\n      - " + client_cert_path() + "\n";
    }
  }
  std::string auth;
  switch (opts_.auth) {
    case RegistryAuth::kAnonymous:
      break;
    case RegistryAuth::kBasic: {
      ASSIGN_OR_RETURN(std::string hash, Bcrypt(opts_.password));
      RETURN_IF_ERROR(WriteFile(dir_ + "/htpasswd", opts_.username + ":" + hash + "\n"));
      auth = "auth:\n  htpasswd:\n    realm: regfs-basic-realm\n    path: " + dir_ + "/htpasswd\n";
      break;
    }
    case RegistryAuth::kToken: {
      token_server_ = std::make_unique<TokenServer>("regfs-test-registry", "regfs-test-issuer",
                                                    opts_.username, opts_.password,
                                                    opts_.anonymous_pull, opts_.token_lifetime_s);
      RETURN_IF_ERROR(token_server_->Start(dir_ + "/token-cert.pem"));
      auth = "auth:\n  token:\n    realm: " + token_server_->RealmUrl() +
             "\n    service: " + token_server_->service() +
             "\n    issuer: " + token_server_->issuer() + "\n    rootcertbundle: " + dir_ +
             "/token-cert.pem\n";
      break;
    }
  }
  std::string config =
      "version: 0.1\n"
      "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
      "storage:\n  filesystem:\n    rootdirectory: " +
      storage_dir_ +
      "\n  delete:\n    enabled: true\n"
      "  maintenance:\n    uploadpurging:\n      enabled: false\n" +
      (opts_.redirect_base_url.empty()
           ? std::string()
           : "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: " +
                 opts_.redirect_base_url + "\n") +
      (opts_.proxy_remote_url.empty()
           ? std::string()
           : "proxy:\n  remoteurl: " + opts_.proxy_remote_url + "\n") +
      "http:\n  addr: 127.0.0.1:" +
      std::to_string(port_) + "\n  secret: regfs-test-secret\n" + tls + auth;
  return WriteFile(config_path_, config);
}

Status TestRegistry::Start() {
  if (running()) return Status::Ok();
  if (::access(opts_.registry_binary.c_str(), X_OK) != 0) {
    return Status::NotFound(opts_.registry_binary +
                            " is missing (apt-get install docker-registry)");
  }
  RETURN_IF_ERROR(Prepare());
  if (token_server_) RETURN_IF_ERROR(token_server_->Start(dir_ + "/token-cert.pem"));

  int out = ::open(access_log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0) return Status::IoError("open " + access_log_path_ + ": " + std::strerror(errno));
  FdCloser out_closer(out);
  int err = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (err < 0) return Status::IoError("open " + log_path_ + ": " + std::strerror(errno));
  FdCloser err_closer(err);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) return Status::IoError("open /dev/null");
  FdCloser null_closer(devnull);

  SpawnActions actions;
  posix_spawn_file_actions_adddup2(&actions.fa, devnull, 0);
  posix_spawn_file_actions_adddup2(&actions.fa, out, 1);
  posix_spawn_file_actions_adddup2(&actions.fa, err, 2);
  posix_spawn_file_actions_addclosefrom_np(&actions.fa, 3);
  // Through setpriv --pdeathsig so that a test process killed by a timeout
  // takes its registry with it (setpriv execs the registry: same pid).
  std::vector<std::string> args;
  if (::access(kSetpriv, X_OK) == 0) args = {kSetpriv, "--pdeathsig", "KILL", "--"};
  for (const char* a : {opts_.registry_binary.c_str(), "serve", config_path_.c_str()}) {
    args.emplace_back(a);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &actions.fa, nullptr, argv.data(), environ);
  if (rc != 0) return Status::IoError("spawn " + args[0] + ": " + std::strerror(rc));
  pid_ = pid;
  Status st = WaitReady();
  if (!st.ok()) {
    Stop();
    return st.Annotate("registry on " + HostPort() + " (log: " + log_path_ + ")\n" + LogTail());
  }
  return Status::Ok();
}

Status TestRegistry::WaitReady() {
  auto deadline = Clock::now() + std::chrono::milliseconds(opts_.start_timeout_ms);
  const std::string url = Url() + "/v2/";
  while (Clock::now() < deadline) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return Status::IoError("docker-registry exited during start-up");
    }
    std::unique_ptr<CURL, CurlFree> curl(curl_easy_init());
    if (!curl) return Status::IoError("curl_easy_init failed");
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_NOBODY, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(curl.get(), CURLOPT_FORBID_REUSE, 1L);
    if (opts_.tls) curl_easy_setopt(curl.get(), CURLOPT_CAINFO, tls_cert_path().c_str());
    if (opts_.tls && opts_.require_client_cert) {
      curl_easy_setopt(curl.get(), CURLOPT_SSLCERT, client_cert_path().c_str());
      curl_easy_setopt(curl.get(), CURLOPT_SSLKEY, client_key_path().c_str());
    }
    if (curl_easy_perform(curl.get()) == CURLE_OK) {
      long code = 0;
      curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &code);
      if (code == 200 || code == 401) return Status::Ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status::Transient("registry did not answer /v2/ within " +
                           std::to_string(opts_.start_timeout_ms) + " ms");
}

void TestRegistry::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  auto deadline = Clock::now() + std::chrono::seconds(5);
  int status = 0;
  while (true) {
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR)) break;
    if (Clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pid_ = -1;
}

Status TestRegistry::Restart() {
  Stop();
  return Start();
}

std::vector<AccessLogEntry> TestRegistry::AccessLog() const {
  std::vector<AccessLogEntry> out;
  if (access_log_path_.empty()) return out;
  std::istringstream in(ReadFile(access_log_path_));
  std::string line;
  // Combined log format:
  // 127.0.0.1 - user [date] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88"
  while (std::getline(in, line)) {
    size_t q1 = line.find('"');
    if (q1 == std::string::npos) continue;
    size_t q2 = line.find('"', q1 + 1);
    if (q2 == std::string::npos) continue;
    std::istringstream req(line.substr(q1 + 1, q2 - q1 - 1));
    AccessLogEntry e;
    std::string proto;
    if (!(req >> e.method >> e.path >> proto) || proto.rfind("HTTP/", 0) != 0) continue;
    std::istringstream rest(line.substr(q2 + 1));
    if (!(rest >> e.status)) continue;
    std::istringstream head(line.substr(0, q1));
    std::string ip, ident;
    head >> ip >> ident >> e.user;
    out.push_back(std::move(e));
  }
  return out;
}

int TestRegistry::CountRequests(std::string_view method, std::string_view path_contains) const {
  int n = 0;
  for (const AccessLogEntry& e : AccessLog()) {
    if (!method.empty() && e.method != method) continue;
    if (!path_contains.empty() && e.path.find(path_contains) == std::string::npos) continue;
    ++n;
  }
  return n;
}

std::string TestRegistry::LogTail(size_t max_bytes) const {
  if (log_path_.empty()) return "";
  std::string s = ReadFile(log_path_);
  if (s.size() > max_bytes) s = s.substr(s.size() - max_bytes);
  return s;
}

}  // namespace regfs::testing
