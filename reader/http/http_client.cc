#include "reader/http/http_client.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>

#include "reader/base/file_util.h"

namespace regfs {
namespace {

// CURLOPT_XFERINFOFUNCTION: nonzero aborts the transfer (CURLE_ABORTED_BY_CALLBACK).
int CancelCallback(void* flag, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::atomic<bool>*>(flag)->load() ? 1 : 0;
}

constexpr size_t kMaxErrorBody = 64 * 1024;
constexpr size_t kMaxHeaderBytes = 256 * 1024;

std::string LowerAscii(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

bool ParseU64(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// A printable, bounded excerpt of a non-JSON error body.
std::string Excerpt(std::string_view body) {
  std::string out;
  for (char c : body.substr(0, 120)) {
    out += (c >= 0x20 && c < 0x7f) ? c : ' ';
  }
  return std::string(Trim(out));
}

// How many 2xx body bytes the request takes (see HttpRequest::body_out).
uint64_t BodyCap(const HttpRequest& q) {
  if (!q.body_out.empty()) return q.body_out.size();
  return q.body_sink ? q.sink_cap : q.max_body;
}

// State shared with curl's callbacks for one exchange.
struct Transfer {
  const HttpRequest* req = nullptr;
  HttpResponse* resp = nullptr;
  Status abort;  // set when a callback stopped the transfer, and why
  size_t header_bytes = 0;
  // A 200 to a ranged request, windowed (window_full_body_for_range).
  bool windowed = false;
  uint64_t raw_pos = 0;  // bytes of the whole body seen so far
  // The range is in: the transfer was ended on purpose (or, with
  // window_reads_to_end, what follows is only offered to outside_range).
  bool window_done = false;
  std::string what;

  bool Is2xx() const { return resp->status >= 200 && resp->status < 300; }

  // Runs once the headers of the final response are in. Returns false (and
  // sets `abort`) to stop before any body byte is accepted.
  bool ValidateHeaders() {
    if (!Is2xx()) return true;
    if (!ValidateRange()) return false;
    const uint64_t cap = BodyCap(*req);
    uint64_t content_length = 0;
    if (!req->head && !windowed &&
        ParseU64(Trim(resp->Header("content-length")), &content_length) && content_length > cap) {
      abort = Status::Protocol(what + ": body of " + std::to_string(content_length) +
                               " bytes exceeds the " + std::to_string(cap) + " expected");
      return false;
    }
    return true;
  }

  bool ValidateRange() {
    std::string enc = LowerAscii(Trim(resp->Header("content-encoding")));
    if (!enc.empty() && enc != "identity") {
      abort = Status::Protocol(what + ": unrequested Content-Encoding " + enc);
      return false;
    }
    if (!req->range) {
      if (resp->status == 206) {
        abort = Status::Protocol(what + ": 206 to a request without Range");
        return false;
      }
      return true;
    }
    const ByteRange& r = *req->range;
    // A ranged answer states its length. Chunked (its chunk sizes can lie:
    // curl then hands on the framing as body bytes) or delimited by the
    // close of the connection, where it ends, and so whether its bytes are
    // the range's, is known only after they were handed on. Registries and
    // their storage answer ranges with Content-Length.
    if (!req->head) {
      std::string te = LowerAscii(Trim(resp->Header("transfer-encoding")));
      uint64_t content_length = 0;
      if (!te.empty() && te != "identity") {
        abort = Status::Protocol(what + ": ranged answer with Transfer-Encoding " + te +
                                 " (its length must be stated in Content-Length)");
        return false;
      }
      if (!ParseU64(Trim(resp->Header("content-length")), &content_length)) {
        abort = Status::Protocol(what + ": ranged answer without Content-Length (its length " +
                                 "must be stated)");
        return false;
      }
    }
    if (resp->status == 200) {
      if (!req->allow_full_body_for_range && req->window_full_body_for_range) {
        uint64_t content_length = 0;
        if (req->expected_total &&
            ParseU64(Trim(resp->Header("content-length")), &content_length) &&
            content_length != *req->expected_total) {
          abort = Status::Protocol(
              what + ": server ignored Range (200 for bytes=" + std::to_string(r.first) + "-" +
              std::to_string(r.last) + ") with a body of " + std::to_string(content_length) +
              " bytes, not the blob's " + std::to_string(*req->expected_total));
          return false;
        }
        windowed = true;
        return true;
      }
      if (!req->allow_full_body_for_range) {
        abort = Status::Protocol(what + ": server ignored Range (200 for bytes=" +
                                 std::to_string(r.first) + "-" + std::to_string(r.last) + ")");
        return false;
      }
      return true;
    }
    if (resp->status != 206) {
      abort = Status::Protocol(what + ": HTTP " + std::to_string(resp->status) +
                               " to a ranged request");
      return false;
    }
    std::string raw = resp->Header("content-range");
    std::optional<ContentRange> cr = ParseContentRange(raw);
    if (!cr) {
      abort = Status::Protocol(
          what + (raw.empty() ? ": 206 without Content-Range" : ": malformed Content-Range"));
      return false;
    }
    bool total_ok = !req->expected_total || (cr->total && *cr->total == *req->expected_total);
    if (cr->first != r.first || cr->last != r.last || !total_ok) {
      abort = Status::Protocol(
          what + ": Content-Range " + std::to_string(cr->first) + "-" + std::to_string(cr->last) +
          "/" + (cr->total ? std::to_string(*cr->total) : "*") + " does not match requested " +
          std::to_string(r.first) + "-" + std::to_string(r.last) + "/" +
          (req->expected_total ? std::to_string(*req->expected_total) : "*"));
      return false;
    }
    return true;
  }
  // Hands 2xx body bytes to where the request wants them. False (with
  // `abort` set) stops the transfer.
  bool Deliver(const char* data, size_t len) {
    const HttpRequest& q = *req;
    HttpResponse* r = resp;
    if (!q.body_out.empty() || q.body_sink) {
      const uint64_t cap = BodyCap(q);
      if (r->body_bytes + len > cap) {
        abort = Status::Protocol(what + ": body longer than the " + std::to_string(cap) +
                                 " bytes expected");
        return false;
      }
      if (!q.body_out.empty()) {
        std::memcpy(q.body_out.data() + r->body_bytes, data, len);
      } else {
        // Nothing may unwind through curl's C frames: an exception from the
        // sink (say, bad_alloc for a buffer) ends the transfer like an error.
        Status st;
        try {
          st = q.body_sink({reinterpret_cast<const uint8_t*>(data), len});
        } catch (const std::exception& e) {
          st = Status::IoError(what + ": body sink failed: " + e.what());
        }
        if (!st.ok()) {
          abort = std::move(st);
          return false;
        }
      }
    } else {
      if (r->body.size() + len > q.max_body) {
        abort = Status::Protocol(what + ": body exceeds the " + std::to_string(q.max_body) +
                                 "-byte cap");
        return false;
      }
      r->body.append(data, len);
    }
    r->body_bytes += len;
    return true;
  }

  // A windowed 200: the range's bytes are delivered, the rest skipped (and
  // offered to outside_range); false once the range is complete, which ends
  // the transfer (window_done tells Perform it is no error) unless the
  // request reads such a body to its end.
  bool Window(const char* data, size_t len) {
    const ByteRange& rg = *req->range;
    const uint64_t pos = raw_pos;
    raw_pos += len;
    auto outside = [&](uint64_t at, const char* p, size_t n) {
      if (n == 0) return;
      resp->skipped_bytes += n;
      if (!req->outside_range) return;
      try {
        req->outside_range(at, {reinterpret_cast<const uint8_t*>(p), n});
      } catch (...) {
      }
    };
    if (window_done) {  // window_reads_to_end: the rest after the range
      outside(pos, data, len);
      return true;
    }
    size_t skip = 0;
    if (pos < rg.first) skip = static_cast<size_t>(std::min<uint64_t>(len, rg.first - pos));
    outside(pos, data, skip);
    const uint64_t want = rg.size() - resp->body_bytes;
    const size_t take = static_cast<size_t>(std::min<uint64_t>(len - skip, want));
    if (take > 0 && !Deliver(data + skip, take)) return false;
    outside(pos + skip + take, data + skip + take, len - skip - take);
    if (resp->body_bytes == rg.size()) {
      window_done = true;
      return req->window_reads_to_end;
    }
    return true;
  }
};

size_t HeaderCallback(char* data, size_t size, size_t n, void* userdata) {
  auto* t = static_cast<Transfer*>(userdata);
  size_t len = size * n;
  t->header_bytes += len;
  if (t->header_bytes > kMaxHeaderBytes) {
    t->abort = Status::Protocol(t->what + ": response headers too large");
    return 0;
  }
  std::string_view line = Trim(std::string_view(data, len));
  HttpResponse* r = t->resp;
  if (line.size() >= 5 && line.substr(0, 5) == "HTTP/") {
    // A new status line: an interim 1xx response may precede the final one.
    r->headers.clear();
    r->headers_complete = false;
    r->status = 0;
    size_t sp = line.find(' ');
    uint64_t code = 0;
    if (sp != std::string_view::npos) {
      std::string_view rest = line.substr(sp + 1);
      ParseU64(rest.substr(0, rest.find(' ')), &code);
    }
    if (code < 100 || code > 999) {
      t->abort = Status::Protocol(t->what + ": malformed status line");
      return 0;
    }
    r->status = static_cast<long>(code);
    return len;
  }
  if (line.empty()) {
    if (r->status >= 100 && r->status < 200) return len;  // interim; more follows
    r->headers_complete = true;
    if (t->req->on_headers) {
      try {
        t->req->on_headers(*r);
      } catch (...) {
      }
    }
    return t->ValidateHeaders() ? len : 0;
  }
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    r->headers.emplace_back(LowerAscii(Trim(line.substr(0, colon))),
                            std::string(Trim(line.substr(colon + 1))));
  }
  return len;
}

size_t WriteCallback(char* data, size_t size, size_t n, void* userdata) {
  auto* t = static_cast<Transfer*>(userdata);
  size_t len = size * n;
  HttpResponse* r = t->resp;
  if (!r->headers_complete) {
    t->abort = Status::Protocol(t->what + ": body before headers");
    return 0;
  }
  if (!t->Is2xx()) {
    // An error body: keep a bounded prefix for the message, then stop.
    size_t room = kMaxErrorBody - std::min(kMaxErrorBody, r->body.size());
    r->body.append(data, std::min(room, len));
    return len <= room ? len : 0;
  }
  if (t->windowed) return t->Window(data, len) ? len : 0;
  return t->Deliver(data, len) ? len : 0;
}

Status MapCurlCode(CURLcode code, std::string_view what, std::string_view detail) {
  std::string msg = std::string(what) + ": " + std::string(detail);
  // A server that wants a client certificate and did not get an acceptable
  // one says so with a TLS alert (under TLS 1.3 after the handshake, so curl
  // reports a receive error). Retrying cannot help.
  if (detail.find("alert bad certificate") != std::string_view::npos ||
      detail.find("alert certificate required") != std::string_view::npos) {
    return Status::Unauthorized(msg +
                                " (the server refused the client certificate, or wants one: "
                                "put NAME.cert and NAME.key in --cert-dir)");
  }
  switch (code) {
    case CURLE_OK:
      return Status::Ok();
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_AGAIN:
    case CURLE_ABORTED_BY_CALLBACK:  // the client was cancelled (the daemon is stopping)
      return Status::Transient(msg);
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return Status::InvalidArgument(msg);
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT:
      return Status::IoError(msg);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
      return Status::Protocol(msg +
                              " (TLS verification failed; --tls-verify=false accepts "
                              "self-signed registries)");
    default:
      return Status::Protocol(msg);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// ConnectionPool

ConnectionPool::ConnectionPool(int limit) : limit_(std::max(1, limit)) {}

ConnectionPool::Lease& ConnectionPool::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    if (pool_) pool_->Return(std::move(handle_));
    pool_ = o.pool_;
    handle_ = std::move(o.handle_);
    o.pool_ = nullptr;
  }
  return *this;
}

ConnectionPool::Lease::~Lease() {
  if (pool_) pool_->Return(std::move(handle_));
}

Result<ConnectionPool::Lease> ConnectionPool::Borrow(
    std::optional<std::chrono::steady_clock::time_point> deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (idle_.empty() && created_ >= limit_) {
    ++waits_;
    auto free = [&] { return !idle_.empty() || created_ < limit_; };
    if (!deadline) {
      cv_.wait(lock, free);
    } else if (!cv_.wait_until(lock, *deadline, free)) {
      return Status::Transient("no connection came free before the deadline (" +
                               std::to_string(limit_) + " in use)");
    }
  }
  if (!idle_.empty()) {
    CurlEasyPtr h = std::move(idle_.back());
    idle_.pop_back();
    ++borrowed_;
    return Lease(this, std::move(h));
  }
  ++created_;  // reserve the slot; create outside the lock
  ++borrowed_;
  lock.unlock();
  CurlEasyPtr h = NewCurlEasy();
  if (!h) {
    Return(nullptr);
    return Status::IoError("curl_easy_init failed");
  }
  return Lease(this, std::move(h));
}

void ConnectionPool::Return(CurlEasyPtr h) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --borrowed_;
    if (h) {
      idle_.push_back(std::move(h));
    } else {
      --created_;
    }
  }
  cv_.notify_one();
}

PoolStats ConnectionPool::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PoolStats{limit_, created_, borrowed_, waits_};
}

