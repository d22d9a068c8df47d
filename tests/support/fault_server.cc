#include "tests/support/fault_server.h"
#include "reader/base/base64.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>

namespace regfs::testing {

struct FaultServer::Conn {
  int fd = -1;                // guarded by FaultServer::mu_ once registered
  bool counted_open = false;  // guarded by FaultServer::mu_
  std::thread thread;
  std::atomic<bool> done{false};
};

namespace {

constexpr size_t kMaxRequestHead = 64 * 1024;
constexpr size_t kMaxLog = 200000;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 307:
      return "Temporary Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string ErrorJson(const std::string& code, const std::string& message) {
  return "{\"errors\":[{\"code\":\"" + code + "\",\"message\":\"" + message + "\"}]}";
}

// "repository:<name>:pull" from /v2/<name>/(blobs|manifests)/...
std::string ScopeOf(const std::string& path) {
  if (path.rfind("/v2/", 0) != 0) return "";
  for (const char* kind : {"/blobs/", "/manifests/"}) {
    size_t at = path.find(kind);
    if (at != std::string::npos && at > 4) return "repository:" + path.substr(4, at - 4) + ":pull";
  }
  return "";
}

// "bytes=a-b" / "bytes=a-" -> [first, last]; nullopt for anything else.
std::optional<std::pair<uint64_t, std::optional<uint64_t>>> ParseRange(const std::string& v) {
  if (v.rfind("bytes=", 0) != 0) return std::nullopt;
  std::string spec = v.substr(6);
  size_t dash = spec.find('-');
  if (dash == std::string::npos || dash == 0 || spec.find(',') != std::string::npos)
    return std::nullopt;
  uint64_t a = 0, b = 0;
  auto r1 = std::from_chars(spec.data(), spec.data() + dash, a);
  if (r1.ec != std::errc() || r1.ptr != spec.data() + dash) return std::nullopt;
  if (dash + 1 == spec.size()) return std::make_pair(a, std::optional<uint64_t>());
  auto r2 = std::from_chars(spec.data() + dash + 1, spec.data() + spec.size(), b);
  if (r2.ec != std::errc() || r2.ptr != spec.data() + spec.size() || b < a) return std::nullopt;
  return std::make_pair(a, std::optional<uint64_t>(b));
}

}  // namespace

const char* FaultKindName(FaultKind k) {
  switch (k) {
    case FaultKind::kNone:
      return "none";
    case FaultKind::kResetMidBody:
      return "reset-mid-body";
    case FaultKind::kStall:
      return "stall";
    case FaultKind::kTruncate:
      return "truncate";
    case FaultKind::kIgnoreRange:
      return "ignore-range";
    case FaultKind::kWrongContentRange:
      return "wrong-content-range";
    case FaultKind::kMissingContentRange:
      return "missing-content-range";
    case FaultKind::kRangeNotSatisfiable:
      return "416";
    case FaultKind::kUnauthorized:
      return "401";
    case FaultKind::kForbidden:
      return "403";
    case FaultKind::kTooManyRequests:
      return "429";
    case FaultKind::kServiceUnavailable:
      return "503";
    case FaultKind::kInternalError:
      return "500";
    case FaultKind::kRedirect:
      return "redirect";
    case FaultKind::kRedirectLoop:
      return "redirect-loop";
    case FaultKind::kDrip:
      return "drip";
  }
  return "?";
}

std::string RecordedRequest::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

FaultServer::FaultServer() = default;
FaultServer::~FaultServer() { Stop(); }

std::string FaultServer::host_port() const { return "127.0.0.1:" + std::to_string(port_); }
std::string FaultServer::url() const { return "http://" + host_port(); }

Status FaultServer::Start() {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Status::IoError(std::string("socket: ") + strerror(errno));
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listen_fd_, 256) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Status st = Status::IoError(std::string("bind/listen: ") + strerror(errno));
    close(listen_fd_);
    listen_fd_ = -1;
    return st;
  }
  port_ = ntohs(addr.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void FaultServer::Stop() {
  if (listen_fd_ < 0) return;
  stop_ = true;
  shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  close(listen_fd_);
  listen_fd_ = -1;
  std::vector<std::unique_ptr<Conn>> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& c : conns_) {
      if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    }
    conns.swap(conns_);
  }
  stall_cv_.notify_all();
  for (auto& c : conns) {
    if (c->thread.joinable()) c->thread.join();
  }
}

