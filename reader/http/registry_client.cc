#include "reader/http/registry_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "reader/base/digest.h"
#include "reader/base/log.h"

namespace regfs {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kMaxRedirects = 10;
constexpr int kMaxAuthRounds = 2;
constexpr int kMaxReresolves = 2;
constexpr size_t kMaxManifestBytes = 4 << 20;

bool IsRedirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// Retry-After (RFC 9110): delay-seconds or an HTTP-date, capped at an hour.
// Unparseable: nullopt (backoff applies).
std::optional<milliseconds> ParseRetryAfter(std::string_view v) {
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  if (v.empty()) return std::nullopt;
  uint64_t secs = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec == std::errc() && p == v.data() + v.size()) {
    return milliseconds(std::min<uint64_t>(secs, 3600) * 1000);
  }
  const std::time_t when = curl_getdate(std::string(v).c_str(), nullptr);
  if (when < 0) return std::nullopt;
  const std::time_t now = std::time(nullptr);
  return milliseconds(std::clamp<int64_t>(static_cast<int64_t>(when - now), 0, 3600) * 1000);
}

std::string MediaTypeOf(const HttpResponse& r) {
  std::string ct = r.Header("content-type");
  ct = ct.substr(0, ct.find(';'));
  while (!ct.empty() && ct.back() == ' ') ct.pop_back();
  std::transform(ct.begin(), ct.end(), ct.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ct;
}

// Docker's tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
bool IsValidTag(std::string_view t) {
  if (t.empty() || t.size() > 128 || t[0] == '.' || t[0] == '-') return false;
  return std::all_of(t.begin(), t.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

}  // namespace

struct RegistryClient::Call {
  std::string path;                           // "/v2/<repo>/..."
  std::vector<std::string> registry_headers;  // only ever sent to the registry
  std::string redirect_key;                   // blob digest, "" = do not cache
  // Ranged read: bytes [range.first, range.last] of a blob of `total` bytes
  // into `out`; `done` bytes have arrived so far.
  std::optional<ByteRange> range;
  uint64_t total = 0;
  std::span<uint8_t> out;
  // Instead of `out`: the bytes go to `sink`, in order, each once (a resumed
  // attempt continues after the last byte delivered).
  std::function<Status(std::span<const uint8_t>)> sink;
  bool sink_failed = false;  // the sink refused bytes: no retry
  // Bytes of a 200 body outside the range (see HttpRequest::outside_range).
  std::function<void(uint64_t, std::span<const uint8_t>)> outside_range;
  RegistryClient::RangeReadOptions range_options;
  uint64_t done = 0;
  size_t max_body = 1 << 20;  // whole-body requests
  HttpResponse response;      // the final successful response

  // When the request must be over (the retry budget's end): every exchange
  // of every attempt ends by then.
  std::optional<Clock::time_point> deadline;

  // Per-attempt outcome.
  bool retry_now = false;  // auth refreshed or redirect dropped: retry at once
  bool auth_round = false;
  bool progressed = false;
  std::optional<milliseconds> retry_after;
};

Result<std::unique_ptr<RegistryClient>> RegistryClient::Create(const Reference& ref,
                                                               RegistryClientOptions options) {
  if (ref.registry.empty() || ref.repository.empty()) {
    return Status::InvalidArgument("reference without registry or repository");
  }
  std::optional<Credentials> creds;
  if (options.credentials.explicit_creds) {
    creds = options.credentials.explicit_creds;
  } else {
    ASSIGN_OR_RETURN(creds, LookupCredentials(ref.registry, options.credentials));
  }
  return std::unique_ptr<RegistryClient>(
      new RegistryClient(ref, std::move(options), std::move(creds)));
}

static HttpClientOptions HttpOptionsFrom(const RegistryClientOptions& o) {
  HttpClientOptions h;
  h.pool_size = o.pool_size;
  h.connect_timeout_ms = o.connect_timeout_ms;
  h.low_speed_limit = o.low_speed_limit;
  h.low_speed_time_s = o.low_speed_time_s;
  h.user_agent = o.user_agent;
  h.ca_file = o.ca_file;
  h.extra_ca_pem = o.extra_ca_pem;
  h.client_cert_pem = o.client_cert_pem;
  h.client_key_pem = o.client_key_pem;
  h.cancel = o.cancel;
  return h;
}

RegistryClient::RegistryClient(const Reference& ref, RegistryClientOptions options,
                               std::optional<Credentials> creds)
    : ref_(ref),
      options_(std::move(options)),
      scope_("repository:" + ref.repository + ":pull"),
      http_(HttpOptionsFrom(options_)),
      auth_(&http_, std::move(creds), options_.tls_verify) {}

RegistryClient::~RegistryClient() = default;

RegistryCounters RegistryClient::Counters() const {
  HttpCounters h = http_.Counters();
  return RegistryCounters{h.requests,
                          h.body_bytes,
                          retries_.load(),
                          resumes_.load(),
                          redirects_followed_.load(),
                          auth_.token_fetches()};
}

std::string RegistryClient::BaseUrl() {
  std::lock_guard<std::mutex> lock(base_mu_);
  return base_url_;
}

Result<std::string> RegistryClient::ResolveBase(std::optional<Clock::time_point> deadline) {
  std::lock_guard<std::mutex> lock(base_mu_);
  if (!base_url_.empty()) return base_url_;
  const std::string host = ref_.ApiHost();
  if (options_.tls_verify) {
    base_url_ = "https://" + host;
    auth_.SetRegistryUrl(base_url_);
    return base_url_;
  }
  // As skopeo with --tls-verify=false: https without verification when the
  // registry speaks TLS, plain http when the handshake fails.
  HttpRequest probe;
  probe.url = "https://" + host + "/v2/";
  probe.verify_tls = false;
  probe.max_body = 64 << 10;
  probe.deadline = deadline;
  HttpResult r = http_.Perform(probe);
  if (r.response.status != 0) {
    base_url_ = "https://" + host;
  } else if (r.status.code() == Code::kTransient && deadline && Clock::now() >= *deadline) {
    // Out of time, not a refused handshake: decide on a later request.
    return r.status.Annotate("probing for TLS");
  } else {
    LOG_DEBUG("registry " + host + ": no TLS (" + r.status.message() + "), using http");
    base_url_ = "http://" + host;
  }
  auth_.SetRegistryUrl(base_url_);
  return base_url_;
}

Status RegistryClient::AttemptOnce(Call& call, bool* progressed) {
  call.retry_now = false;
  call.auth_round = false;
  call.retry_after.reset();
  *progressed = false;
  ASSIGN_OR_RETURN(std::string base, ResolveBase(call.deadline));
  ASSIGN_OR_RETURN(UrlOrigin registry_origin, OriginOf(base));
  const std::string direct_url = base + call.path;

  std::string url = direct_url;
  bool from_cache = false;
  if (!call.redirect_key.empty()) {
    std::lock_guard<std::mutex> lock(redirect_mu_);
    auto it = redirects_.find(call.redirect_key);
    if (it != redirects_.end()) {
      url = it->second;
      from_cache = true;
    }
  }

  for (int hop = 0; hop <= kMaxRedirects; ++hop) {
    ASSIGN_OR_RETURN(UrlOrigin origin, OriginOf(url));
    const bool to_registry = origin == registry_origin;
    HttpRequest req;
    req.url = url;
    req.verify_tls = options_.tls_verify;
    req.deadline = call.deadline;
    std::string sent_auth;
    if (to_registry) {
      req.headers = call.registry_headers;
      ASSIGN_OR_RETURN(sent_auth, auth_.HeaderFor(scope_, call.deadline));
      if (!sent_auth.empty()) req.headers.push_back(sent_auth);
    }
    if (call.range) {
      req.range = ByteRange{call.range->first + call.done, call.range->last};
      req.expected_total = call.total;
      if (call.sink) {
        req.body_sink = [&call](std::span<const uint8_t> bytes) {
          Status st = call.sink(bytes);
          if (!st.ok()) call.sink_failed = true;
          return st;
        };
        req.sink_cap = call.range->size() - call.done;
      } else {
        req.body_out = call.out.subspan(call.done);
      }
      const bool refuse = call.range_options.refuse_whole_body;
      req.allow_full_body_for_range =
          !refuse && req.range->first == 0 && req.range->last + 1 == call.total;
      // A pull-through cache that is still filling sends the whole blob
      // (200): the range is taken out of it, unless the caller would rather
      // not have it (then the 200 ends the exchange at its headers).
      req.window_full_body_for_range = !refuse;
      req.window_reads_to_end = call.range_options.whole_body_to_end;
      req.fresh_connection = call.range_options.fresh_connection;
      req.outside_range = call.outside_range;
      if (call.range_options.on_answer) {
        req.on_headers = [&call](const HttpResponse& r) {
          if (!IsRedirect(r.status)) call.range_options.on_answer(r.status);
        };
      }
    } else {
      req.max_body = call.max_body;
    }

    HttpResult r = http_.Perform(req);
    const long code = r.response.status;
    if (IsRedirect(code) && r.response.headers_complete) {
      std::string location = r.response.Header("location");
      if (location.empty())
        return Status::Protocol("redirect without Location from " + RedactUrl(url));
      ASSIGN_OR_RETURN(std::string next, ResolveUrl(url, location));
      RETURN_IF_ERROR(CheckRedirect(url, next));
      url = std::move(next);
      redirects_followed_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (call.range && r.response.body_bytes > 0 &&
        (r.status.ok() || r.status.code() == Code::kTransient)) {
      call.done += r.response.body_bytes;
      *progressed = true;
    }
    if (r.status.ok()) {
      if (!call.redirect_key.empty() && url != direct_url && !from_cache) {
        std::lock_guard<std::mutex> lock(redirect_mu_);
        redirects_[call.redirect_key] = url;
      }
      call.response = std::move(r.response);
      return Status::Ok();
    }
    // A cached or fresh redirect target that refuses (expired presigned URL,
    // moved object): forget it and ask the registry again.
    if (!to_registry && (code == 400 || code == 403 || code == 404 || code == 410)) {
      if (!call.redirect_key.empty()) {
        std::lock_guard<std::mutex> lock(redirect_mu_);
        redirects_.erase(call.redirect_key);
      }
      call.retry_now = from_cache || url != direct_url;
      return r.status;
    }
    if (to_registry && (code == 401 || code == 403)) {
      Status auth = auth_.OnRejected(code, r.response.Header("www-authenticate"), scope_, sent_auth,
                                     call.deadline);
      if (auth.ok()) {
        call.retry_now = true;
        call.auth_round = true;
        return r.status;
      }
      if (auth.code() == Code::kUnauthorized) {
        return Status::Unauthorized(r.status.message() + "; " + auth.message());
      }
      return auth;
    }
    if (code == 429 || code == 503)
      call.retry_after = ParseRetryAfter(r.response.Header("retry-after"));
    return r.status;
  }
  return Status::Protocol("more than " + std::to_string(kMaxRedirects) + " redirects for " +
                          RedactUrl(direct_url));
}

Status RegistryClient::Execute(Call& call) {
  const RetryPolicy& p = options_.retry;
  const auto deadline = Clock::now() + p.total_budget;
  call.deadline = deadline;
  milliseconds backoff = p.initial_backoff;
  int attempts = 0, auth_rounds = 0, reresolves = 0;
  while (true) {
    bool progressed = false;
    Status st = AttemptOnce(call, &progressed);
    if (st.ok() || call.sink_failed) return st;
    if (call.retry_now) {
      int& rounds = call.auth_round ? auth_rounds : reresolves;
      if (rounds < (call.auth_round ? kMaxAuthRounds : kMaxReresolves)) {
        ++rounds;
        continue;
      }
    }
    if (st.code() != Code::kTransient) return st;
    milliseconds wait{0};
    if (progressed) {
      resumes_.fetch_add(1, std::memory_order_relaxed);
    } else {
      if (++attempts >= p.max_attempts) {
        return st.Annotate("giving up after " + std::to_string(attempts) + " attempts");
      }
      wait = backoff;
      backoff = std::min(backoff * 2, p.max_backoff);
    }
    if (call.retry_after) wait = std::max(wait, *call.retry_after);
    if (options_.cancel && options_.cancel->load()) return st.Annotate("cancelled");
    if (Clock::now() + wait > deadline) {
      return st.Annotate("retry budget of " + std::to_string(p.total_budget.count()) +
                         " ms exhausted");
    }
    retries_.fetch_add(1, std::memory_order_relaxed);
    LOG_DEBUG("retrying in " + std::to_string(wait.count()) + " ms: " + st.ToString());
    if (wait.count() > 0) std::this_thread::sleep_for(wait);
  }
}

Result<FetchedManifest> RegistryClient::GetManifest(std::string_view reference) {
  const bool by_digest =
      reference.rfind("sha256:", 0) == 0 || reference.find(':') != std::string_view::npos;
  if (by_digest) {
    RETURN_IF_ERROR(ValidateDigest(reference));
  } else if (!IsValidTag(reference)) {
    return Status::InvalidArgument("invalid tag \"" + std::string(reference) + "\"");
  }
  Call call;
  call.path = "/v2/" + ref_.repository + "/manifests/" + std::string(reference);
  call.registry_headers.push_back("Accept: " + ManifestAcceptHeader());
  call.max_body = kMaxManifestBytes;
  RETURN_IF_ERROR(Execute(call).Annotate("manifest " + std::string(reference)));
  FetchedManifest m;
  m.media_type = MediaTypeOf(call.response);
  m.bytes = std::move(call.response.body);
  m.digest = Sha256Digest(m.bytes);
  if (by_digest && m.digest != reference) {
    return Status::Corrupt("manifest " + std::string(reference) + ": content hashes to " +
                           m.digest);
  }
  std::string header = call.response.Header("docker-content-digest");
  if (!by_digest && !header.empty() && header != m.digest) {
    return Status::Corrupt("manifest " + std::string(reference) + ": Docker-Content-Digest " +
                           header + " but content hashes to " + m.digest);
  }
  return m;
}

Result<std::string> RegistryClient::GetBlob(const BlobDescriptor& desc, size_t max_size) {
  RETURN_IF_ERROR(ValidateDigest(desc.digest));
  if (desc.size > max_size) {
    return Status::InvalidArgument("blob " + desc.digest + " of " + std::to_string(desc.size) +
                                   " bytes is over the " + std::to_string(max_size) +
                                   "-byte limit for whole-blob reads");
  }
  Call call;
  call.path = "/v2/" + ref_.repository + "/blobs/" + desc.digest;
  call.redirect_key = desc.digest;
  call.max_body = desc.size;
  RETURN_IF_ERROR(Execute(call).Annotate("blob " + desc.digest));
  std::string body = std::move(call.response.body);
  if (body.size() != desc.size) {
    return Status::Corrupt("blob " + desc.digest + ": " + std::to_string(body.size()) +
                           " bytes, descriptor says " + std::to_string(desc.size));
  }
  std::string got = Sha256Digest(body);
  if (got != desc.digest)
    return Status::Corrupt("blob " + desc.digest + ": content hashes to " + got);
  return body;
}

Status RegistryClient::ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) {
  return ReadAt(blob, offset, out, RangeReadOptions{});
}

Status RegistryClient::ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                                  const ByteSink& sink) {
  return ReadStream(blob, offset, len, sink, RangeReadOptions{});
}

Status RegistryClient::ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out,
                              const RangeReadOptions& options) {
  Call call;
  call.out = out;
  call.range_options = options;
  return ReadRange(blob, offset, out.size(), call);
}