// ---------------------------------------------------------------------------
// Parsing helpers

std::optional<ContentRange> ParseContentRange(std::string_view value) {
  value = Trim(value);
  if (value.size() < 6 || LowerAscii(value.substr(0, 6)) != "bytes ") return std::nullopt;
  value = Trim(value.substr(6));
  size_t dash = value.find('-');
  size_t slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) {
    return std::nullopt;
  }
  ContentRange cr;
  if (!ParseU64(value.substr(0, dash), &cr.first) ||
      !ParseU64(value.substr(dash + 1, slash - dash - 1), &cr.last) || cr.last < cr.first) {
    return std::nullopt;
  }
  std::string_view total = value.substr(slash + 1);
  if (total != "*") {
    uint64_t t = 0;
    if (!ParseU64(total, &t) || cr.last >= t) return std::nullopt;
    cr.total = t;
  }
  return cr;
}

std::string HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return "";
}

std::string RegistryErrorMessage(std::string_view body) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("errors") || !j["errors"].is_array()) return "";
  std::string out;
  for (const auto& e : j["errors"]) {
    if (!e.is_object()) continue;
    std::string part;
    if (e.contains("code") && e["code"].is_string()) part = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string()) {
      part += (part.empty() ? "" : ": ") + e["message"].get<std::string>();
    }
    if (part.empty()) continue;
    out += (out.empty() ? "" : "; ") + part;
    if (out.size() > 512) break;
  }
  return out;
}