void FaultServer::ReapLocked() {
  for (auto& c : conns_) {
    if (c->counted_open && c->fd >= 0) {
      pollfd p{c->fd, POLLRDHUP, 0};
      if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        c->counted_open = false;
        --open_;
      }
    }
  }
  auto done = std::partition(conns_.begin(), conns_.end(),
                             [](const std::unique_ptr<Conn>& c) { return !c->done.load(); });
  for (auto it = done; it != conns_.end(); ++it) {
    if ((*it)->thread.joinable()) (*it)->thread.join();
  }
  conns_.erase(done, conns_.end());
}

void FaultServer::AcceptLoop() {
  while (!stop_) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down (EINVAL) or fatal
    }
    int one = 1;  // no Nagle: headers and body go out in separate writes
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) {
      close(fd);
      return;
    }
    ReapLocked();
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->counted_open = true;
    ++open_;
    ++accepted_;
    peak_ = std::max(peak_, open_);
    Conn* raw = c.get();
    conns_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void FaultServer::Serve(Conn* c) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = c->fd;
  }
  std::string buf;
  char chunk[16384];
  bool keep = true;
  while (keep && !stop_) {
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      // A request must start with an upper-case method: anything else (a TLS
      // ClientHello from an https probe) is answered 400 and closed at once.
      bool bad = !buf.empty() && !std::isupper(static_cast<unsigned char>(buf[0]));
      if (bad || buf.size() > kMaxRequestHead) {
        std::string resp =
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        SendAll(fd, resp.data(), resp.size());
        keep = false;
        break;
      }
      ssize_t n = recv(fd, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        keep = false;
        break;
      }
      buf.append(chunk, static_cast<size_t>(n));
    }
    if (!keep) break;
    std::string head = buf.substr(0, end);
    buf.erase(0, end + 4);
    RecordedRequest req;
    size_t line_end = head.find("\r\n");
    std::string line = head.substr(0, line_end);
    size_t s1 = line.find(' '), s2 = line.rfind(' ');
    if (s1 == std::string::npos || s2 <= s1) break;
    req.method = line.substr(0, s1);
    req.target = line.substr(s1 + 1, s2 - s1 - 1);
    req.path = req.target.substr(0, req.target.find('?'));
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string h = head.substr(pos, e - pos);
      size_t colon = h.find(':');
      if (colon != std::string::npos)
        req.headers[Lower(Trim(h.substr(0, colon)))] = Trim(h.substr(colon + 1));
      pos = e + 2;
    }
    // Discard a request body, if any.
    uint64_t body_len = 0;
    std::string cl = req.Header("content-length");
    std::from_chars(cl.data(), cl.data() + cl.size(), body_len);
    while (buf.size() < body_len) {
      ssize_t n = recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
    }
    buf.erase(0, std::min<uint64_t>(body_len, buf.size()));
    keep = Handle(c, req);
    if (Lower(req.Header("connection")) == "close") keep = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (c->counted_open) {
    c->counted_open = false;
    --open_;
  }
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
  c->done = true;
}

bool FaultServer::Drip(int fd, const char* data, size_t len, int bytes_per_s) {
  // Pieces of a tenth of the rate every 100 ms; below 10 bytes/s, one byte
  // every 1000/rate ms.
  const int rate = std::max(1, bytes_per_s);
  const size_t piece = std::max(1, rate / 10);
  const int interval_ms = static_cast<int>(piece * 1000 / static_cast<size_t>(rate));
  size_t sent = 0;
  while (sent < len && !stop_) {
    size_t n = std::min(piece, len - sent);
    if (!SendAll(fd, data + sent, n)) return false;
    sent += n;
    body_bytes_sent_.fetch_add(n);
    // A client that hangs up ends the drip at once.
    pollfd p{fd, POLLRDHUP, 0};
    if (poll(&p, 1, interval_ms) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) return false;
  }
  return sent == len;
}