Status RegistryClient::ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                                  const ByteSink& sink, const RangeReadOptions& options) {
  Call call;
  call.sink = sink;
  call.range_options = options;
  return ReadRange(blob, offset, len, call);
}

Status RegistryClient::ReadRange(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                                 Call& call) {
  if (len == 0) return Status::Ok();
  RETURN_IF_ERROR(ValidateDigest(blob.digest));
  if (offset >= blob.size || blob.size - offset < len) {
    return Status::RangeNotSatisfiable("blob " + blob.digest + ": range " + std::to_string(offset) +
                                       "+" + std::to_string(len) + " outside its " +
                                       std::to_string(blob.size) + " bytes");
  }
  call.path = "/v2/" + ref_.repository + "/blobs/" + blob.digest;
  call.redirect_key = blob.digest;
  call.range = ByteRange{offset, offset + len - 1};
  call.total = blob.size;
  // Bytes outside the range (a 200 answer) are gathered into whole chunks
  // for the spare handler; a gap (the range itself, a resumed attempt)
  // drops the chunk being gathered.
  uint64_t gather_start = 0;
  std::string gathered;
  if (spare_ && spare_chunk_size_ > 0) {
    const uint64_t cs = spare_chunk_size_;
    call.outside_range = [&, cs](uint64_t at, std::span<const uint8_t> bytes) {
      while (!bytes.empty()) {
        if (!gathered.empty() && at != gather_start + gathered.size()) gathered.clear();
        if (gathered.empty() && at % cs != 0) {
          const uint64_t next = (at / cs + 1) * cs;
          if (next - at >= bytes.size()) return;
          bytes = bytes.subspan(next - at);
          at = next;
        }
        if (gathered.empty()) gather_start = at;
        const uint64_t want = std::min<uint64_t>(cs, blob.size - gather_start);
        const size_t take =
            static_cast<size_t>(std::min<uint64_t>(want - gathered.size(), bytes.size()));
        gathered.append(reinterpret_cast<const char*>(bytes.data()), take);
        bytes = bytes.subspan(take);
        at += take;
        if (gathered.size() == want) {
          spare_(blob, gather_start,
                 {reinterpret_cast<const uint8_t*>(gathered.data()), gathered.size()});
          gathered.clear();
        }
      }
    };
  }
  return Execute(call).Annotate("blob " + blob.digest);
}