Status StatusFromHttp(CURLcode code, long http_status, std::string_view body, std::string_view what,
                      std::string_view curl_detail) {
  if (curl_detail.empty()) curl_detail = curl_easy_strerror(code);
  if ((http_status >= 200 && http_status < 300) || (http_status == 0 && code != CURLE_OK)) {
    return MapCurlCode(code, what, curl_detail);
  }
  if (http_status == 0) return Status::Protocol(std::string(what) + ": no HTTP response");
  std::string detail = RegistryErrorMessage(body);
  if (detail.empty()) detail = Excerpt(body);
  std::string msg = std::string(what) + ": HTTP " + std::to_string(http_status) +
                    (detail.empty() ? "" : " (" + detail + ")");
  switch (http_status) {
    case 400:
      return Status::InvalidArgument(msg);
    case 401:
    case 403:
      return Status::Unauthorized(msg);
    case 404:
    case 410:
      return Status::NotFound(msg);
    case 405:
      return Status::Unsupported(msg);
    case 408:
    case 429:
      return Status::Transient(msg);
    case 416:
      return Status::RangeNotSatisfiable(msg);
    default:
      if (http_status >= 500 && http_status < 600) return Status::Transient(msg);
      return Status::Protocol(msg);
  }
}

// ---------------------------------------------------------------------------
// HttpClient