bool FaultServer::WaitStall(int fd, std::chrono::milliseconds d) {
  auto deadline = std::chrono::steady_clock::now() + d;
  while (!stop_ && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLRDHUP, 0};
    if (poll(&p, 1, 20) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) return false;
  }
  return false;
}

void FaultServer::Record(const RecordedRequest& r) {
  std::lock_guard<std::mutex> lock(mu_);
  ++total_requests_;
  if (log_.size() < kMaxLog) log_.push_back(r);
}

bool FaultServer::Handle(Conn* c, RecordedRequest& req) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = c->fd;
  }
  const bool head_only = req.method == "HEAD";
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::shared_ptr<const std::string> body_owner;
  std::string small_body;
  const std::string* body = &small_body;
  size_t body_from = 0, body_len = 0;
  Fault fault;
  std::string auth = req.Header("authorization");

  auto respond_error = [&](int st, const std::string& code, const std::string& msg) {
    status = st;
    small_body = ErrorJson(code, msg);
    headers.emplace_back("Content-Type", "application/json");
  };

  // Decide under the lock what the answer is; send without it.
  bool decided = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto now = std::chrono::steady_clock::now();
    if (reject_auth_ && !auth.empty()) {
      respond_error(400, "INVALID_ARGUMENT", "only one auth mechanism allowed");
      decided = true;
    } else if (req.path == "/token" && bearer_) {
      token_requests_.fetch_add(1);
      // Only a drip applies to the token endpoint (its answer, slowly).
      auto q = faults_.find(req.path);
      if (q != faults_.end() && !q->second.empty() &&
          q->second.front().first.kind == FaultKind::kDrip) {
        fault = q->second.front().first;
        if (--q->second.front().second <= 0) q->second.pop_front();
      }
      if (!token_basic_.empty() && auth != token_basic_) {
        respond_error(401, "UNAUTHORIZED", "bad credentials for token");
        headers.emplace_back("WWW-Authenticate", "Basic realm=\"token\"");
      } else {
        std::string tok = "tok" + std::to_string(++next_token_);
        tokens_[tok] = now + bearer_->second;
        small_body =
            "{\"token\":\"" + tok + "\",\"expires_in\":" + std::to_string(bearer_->first) + "}";
        headers.emplace_back("Content-Type", "application/json");
      }
      decided = true;
    } else if (bearer_) {
      bool ok = false;
      if (auth.rfind("Bearer ", 0) == 0) {
        auto it = tokens_.find(auth.substr(7));
        ok = it != tokens_.end() && now < it->second;
      }
      if (!ok) {
        respond_error(401, "UNAUTHORIZED", "authentication required");
        std::string scope = ScopeOf(req.path);
        headers.emplace_back("WWW-Authenticate",
                             "Bearer realm=\"" + RealmLocked() + "\",service=\"fault\"" +
                                 (scope.empty() ? "" : ",scope=\"" + scope + "\""));
        decided = true;
      }
    } else if (!basic_.empty() && auth != basic_) {
      respond_error(401, "UNAUTHORIZED", "authentication required");
      headers.emplace_back("WWW-Authenticate", "Basic realm=\"fault\"");
      decided = true;
    }
    if (!decided) {
      bool queued = false;
      for (const std::string& key : {req.path, std::string()}) {
        auto it = faults_.find(key);
        if (it != faults_.end() && !it->second.empty()) {
          fault = it->second.front().first;
          if (--it->second.front().second <= 0) it->second.pop_front();
          queued = true;
          break;
        }
      }
      if (!queued && picker_) {
        auto picker = picker_;
        lock.unlock();
        fault = picker(req);
        lock.lock();
      }
    }
  }

  auto it_res = resources_.end();
  std::string realm;
  if (!decided) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fault.kind == FaultKind::kUnauthorized) realm = RealmLocked();
    it_res = resources_.find(req.path);
    if (it_res != resources_.end()) {
      body_owner = it_res->second.body;
      headers.emplace_back("Content-Type", it_res->second.content_type);
      for (const auto& h : it_res->second.extra_headers) headers.push_back(h);
    }
  }
  const bool found = body_owner != nullptr;
  req.fault = fault.kind;
  if (!decided) {
    switch (fault.kind) {
      case FaultKind::kRangeNotSatisfiable:
        respond_error(416, "RANGE_INVALID", "injected 416");
        decided = true;
        break;
      case FaultKind::kUnauthorized:
        respond_error(401, "UNAUTHORIZED", "injected 401");
        headers.emplace_back("WWW-Authenticate",
                             "Bearer realm=\"" + realm + "\",service=\"fault\"");
        decided = true;
        break;
      case FaultKind::kForbidden:
        respond_error(403, "DENIED", "injected 403");
        decided = true;
        break;
      case FaultKind::kTooManyRequests:
      case FaultKind::kServiceUnavailable:
        respond_error(fault.kind == FaultKind::kTooManyRequests ? 429 : 503, "TOOMANYREQUESTS",
                      "injected");
        if (fault.retry_after_s >= 0 && fault.retry_after_as_date) {
          const std::time_t when = std::time(nullptr) + fault.retry_after_s;
          std::tm tm{};
          gmtime_r(&when, &tm);
          char date[64];
          std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
          headers.emplace_back("Retry-After", date);
        } else if (fault.retry_after_s >= 0) {
          headers.emplace_back("Retry-After", std::to_string(fault.retry_after_s));
        }
        decided = true;
        break;
      case FaultKind::kInternalError:
        respond_error(500, "UNKNOWN", "injected 500");
        decided = true;
        break;
      case FaultKind::kRedirect:
      case FaultKind::kRedirectLoop:
        status = 307;
        headers.clear();
        headers.emplace_back("Location",
                             fault.kind == FaultKind::kRedirect ? fault.location : req.target);
        decided = true;
        break;
      default:
        break;
    }
  }
  if (!decided && !found) {
    if (req.path == "/v2/" || req.path == "/v2") {
      small_body = "{}";
      headers.emplace_back("Content-Type", "application/json");
    } else if (req.path.find("/manifests/") != std::string::npos) {
      respond_error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    } else {
      respond_error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    }
    decided = true;
  }
  if (!decided) {
    body = body_owner.get();
    const uint64_t size = body->size();
    body_len = size;
    auto range = ParseRange(req.Header("range"));
    if (range && fault.kind != FaultKind::kIgnoreRange) {
      uint64_t first = range->first;
      uint64_t last = range->second ? std::min(*range->second, size - 1) : size - 1;
      if (first >= size) {
        status = 416;
        small_body.clear();
        body = &small_body;
        body_len = 0;
        headers.emplace_back("Content-Range", "bytes */" + std::to_string(size));
      } else {
        status = 206;
        body_from = first;
        body_len = last - first + 1;
        if (fault.kind == FaultKind::kWrongContentRange) {
          headers.emplace_back("Content-Range", "bytes " + std::to_string(first + 1) + "-" +
                                                    std::to_string(last + 1) + "/" +
                                                    std::to_string(size + 1));
        } else if (fault.kind != FaultKind::kMissingContentRange) {
          headers.emplace_back("Content-Range", "bytes " + std::to_string(first) + "-" +
                                                    std::to_string(last) + "/" +
                                                    std::to_string(size));
        }
      }
    }
    headers.emplace_back("Accept-Ranges", "bytes");
  }
  if (body == &small_body) body_len = small_body.size();
  std::function<void(const RecordedRequest&, LieResponse&)> liar;
  {
    std::lock_guard<std::mutex> lock(mu_);
    liar = liar_;
  }
  if (liar) {
    LieResponse lie;
    lie.status = status;
    lie.headers = headers;
    lie.body.assign(body->data() + body_from, body_len);
    try {
      liar(req, lie);
    } catch (const std::exception& e) {
      // A bug in a test's liar must not take the test process down.
      lie = LieResponse{};
      lie.status = 500;
      lie.body = ErrorJson("UNKNOWN", std::string("liar threw: ") + e.what());
    }
    req.status = lie.status;
    Record(req);
    return SendLie(fd, head_only, lie);
  }
  req.status = status;
  Record(req);

  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) + "\r\n";
  for (const auto& [k, v] : headers) out += k + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(body_len) + "\r\n\r\n";
  if (!SendAll(fd, out.data(), out.size())) return false;
  if (head_only) return true;

  const char* data = body->data() + body_from;
  if (fault.kind == FaultKind::kDrip) return Drip(fd, data, body_len, fault.drip_bytes_per_s);
  const bool mid_body_fault = fault.kind == FaultKind::kResetMidBody ||
                              fault.kind == FaultKind::kStall || fault.kind == FaultKind::kTruncate;
  if (mid_body_fault && (status == 200 || status == 206)) {
    size_t half = body_len / 2;
    if (SendAll(fd, data, half)) body_bytes_sent_.fetch_add(half);
    if (fault.kind == FaultKind::kResetMidBody) {
      linger l{1, 0};  // close with RST
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    } else if (fault.kind == FaultKind::kStall) {
      WaitStall(fd, fault.stall);
    }
    return false;
  }
  // Send in pieces so a client that gives up is noticed early.
  size_t sent = 0;
  while (sent < body_len) {
    size_t n = std::min<size_t>(body_len - sent, 256 * 1024);
    if (!SendAll(fd, data + sent, n)) return false;
    sent += n;
    body_bytes_sent_.fetch_add(n);
  }
  return true;
}

