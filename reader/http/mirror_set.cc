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

Result<std::unique_ptr<MirrorSet>> MirrorSet::Create(std::vector<MirrorEndpoint> specs,
                                                     MirrorFillOptions fill) {
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
  return std::unique_ptr<MirrorSet>(new MirrorSet(std::move(eps), fill));
}

MirrorSet::MirrorSet(std::vector<std::unique_ptr<Endpoint>> endpoints, MirrorFillOptions fill)
    : endpoints_(std::move(endpoints)), fill_(fill) {}

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

std::chrono::milliseconds MirrorSet::ExpectedFill(const Endpoint& e,
                                                  const BlobDescriptor& blob) const {
  // At the rate of the last fill timed at this mirror, or the assumed one.
  const double rate = e.fill_rate > 0 ? e.fill_rate : fill_.assumed_bytes_per_s;
  const double ms = 1000.0 * static_cast<double>(blob.size) / std::max(rate, 1.0);
  return std::chrono::milliseconds(
      static_cast<int64_t>(std::min(ms, static_cast<double>(fill_.max_wait.count()))));
}

Clock::time_point MirrorSet::NextAsk(const Endpoint& e, const BlobFill& f,
                                     const BlobDescriptor& blob, Clock::time_point now) const {
  using std::chrono::milliseconds;
  milliseconds wait;
  if (f.filling_answers <= 1) {
    wait = ExpectedFill(e, blob);
  } else {
    wait = std::min(std::chrono::duration_cast<milliseconds>(now - f.first_fill_answer) / 4,
                    fill_.max_interval);
  }
  return now + std::max(wait, fill_.min_interval);
}