namespace {

// The CA bundle libcurl uses by default (Debian: /etc/ssl/certs/ca-certificates.crt),
// or options.ca_file when set; its text, or "" when it cannot be read.
std::string SystemCaPem(const std::string& ca_file) {
  std::string path = ca_file;
  if (path.empty()) {
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> h(curl_easy_init(), &curl_easy_cleanup);
    char* p = nullptr;
    if (h && curl_easy_getinfo(h.get(), CURLINFO_CAINFO, &p) == CURLE_OK && p) path = p;
  }
  if (path.empty()) return "";
  Result<std::string> pem = ReadFileToString(path);
  return pem.ok() ? *pem : "";
}

}  // namespace

HttpClient::HttpClient(HttpClientOptions options) : options_(std::move(options)) {
  EnsureCurlGlobalInit();
  if (!options_.extra_ca_pem.empty()) {
    ca_blob_ = SystemCaPem(options_.ca_file) + "\n" + options_.extra_ca_pem;
  }
}

Result<ConnectionPool*> HttpClient::PoolFor(const UrlOrigin& origin) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = pools_[origin.ToString()];
  if (!slot) slot = std::make_unique<ConnectionPool>(options_.pool_size);
  return slot.get();
}

PoolStats HttpClient::PoolStatsFor(std::string_view url) const {
  Result<UrlOrigin> origin = OriginOf(url);
  if (!origin.ok()) return {};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pools_.find(origin->ToString());
  return it == pools_.end() ? PoolStats{} : it->second->Stats();
}

