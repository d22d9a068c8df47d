#include "reader/http/mirror_set.h"

#include <algorithm>

#include "reader/base/log.h"

namespace regfs {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kFirstCooldown{1000};
constexpr std::chrono::milliseconds kMaxCooldown{60000};
// An endpoint with others after it gives up sooner: the next endpoint is a
// better retry than the same one after a backoff.
constexpr int kMirrorMaxAttempts = 2;

}  // namespace

Result<std::unique_ptr<MirrorSet>> MirrorSet::Create(std::vector<MirrorEndpoint> specs) {
  if (specs.empty()) return Status::InvalidArgument("no endpoint to pull from");
  std::vector<std::unique_ptr<Endpoint>> eps;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto ep = std::make_unique<Endpoint>();
    ep->spec = std::move(specs[i]);
    RegistryClientOptions o = ep->spec.options;
    if (i + 1 < specs.size()) {
      o.retry.max_attempts = std::min(o.retry.max_attempts, kMirrorMaxAttempts);
    }
    Result<std::unique_ptr<RegistryClient>> c = RegistryClient::Create(ep->spec.ref, o);
    if (!c.ok()) return c.status().Annotate("endpoint " + ep->spec.location);
    ep->client = std::move(*c);
    eps.push_back(std::move(ep));
  }
  return std::unique_ptr<MirrorSet>(new MirrorSet(std::move(eps)));
}

MirrorSet::MirrorSet(std::vector<std::unique_ptr<Endpoint>> endpoints)
    : endpoints_(std::move(endpoints)) {}

MirrorSet::~MirrorSet() = default;

void MirrorSet::RecordFailure(size_t i, const Status& s) {
  std::lock_guard lock(mu_);
  Endpoint& e = *endpoints_[i];
  ++e.failures;
  e.last_error = s.ToString();
  e.cooldown = std::clamp(e.cooldown * 2, kFirstCooldown, kMaxCooldown);
  e.cool_until = Clock::now() + e.cooldown;
}

void MirrorSet::RecordSuccess(size_t i, const std::string& digest, uint64_t bytes) {
  std::lock_guard lock(mu_);
  Endpoint& e = *endpoints_[i];
  e.cooldown = std::chrono::milliseconds{0};
  e.cool_until = {};
  if (!digest.empty() && bytes > 0) served_[digest][i] += bytes;
}

std::vector<size_t> MirrorSet::ReadOrder() const {
  std::vector<size_t> order;
  const size_t pref = preferred_.load();
  order.push_back(pref);
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    if (i != pref) order.push_back(i);
  }
  if (order.size() > 1) {
    const auto now = Clock::now();
    std::lock_guard lock(mu_);
    std::stable_partition(order.begin(), order.end(),
                          [&](size_t i) { return endpoints_[i]->cool_until <= now; });
  }
  return order;
}

Result<ResolvedImage> MirrorSet::Resolve(const Reference& logical,
                                         const std::optional<Platform>& platform) {
  std::string mirror_errors;
  Status last;
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    Endpoint& e = *endpoints_[i];
    if (endpoints_.size() > 1) LOG_DEBUG("trying to access " + e.spec.ref.Normalized());
    Result<ResolvedImage> img = ResolveImage(*e.client, e.spec.ref, platform);
    if (img.ok()) {
      preferred_ = i;
      resolved_ = true;
      RecordSuccess(i, "", 0);
      img->ref = logical;
      if (i > 0 || e.spec.mirror) {
        LOG_INFO(logical.Normalized() + ": manifest from " + e.spec.location +
                 (e.spec.mirror ? " (mirror)" : ""));
      }
      return img;
    }
    RecordFailure(i, img.status());
    last = img.status();
    if (i + 1 < endpoints_.size()) {
      LOG_INFO("accessing " + e.spec.ref.Normalized() + " failed: " + img.status().ToString());
      mirror_errors += "[" + e.spec.ref.Normalized() + ": " + img.status().ToString() + "] ";
    }
    const std::atomic<bool>* cancel = e.spec.options.cancel;
    if (cancel && cancel->load()) break;
  }
  if (mirror_errors.empty()) return last;
  mirror_errors.pop_back();
  return Status(last.code(), "(mirrors also failed: " + mirror_errors + "): " +
                                 endpoints_.back()->spec.ref.Normalized() + ": " + last.message());
}