Status MirrorSet::ReadFromEndpoint(size_t i, const BlobDescriptor& blob, const RangeRead& read) {
  Endpoint& e = *endpoints_[i];
  if (!e.spec.mirror || !fill_.wait_for_fills || blob.size <= fill_.window_below) {
    return read({});
  }
  using State = BlobFill::State;
  const auto key = std::make_pair(i, blob.digest);
  const std::atomic<bool>* cancel = e.spec.options.cancel;
  long answered = 0;
  RegistryClient::RangeReadOptions ask;
  ask.refuse_whole_body = true;
  // A 200 dropped at its headers costs the upstream what the mirror streamed
  // until it noticed: on a new connection that is what a small receive
  // window takes, not the megabytes a pooled one's may have grown to.
  ask.fresh_connection = true;
  ask.on_answer = [&](long status) {
    answered = status;
    if (status != 206) return;
    // Served from the mirror's storage: the blob's other reads need not
    // wait for this one's body.
    std::lock_guard l(fill_mu_);
    BlobFill& f = fills_[key];
    if (f.state != State::kServed) {
      if (f.filling_answers > 0 && !f.read_whole) {
        const double secs =
            std::chrono::duration<double>(Clock::now() - f.first_fill_answer).count();
        // Asked too late when the first ask found it in: the rate was higher.
        const double rate = static_cast<double>(blob.size) / std::max(secs, 1e-3);
        e.fill_rate = f.filling_answers == 1 ? std::max(rate, 1.25 * e.fill_rate) : rate;
        ++e.fills_waited;
        LOG_DEBUG(e.spec.location + " serves blob " + blob.digest + " after filling it (" +
                  std::to_string(f.filling_answers) + " answers of 200 dropped)");
      }
      f.state = State::kServed;
    }
    e.served_a_range = true;
    fill_cv_.notify_all();
  };
  std::unique_lock lock(fill_mu_);
  while (true) {
    // Ask, wait for someone else's answer, or wait for the time to ask again.
    while (true) {
      BlobFill& f = fills_[key];
      if (e.windows_only || f.state == State::kServed || f.state == State::kWindowed) {
        lock.unlock();
        return read({});
      }
      const Clock::time_point now = Clock::now();
      if (f.state == State::kUnasked || (f.state == State::kFilling && now >= f.next_ask)) {
        f.state = State::kAsking;
        break;
      }
      if (cancel && cancel->load()) {
        return Status::Transient("cancelled while " + e.spec.location + " fills blob " +
                                 blob.digest);
      }
      // Woken by an answer; a cancel is noticed within the slice.
      Clock::time_point until = now + std::chrono::milliseconds(200);
      if (f.state == State::kFilling) until = std::min(until, f.next_ask);
      fill_cv_.wait_until(lock, until);
    }
    lock.unlock();
    answered = 0;
    Status s = read(ask);
    lock.lock();
    BlobFill& f = fills_[key];
    if (answered != 200 || s.ok()) {
      if (f.state == State::kAsking) {
        // No answer, or an error answer: the next read asks again (the
        // failover above deals with this one's error).
        f.state = f.filling_answers > 0 ? State::kFilling : State::kUnasked;
        fill_cv_.notify_all();
      }
      return s;
    }
    // Filling: the answer was dropped at its headers.
    const Clock::time_point now = Clock::now();
    if (f.filling_answers++ == 0) {
      f.first_fill_answer = now;
      LOG_INFO(e.spec.location + " is filling blob " + blob.digest +
               " (200 to a Range request): waiting for it");
    }
    ++e.filling_answers;
    const bool proven = e.fills_waited > 0;
    const auto unproven_limit = 2 * ExpectedFill(e, blob) + fill_.unproven_wait;
    const auto waited = now - f.first_fill_answer;
    if (waited >= (proven ? fill_.max_wait : 2 * unproven_limit)) {
      f.state = State::kWindowed;
      if (!e.served_a_range) e.windows_only = true;
      fill_cv_.notify_all();
      lock.unlock();
      LOG_WARN(
          e.spec.location + " still answers blob " + blob.digest + " whole (200) after " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()) +
          " ms: taking ranges out of whole answers" +
          (e.windows_only ? " for every blob there" : ""));
      return read({});
    }
    if (!proven && !f.read_whole && waited >= unproven_limit) {
      // Perhaps a cache that fills from the answer it streams, whose fill
      // each dropped answer cancelled: read one whole (the others wait).
      f.read_whole = true;
      lock.unlock();
      LOG_INFO(e.spec.location + " still answers blob " + blob.digest +
               " whole (200): reading one such answer to its end");
      RegistryClient::RangeReadOptions whole = ask;
      whole.refuse_whole_body = false;
      whole.whole_body_to_end = true;
      whole.fresh_connection = false;
      s = read(whole);
      lock.lock();
      BlobFill& g = fills_[key];
      if (g.state == State::kAsking) {
        g.state = State::kFilling;
        g.next_ask = Clock::now();
      }
      fill_cv_.notify_all();
      return s;
    }
    f.state = State::kFilling;
    f.next_ask = NextAsk(e, f, blob, now);
    fill_cv_.notify_all();
  }
}

Status MirrorSet::ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) {
  return ReadWithFailover(blob, [&](size_t i, bool*) {
    Status s = ReadFromEndpoint(i, blob, [&](const RegistryClient::RangeReadOptions& ro) {
      return endpoints_[i]->client->ReadAt(blob, offset, out, ro);
    });
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
      s = ReadFromEndpoint(i, blob, [&](const RegistryClient::RangeReadOptions& ro) {
        return endpoints_[i]->client->ReadStream(
            blob, offset + done, len - done,
            [&](std::span<const uint8_t> bytes) {
              Status st = sink(bytes);
              if (!st.ok()) {
                *final_error = true;
                return st;
              }
              done += bytes.size();
              here += bytes.size();
              return Status::Ok();
            },
            ro);
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
    {
      std::lock_guard lock(fill_mu_);
      r.filling_answers = e.filling_answers;
      r.fills_waited = e.fills_waited;
    }
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