HttpCounters HttpClient::Counters() const {
  return HttpCounters{requests_.load(), body_bytes_.load(), transport_errors_.load()};
}

HttpResult HttpClient::Perform(const HttpRequest& req) {
  HttpResult out;
  const std::string what = std::string(req.head ? "HEAD " : "GET ") + RedactUrl(req.url);
  Result<UrlOrigin> origin = OriginOf(req.url);
  if (!origin.ok()) {
    out.status = origin.status();
    return out;
  }
  Result<ConnectionPool*> pool = PoolFor(*origin);
  if (!pool.ok()) {
    out.status = pool.status();
    return out;
  }
  Result<ConnectionPool::Lease> lease = (*pool)->Borrow(req.deadline);
  if (!lease.ok()) {
    out.status = lease.status().Annotate(what);
    return out;
  }
  // The whole exchange (connect, headers, body) ends by the deadline: curl
  // counts CURLOPT_TIMEOUT_MS from the start of the transfer.
  long timeout_ms = 0;
  if (req.deadline) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*req.deadline -
                                                             std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      out.status = Status::Transient(what + ": deadline passed before the request was sent");
      return out;
    }
    timeout_ms = static_cast<long>(left.count());
  }
  if (options_.cancel && options_.cancel->load()) {
    out.status = Status::Transient(what + ": cancelled");
    return out;
  }
  CURL* h = lease->get();

  CurlHeaderList headers;
  bool headers_ok = headers.Append("Accept-Encoding: identity");
  for (const std::string& line : req.headers) headers_ok = headers_ok && headers.Append(line);
  if (!headers_ok) {
    out.status = Status::IoError(what + ": out of memory building headers");
    return out;
  }
  std::string range;
  if (req.range) {
    range = std::to_string(req.range->first) + "-" + std::to_string(req.range->last);
  }

  Transfer t;
  t.req = &req;
  t.resp = &out.response;
  t.what = what;
  char errbuf[CURL_ERROR_SIZE] = {0};

  curl_easy_reset(h);  // keeps the live connection, clears every option
  bool set_ok = true;
  auto set = [&](CURLoption opt, auto value) {
    set_ok = set_ok && curl_easy_setopt(h, opt, value) == CURLE_OK;
  };
  set(CURLOPT_URL, req.url.c_str());
  set(CURLOPT_NOSIGNAL, 1L);
  set(CURLOPT_FOLLOWLOCATION, 0L);
  set(CURLOPT_PROTOCOLS_STR, "http,https");
  set(CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  set(CURLOPT_MAXCONNECTS, 1L);
  set(CURLOPT_TCP_KEEPALIVE, 1L);
  set(CURLOPT_CONNECTTIMEOUT_MS, timeout_ms > 0 ? std::min(timeout_ms, options_.connect_timeout_ms)
                                                : options_.connect_timeout_ms);
  if (timeout_ms > 0) set(CURLOPT_TIMEOUT_MS, timeout_ms);
  if (options_.cancel) {
    // curl calls this about once a second, and more often while bytes flow.
    set(CURLOPT_NOPROGRESS, 0L);
    set(CURLOPT_XFERINFOFUNCTION, &CancelCallback);
    set(CURLOPT_XFERINFODATA, const_cast<std::atomic<bool>*>(options_.cancel));
  }
  set(CURLOPT_LOW_SPEED_LIMIT, options_.low_speed_limit);
  set(CURLOPT_LOW_SPEED_TIME, options_.low_speed_time_s);
  set(CURLOPT_BUFFERSIZE, 128L * 1024);
  set(CURLOPT_ERRORBUFFER, errbuf);
  set(CURLOPT_HTTPHEADER, headers.get());
  set(CURLOPT_HEADERFUNCTION, &HeaderCallback);
  set(CURLOPT_HEADERDATA, static_cast<void*>(&t));
  set(CURLOPT_WRITEFUNCTION, &WriteCallback);
  set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
  set(CURLOPT_SSL_VERIFYPEER, req.verify_tls ? 1L : 0L);
  set(CURLOPT_SSL_VERIFYHOST, req.verify_tls ? 2L : 0L);
  if (!options_.ca_file.empty()) set(CURLOPT_CAINFO, options_.ca_file.c_str());
  curl_blob ca_blob{const_cast<char*>(ca_blob_.data()), ca_blob_.size(), CURL_BLOB_NOCOPY};
  if (!ca_blob_.empty()) set(CURLOPT_CAINFO_BLOB, &ca_blob);
  curl_blob cert_blob{const_cast<char*>(options_.client_cert_pem.data()),
                      options_.client_cert_pem.size(), CURL_BLOB_NOCOPY};
  curl_blob key_blob{const_cast<char*>(options_.client_key_pem.data()),
                     options_.client_key_pem.size(), CURL_BLOB_NOCOPY};
  if (!options_.client_cert_pem.empty()) {
    set(CURLOPT_SSLCERT_BLOB, &cert_blob);
    set(CURLOPT_SSLCERTTYPE, "PEM");
    set(CURLOPT_SSLKEY_BLOB, &key_blob);
    set(CURLOPT_SSLKEYTYPE, "PEM");
  }
  if (!options_.user_agent.empty()) set(CURLOPT_USERAGENT, options_.user_agent.c_str());
  if (req.fresh_connection) set(CURLOPT_FRESH_CONNECT, 1L);
  if (req.head) set(CURLOPT_NOBODY, 1L);
  if (req.range) set(CURLOPT_RANGE, range.c_str());
  if (!set_ok) {
    curl_easy_reset(h);
    out.status = Status::IoError(what + ": curl_easy_setopt failed");
    return out;
  }

  requests_.fetch_add(1, std::memory_order_relaxed);
  CURLcode rc = curl_easy_perform(h);
  long new_connections = 1;
  (void)curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &new_connections);
  // No pointer into this frame (error buffer, header list, callbacks' data)
  // may outlive it inside the handle.
  curl_easy_reset(h);
  body_bytes_.fetch_add(out.response.body_bytes + out.response.skipped_bytes,
                        std::memory_order_relaxed);

  if (t.window_done) {
    // The range was taken out of a 200 and the rest left unread on purpose.
    out.status = Status::Ok();
    return out;
  }
  // A garbled answer on a kept-alive connection may be the previous
  // answer's stray bytes (a server that sent more than it announced, which
  // arrived after curl checked the idle connection): worth a retry, which
  // goes over a new connection (curl closes this one). Only before any body
  // byte was handed on; on a new connection it is the server's own doing.
  auto unless_reused = [&](Status s) {
    if (s.code() == Code::kProtocol && new_connections == 0 && out.response.body_bytes == 0) {
      return Status::Transient(s.message() + " (on a reused connection)");
    }
    return s;
  };
  if (!t.abort.ok()) {
    out.status = unless_reused(t.abort);
    return out;
  }
  if (rc != CURLE_OK) transport_errors_.fetch_add(1, std::memory_order_relaxed);
  const HttpResponse& r = out.response;
  const bool is_2xx = r.status >= 200 && r.status < 300;
  out.status = StatusFromHttp(rc, r.status, is_2xx ? std::string_view() : std::string_view(r.body),
                              what, Trim(errbuf));
  if (rc != CURLE_OK) out.status = unless_reused(out.status);
  if (out.status.ok() && req.range && !req.head) {
    uint64_t want = r.status == 206 ? req.range->size() : r.body_bytes;
    if (r.status == 200 && req.expected_total) want = *req.expected_total;
    if (r.body_bytes != want) {
      out.status = Status::Transient(what + ": short body (" + std::to_string(r.body_bytes) +
                                     " of " + std::to_string(want) + " bytes)");
    }
  }
  return out;
}

}  // namespace regfs