Status MirrorSet::ReadWithFailover(const BlobDescriptor& blob,
                                   const std::function<Status(size_t, bool*)>& attempt) {
  const std::vector<size_t> order = ReadOrder();
  Status first_error;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    bool final_error = false;  // the consumer refused the bytes: no other endpoint helps
    Status s = attempt(i, &final_error);
    if (s.ok() || final_error) return s;
    // The caller's mistake (a bad digest, a range outside the blob) is the
    // same on every endpoint and says nothing about this one.
    if (s.code() == Code::kInvalidArgument || s.code() == Code::kRangeNotSatisfiable) return s;
    RecordFailure(i, s);
    if (first_error.ok()) first_error = s;
    const std::atomic<bool>* cancel = endpoints_[i]->spec.options.cancel;
    if (cancel && cancel->load()) return s;
    if (k + 1 < order.size()) {
      LOG_WARN("blob " + blob.digest + " from " + endpoints_[i]->spec.location + " failed (" +
               s.ToString() + "); trying " + endpoints_[order[k + 1]]->spec.location);
    }
  }
  return first_error;
}

Status MirrorSet::ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) {
  return ReadWithFailover(blob, [&](size_t i, bool*) {
    Status s = endpoints_[i]->client->ReadAt(blob, offset, out);
    if (s.ok()) RecordSuccess(i, blob.digest, out.size());
    return s;
  });
}

Status MirrorSet::ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                             const ByteSink& sink) {
  uint64_t done = 0;  // bytes delivered, by any endpoint
  return ReadWithFailover(blob, [&](size_t i, bool* final_error) {
    uint64_t here = 0;
    Status s;
    if (done < len) {
      s = endpoints_[i]->client->ReadStream(
          blob, offset + done, len - done, [&](std::span<const uint8_t> bytes) {
            Status st = sink(bytes);
            if (!st.ok()) {
              *final_error = true;
              return st;
            }
            done += bytes.size();
            here += bytes.size();
            return Status::Ok();
          });
    }
    if (s.ok()) {
      RecordSuccess(i, blob.digest, here);
    } else if (here > 0) {
      std::lock_guard lock(mu_);
      served_[blob.digest][i] += here;
    }
    return s;
  });
}

void MirrorSet::SetSpareChunkHandler(uint64_t chunk_size,
                                     RegistryClient::SpareChunkHandler handler) {
  for (auto& e : endpoints_) e->client->SetSpareChunkHandler(chunk_size, handler);
}

RegistryCounters MirrorSet::Counters() const {
  RegistryCounters sum;
  for (const auto& e : endpoints_) {
    RegistryCounters c = e->client->Counters();
    sum.requests += c.requests;
    sum.bytes += c.bytes;
    sum.retries += c.retries;
    sum.resumes += c.resumes;
    sum.redirects += c.redirects;
    sum.token_fetches += c.token_fetches;
  }
  return sum;
}

std::vector<EndpointReport> MirrorSet::Endpoints() const {
  std::vector<EndpointReport> out;
  const auto now = Clock::now();
  const size_t pref = preferred_.load();
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    const Endpoint& e = *endpoints_[i];
    EndpointReport r;
    r.location = e.spec.location;
    r.registry = e.spec.ref.registry;
    r.mirror = e.spec.mirror;
    r.preferred = resolved_ && i == pref;
    r.counters = e.client->Counters();
    std::lock_guard lock(mu_);
    r.cooling_down = e.cool_until > now;
    r.failures = e.failures;
    r.last_error = e.last_error;
    out.push_back(std::move(r));
  }
  return out;
}

std::string MirrorSet::ManifestEndpoint() const {
  return resolved_ ? endpoints_[preferred_.load()]->spec.location : "";
}

std::map<std::string, uint64_t> MirrorSet::ServedBy(const std::string& digest) const {
  std::map<std::string, uint64_t> out;
  std::lock_guard lock(mu_);
  auto it = served_.find(digest);
  if (it == served_.end()) return out;
  for (const auto& [i, bytes] : it->second) out[endpoints_[i]->spec.location] += bytes;
  return out;
}

}  // namespace regfs