bool FaultServer::SendLie(int fd, bool head_only, LieResponse& lie) {
  std::string out = lie.raw_prefix + "HTTP/1.1 " + std::to_string(lie.status) + " " + Reason(lie.status) + "\r\n";
  for (const auto& [k, v] : lie.headers) out += k + ": " + v + "\r\n";
  if (lie.chunked) {
    out += "Transfer-Encoding: chunked\r\n";
  } else if (lie.close_delimited) {
    out += "Connection: close\r\n";
  } else {
    out += "Content-Length: " + std::to_string(lie.content_length.value_or(lie.body.size())) +
           "\r\n";
  }
  if (lie.close && !lie.close_delimited) out += "Connection: close\r\n";
  if (!SendAll(fd, out.data(), out.size())) return false;
  // Paced sending: `n` bytes, then a pause that keeps the rate; a client
  // that hangs up ends it at once.
  auto pace = [&](size_t n) {
    if (lie.endless_bytes_per_s <= 0) return !stop_.load();
    int ms = static_cast<int>(n * 1000 / static_cast<size_t>(lie.endless_bytes_per_s));
    pollfd p{fd, POLLRDHUP, 0};
    return !stop_.load() &&
           !(poll(&p, 1, std::max(1, ms)) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)));
  };
  if (lie.endless_headers) {
    for (uint64_t i = 0;; ++i) {
      std::string line = "X-Filler-" + std::to_string(i) + ": " + std::string(40, 'x') + "\r\n";
      if (!SendAll(fd, line.data(), line.size()) || !pace(line.size())) return false;
    }
  }
  if (!SendAll(fd, "\r\n", 2)) return false;
  if (head_only) return !lie.close && !lie.close_delimited;
  const uint64_t n = std::min<uint64_t>(lie.body.size(), lie.send_at_most);
  size_t sent = 0;
  bool first = true;
  const size_t max_piece =
      lie.body_bytes_per_s > 0 ? std::max(1, lie.body_bytes_per_s / 10) : 64 * 1024;
  while (sent < n) {
    size_t piece = std::min<size_t>(n - sent, max_piece);
    if (lie.body_bytes_per_s > 0 && sent > 0) {
      pollfd p{fd, POLLRDHUP, 0};
      if (stop_.load() || (poll(&p, 1, 100) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))))
        return false;
    }
    if (lie.chunked) {
      char size_line[32];
      std::snprintf(size_line, sizeof size_line, "%zx", piece);
      std::string line = (first && !lie.first_chunk_size.empty() ? lie.first_chunk_size
                                                                  : std::string(size_line)) +
                         "\r\n";
      if (!SendAll(fd, line.data(), line.size())) return false;
    }
    first = false;
    if (!SendAll(fd, lie.body.data() + sent, piece)) return false;
    if (lie.chunked && !SendAll(fd, "\r\n", 2)) return false;
    sent += piece;
    body_bytes_sent_.fetch_add(piece);
  }
  if (n < lie.body.size()) return false;  // cut short: close cleanly
  if (lie.endless) {
    const std::string filler(lie.endless_bytes_per_s > 0
                                 ? std::max<size_t>(1, static_cast<size_t>(lie.endless_bytes_per_s) / 10)
                                 : 64 * 1024,
                             'x');
    std::string piece = filler;
    if (lie.chunked) {
      char size_line[32];
      std::snprintf(size_line, sizeof size_line, "%zx\r\n", filler.size());
      piece = size_line + filler + "\r\n";
    }
    while (SendAll(fd, piece.data(), piece.size()) && pace(filler.size())) {
      body_bytes_sent_.fetch_add(filler.size());
    }
    return false;
  }
  if (lie.chunked && !SendAll(fd, "0\r\n\r\n", 5)) return false;
  return !lie.close && !lie.close_delimited;
}