void RegistryClient::SetSpareChunkHandler(uint64_t chunk_size, SpareChunkHandler handler) {
  spare_chunk_size_ = chunk_size;
  spare_ = std::move(handler);
}

Status CheckRedirect(std::string_view from_url, std::string_view to_url) {
  ASSIGN_OR_RETURN(UrlOrigin from, OriginOf(from_url));
  ASSIGN_OR_RETURN(UrlOrigin to, OriginOf(to_url));
  if (from.scheme == "https" && to.scheme == "http") {
    return Status::Protocol("refusing a redirect from https to plain http (" + RedactUrl(from_url) +
                            " -> " + RedactUrl(to_url) + ")");
  }
  return Status::Ok();
}

Result<ResolvedImage> ResolveImage(RegistryClient& client, const Reference& ref,
                                   const std::optional<Platform>& platform) {
  ResolvedImage img;
  img.ref = ref;
  ASSIGN_OR_RETURN(FetchedManifest top, client.GetManifest(ref.ManifestReference()));

  std::string media = top.media_type;
  if (!IsIndexMediaType(media) && !IsManifestMediaType(media)) {
    // A registry that sends a generic Content-Type: the body decides.
    nlohmann::json j = nlohmann::json::parse(top.bytes, nullptr, false);
    media.clear();
    if (j.is_object() && j.contains("mediaType") && j["mediaType"].is_string()) {
      media = j["mediaType"].get<std::string>();
    } else if (j.is_object() && j.contains("manifests")) {
      media = std::string(kMediaTypeOciIndex);
    }
  }
  FetchedManifest chosen = std::move(top);
  std::optional<Platform> chosen_platform;
  if (IsIndexMediaType(media)) {
    ASSIGN_OR_RETURN(ImageIndex index, ParseIndex(chosen.bytes, media));
    Platform want = platform ? *platform : HostPlatform();
    ASSIGN_OR_RETURN(BlobDescriptor desc, SelectPlatform(index, want));
    for (const IndexEntry& e : index.manifests) {
      if (e.descriptor.digest == desc.digest && e.platform) {
        chosen_platform = e.platform;
        break;
      }
    }
    img.index_bytes = std::move(chosen.bytes);
    img.index_digest = chosen.digest;
    img.index_media_type = media;
    ASSIGN_OR_RETURN(chosen, client.GetManifest(desc.digest));
    if (chosen.bytes.size() != desc.size) {
      return Status::Corrupt("manifest " + desc.digest + ": " +
                             std::to_string(chosen.bytes.size()) + " bytes, index says " +
                             std::to_string(desc.size));
    }
    media = chosen.media_type;
    if (!IsManifestMediaType(media)) media = desc.media_type;
    if (IsIndexMediaType(media)) {
      return Status::Unsupported("index " + img.index_digest + " points at another index");
    }
  }
  ASSIGN_OR_RETURN(img.manifest, ParseManifest(chosen.bytes, media));
  img.manifest_bytes = std::move(chosen.bytes);
  img.manifest_digest = chosen.digest;
  img.manifest_media_type = img.manifest.media_type.empty() ? media : img.manifest.media_type;
  ASSIGN_OR_RETURN(img.config_bytes, client.GetBlob(img.manifest.config));
  ASSIGN_OR_RETURN(img.config, ParseConfig(img.config_bytes));
  // Each layer is checked against its DiffID; one without would be served
  // unchecked.
  if (img.config.diff_ids.size() != img.manifest.layers.size()) {
    return Status::Corrupt("config " + img.manifest.config.digest + " lists " +
                           std::to_string(img.config.diff_ids.size()) + " diff_ids for the " +
                           std::to_string(img.manifest.layers.size()) + " layers of manifest " +
                           img.manifest_digest);
  }
  if (chosen_platform) {
    img.platform = *chosen_platform;
  } else {
    img.platform = img.config.platform;
    if (platform && (platform->os != img.config.platform.os ||
                     platform->architecture != img.config.platform.architecture)) {
      LOG_WARN("image " + ref.Normalized() + " is " + img.config.platform.ToString() +
               ", not the requested " + platform->ToString());
    }
  }
  return img;
}

}  // namespace regfs