void FaultServer::SetLiar(std::function<void(const RecordedRequest&, LieResponse&)> liar) {
  std::lock_guard<std::mutex> lock(mu_);
  liar_ = std::move(liar);
}

void FaultServer::AddResource(const std::string& path, std::string body, std::string content_type,
                              std::vector<std::pair<std::string, std::string>> extra_headers) {
  std::lock_guard<std::mutex> lock(mu_);
  resources_[path] = Resource{std::make_shared<const std::string>(std::move(body)),
                              std::move(content_type), std::move(extra_headers)};
}

void FaultServer::AddFault(const std::string& path, Fault fault, int count) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_[path].emplace_back(std::move(fault), count);
}

void FaultServer::SetFaultPicker(std::function<Fault(const RecordedRequest&)> picker) {
  std::lock_guard<std::mutex> lock(mu_);
  picker_ = std::move(picker);
}

void FaultServer::RequireBearer(int expires_in_s, std::chrono::milliseconds valid_for) {
  std::lock_guard<std::mutex> lock(mu_);
  bearer_ = std::make_pair(expires_in_s, valid_for);
}

void FaultServer::RequireBasicForToken(const std::string& user, const std::string& password) {
  std::lock_guard<std::mutex> lock(mu_);
  token_basic_ = "Basic " + Base64Encode(user + ":" + password);
}

void FaultServer::RequireBasic(const std::string& user, const std::string& password) {
  std::lock_guard<std::mutex> lock(mu_);
  basic_ = "Basic " + Base64Encode(user + ":" + password);
}

void FaultServer::ExpireTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_.clear();
}

void FaultServer::SetTokenRealm(const std::string& realm) {
  std::lock_guard<std::mutex> lock(mu_);
  token_realm_ = realm;
}

std::string FaultServer::RealmLocked() const {
  return token_realm_.empty() ? url() + "/token" : token_realm_;
}

void FaultServer::RejectAuthorization(bool reject) {
  std::lock_guard<std::mutex> lock(mu_);
  reject_auth_ = reject;
}

int FaultServer::open_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  const_cast<FaultServer*>(this)->ReapLocked();
  return open_;
}

int FaultServer::peak_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

void FaultServer::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = open_;
}

uint64_t FaultServer::accepted_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return accepted_;
}

uint64_t FaultServer::total_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_requests_;
}

std::vector<RecordedRequest> FaultServer::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

int FaultServer::RequestCount(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(std::count_if(log_.begin(), log_.end(),
                                        [&](const RecordedRequest& r) { return r.path == path; }));
}

}  // namespace regfs::testing
