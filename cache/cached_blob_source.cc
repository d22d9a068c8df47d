#include "cache/cached_blob_source.h"

#include <thread>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "reader/base/digest.h"
#include "reader/base/log.h"

namespace regfs {
namespace {
constexpr size_t kMaxSequentialPasses = 256;
constexpr size_t kMaxPooledBuffers = 32;  // chunk-sized buffers

// The range rules of ReadAt and Prefetch: inside the blob, digest well formed.
Status CheckRange(const BlobDescriptor& blob, uint64_t offset, uint64_t len, const char* what) {
  if (offset > blob.size || len > blob.size - offset) {
    return Status::RangeNotSatisfiable(std::string(what) + " [" + std::to_string(offset) +
                                       ", +" + std::to_string(len) + ") outside blob " +
                                       blob.digest + " of size " + std::to_string(blob.size));
  }
  return ValidateDigest(blob.digest);
}

// Hashes a blob in order, once, into both its digest and its chunk chain:
// the SHA-256 state after each chunk but the last, then the digest (32 raw
// bytes each; ChunkCache::SetVerified). A chunk fetched again later is
// checked against it by CheckChunkHash.
class ChainHasher {
 public:
  ChainHasher(uint64_t chunk_size, uint64_t blob_size)
      : chunk_size_(chunk_size), blob_size_(blob_size) {}
  uint64_t next() const { return sha_.bytes(); }
  uint64_t chunk_size() const { return chunk_size_; }
  // Bytes [next(), next() + n) of the blob.
  void Update(const uint8_t* p, uint64_t n) {
    while (n) {
      const uint64_t pos = sha_.bytes();
      const uint64_t boundary = std::min((pos / chunk_size_ + 1) * chunk_size_, blob_size_);
      const uint64_t k = std::min(n, boundary - pos);
      sha_.Update(p, k);
      p += k;
      n -= k;
      if (pos + k == boundary && boundary < blob_size_) chain_ += sha_.State();
    }
  }
  // Once every byte is in: the blob's digest ("sha256:<hex>"); the chain is
  // complete.
  std::string Finish() {
    const std::string raw = sha_.FinishRaw();
    chain_ += raw;
    return "sha256:" + HexEncode(raw);
  }
  std::string TakeChain() { return std::move(chain_); }

 private:
  const uint64_t chunk_size_;
  const uint64_t blob_size_;
  Sha256Chain sha_;
  std::string chain_;
};

}  // namespace

// A fetch buffer. Its bytes start uninitialised (new[] without "()"): they
// are always filled by the upstream before anyone reads them.
struct CachedBlobSource::FetchBuf {
  std::unique_ptr<uint8_t[]> bytes;
  size_t capacity = 0;
  size_t size = 0;
  size_t filled = 0;  // bytes written so far
  uint8_t* data() { return bytes.get(); }
  const uint8_t* data() const { return bytes.get(); }
  void Resize(size_t n) {
    if (n > capacity) {
      bytes.reset(new uint8_t[n]);
      capacity = n;
    }
    size = n;
  }
};

class CachedBlobSource::BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // A buffer of `n` bytes (contents undefined), back to the pool when the
  // last reference goes. `reserve`: the capacity to allocate if a new buffer
  // is needed (a chunk's size, so that a blob's short last chunk gets a
  // buffer every other chunk can reuse).
  std::shared_ptr<FetchBuf> Get(size_t n, size_t reserve) {
    std::unique_ptr<FetchBuf> b;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        b = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!b) b = std::make_unique<FetchBuf>();
    b->Resize(std::max(n, reserve));
    b->size = n;
    b->filled = 0;
    return std::shared_ptr<FetchBuf>(b.release(), [pool = shared_from_this()](FetchBuf* p) {
      pool->Put(std::unique_ptr<FetchBuf>(p));
    });
  }

 private:
  void Put(std::unique_ptr<FetchBuf> b) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < kMaxPooledBuffers) free_.push_back(std::move(b));
  }

  std::mutex mu_;
  std::vector<std::unique_ptr<FetchBuf>> free_;
};

// One upstream fetch of one chunk that other readers may wait for.
struct CachedBlobSource::Flight {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status status;
  std::shared_ptr<const FetchBuf> buf;  // the chunk, and nothing else

  // The first call decides; later ones (an error path after a success) do
  // nothing, so that a waiter's bytes stay where they were.
  void Finish(Status st, std::shared_ptr<const FetchBuf> b) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (done) return;
      status = std::move(st);
      buf = std::move(b);
      done = true;
    }
    cv.notify_all();
  }
  // Waits until `deadline` at most, then returns the status and (when OK
  // and there are any) the chunk's bytes. A leader that hangs (a stalled
  // upstream) costs its waiters kTransient, never a thread forever.
  Status Wait(std::chrono::steady_clock::time_point deadline, std::span<const uint8_t>* bytes) {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_until(lock, deadline, [this] { return done; })) {
      return Status::Transient("gave up waiting for another reader's fetch");
    }
    if (status.ok() && buf) *bytes = std::span<const uint8_t>(buf->data(), buf->size);
    return status;
  }
};

// An in-order pass over a blob being hashed. It is fed by the fetches of the
// blob's chunks (the bytes as they arrive, in memory) and by the reads that
// continue it (bytes served from the cache); chunks fetched ahead of it wait
// in `stash` (bounded by pass_stash_bytes over all passes) rather than be
// read back from the cache.
struct CachedBlobSource::SeqHash {
  SeqHash(uint64_t chunk_size, uint64_t blob_size, std::atomic<uint64_t>* total)
      : hasher(chunk_size, blob_size), stashed_total(total) {}
  ~SeqHash() { DropStash(UINT64_MAX); }
  std::mutex mu;  // guards hasher, done, result
  bool done = false;
  Status result;  // once done: the verification's answer
  // seq_tick_ when last advanced; the oldest pass goes first. Atomic: read
  // under seq_mu_ alone.
  std::atomic<uint64_t> last_use{0};
  // steady_clock nanoseconds of the last advance (the background verifier
  // waits for a pass that is still moving).
  std::atomic<int64_t> last_advance_ns{std::chrono::steady_clock::now().time_since_epoch().count()};
  ChainHasher hasher;  // hasher.next(): the bytes hashed so far
  // hasher.next(), readable without mu (a stale value only makes a feeder
  // stash a chunk the pass has passed, which the pass then drops).
  std::atomic<uint64_t> hashed{0};
  std::atomic<bool> finished{false};  // done, readable without mu

  std::mutex stash_mu;  // guards stash; never held while hashing or with mu wanted
  std::map<uint64_t, std::shared_ptr<const FetchBuf>> stash;  // by chunk index
  std::atomic<uint64_t>* const stashed_total;

  // Drops the stashed chunks that end at or before `upto` (all: UINT64_MAX).
  void DropStash(uint64_t upto) {
    std::lock_guard<std::mutex> lock(stash_mu);
    const uint64_t cs = hasher.chunk_size();
    for (auto it = stash.begin(); it != stash.end();) {
      if (upto != UINT64_MAX && it->first * cs + it->second->size > upto) break;
      stashed_total->fetch_sub(it->second->size);
      it = stash.erase(it);
    }
  }
  // The stashed chunk holding byte `pos`, taken out of the stash; null if none.
  std::shared_ptr<const FetchBuf> TakeStashed(uint64_t pos) {
    std::lock_guard<std::mutex> lock(stash_mu);
    auto it = stash.find(pos / hasher.chunk_size());
    if (it == stash.end()) return nullptr;
    std::shared_ptr<const FetchBuf> b = std::move(it->second);
    stash.erase(it);
    stashed_total->fetch_sub(b->size);
    return b;
  }
  bool HasStashed(uint64_t pos) {
    std::lock_guard<std::mutex> lock(stash_mu);
    return stash.count(pos / hasher.chunk_size()) != 0;
  }
};

CachedBlobSource::CachedBlobSource(ChunkCache* cache, BlobSource* upstream,
                                   CachedSourceOptions options)
    : cache_(cache),
      upstream_(upstream),
      options_(options),
      buffers_(SharedBufferPool()) {}

std::shared_ptr<CachedBlobSource::BufferPool> CachedBlobSource::SharedBufferPool() {
  static const std::shared_ptr<BufferPool> pool = std::make_shared<BufferPool>();
  return pool;
}

CachedBlobSource::~CachedBlobSource() {
  {
    std::lock_guard<std::mutex> lock(verify_mu_);
    verify_stop_ = true;
    verify_queue_.clear();
  }
  verify_cv_.notify_all();
  if (verifier_.joinable()) verifier_.join();
}

void CachedBlobSource::MaybeVerifyComplete(const BlobDescriptor& blob) {
  auto state = cache_->GetBlobState(blob.digest);
  if (!state.ok() || !state->complete() || state->verified || state->size != blob.size) return;
  {
    std::lock_guard<std::mutex> lock(verify_mu_);
    if (verify_stop_ || !verify_queued_.insert(blob.digest).second) return;
    verify_queue_.push_back(blob);
    if (!verifier_.joinable()) verifier_ = std::thread([this] { VerifierLoop(); });
  }
  verify_cv_.notify_all();
}

void CachedBlobSource::VerifierLoop() {
  std::unique_lock<std::mutex> lock(verify_mu_);
  for (;;) {
    verify_cv_.wait(lock, [this] { return verify_stop_ || !verify_queue_.empty(); });
    if (verify_stop_) return;
    BlobDescriptor blob = std::move(verify_queue_.front());
    verify_queue_.pop_front();
    lock.unlock();
    VerifyFromCache(blob);
    lock.lock();
    verify_queued_.erase(blob.digest);
    verify_cv_.notify_all();  // WaitForVerifications
  }
}

bool CachedBlobSource::WaitForVerifications() {
  std::unique_lock<std::mutex> lock(verify_mu_);
  return verify_cv_.wait_for(lock, options_.wait_timeout,
                             [this] { return verify_stop_ || verify_queued_.empty(); });
}

void CachedBlobSource::VerifyFromCache(const BlobDescriptor& blob) {
  auto state = cache_->GetBlobState(blob.digest);
  if (!state.ok() || state->verified) return;
  // An in-order pass under way hashes the blob itself: hashing it here too
  // would double the CPU a cold read costs. Wait while it advances; take
  // over once it has stalled for a second (its reader went elsewhere).
  for (;;) {
    std::shared_ptr<SeqHash> h;
    {
      std::lock_guard<std::mutex> lock(seq_mu_);
      auto it = seq_.find(blob.digest);
      if (it != seq_.end()) h = it->second;
    }
    if (!h) break;
    const int64_t idle_ns = std::chrono::steady_clock::now().time_since_epoch().count() -
                            h->last_advance_ns.load();
    if (idle_ns > int64_t{1'000'000'000}) break;
    {
      std::lock_guard<std::mutex> lock(verify_mu_);
      if (verify_stop_) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  state = cache_->GetBlobState(blob.digest);
  if (!state.ok() || state->verified) return;
  const uint64_t cs = cache_->chunk_size();
  std::shared_ptr<FetchBuf> buf = buffers_->Get(cs, cs);
  ChainHasher hasher(cs, blob.size);
  for (uint64_t c = 0; c * cs < blob.size; ++c) {
    {
      std::lock_guard<std::mutex> lock(verify_mu_);
      if (verify_stop_) return;
    }
    std::span<uint8_t> chunk(buf->data(), std::min<uint64_t>(cs, blob.size - c * cs));
    auto hit = cache_->ReadChunk(blob.digest, c, 0, chunk, /*count_access=*/false);
    // Evicted (or dropped) meanwhile: not verifiable now; a later completion retries.
    if (!hit.ok() || !*hit) return;
    hasher.Update(chunk.data(), chunk.size());
    CountHashing(blob.digest, chunk.size(), chunk.size());
  }
  // A mismatch is logged and the blob's chunks dropped; no read is waiting
  // for this answer.
  const std::string actual = hasher.Finish();
  (void)FinishVerification(blob, actual, hasher.TakeChain());
}

void CachedBlobSource::Count(const std::string& digest, uint64_t hits, uint64_t misses,
                             uint64_t requests, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(counters_mu_);
  BlobCounters& c = counters_[digest];
  c.hits += hits;
  c.misses += misses;
  c.upstream_requests += requests;
  c.upstream_bytes += bytes;
}

void CachedBlobSource::CountHashing(const std::string& digest, uint64_t hashed,
                                    uint64_t reread) {
  std::lock_guard<std::mutex> lock(counters_mu_);
  BlobCounters& c = counters_[digest];
  c.hashed_bytes += hashed;
  c.reread_bytes += reread;
}

BlobCounters CachedBlobSource::Counters(std::string_view digest) const {
  std::lock_guard<std::mutex> lock(counters_mu_);
  auto it = counters_.find(std::string(digest));
  return it == counters_.end() ? BlobCounters{} : it->second;
}

std::map<std::string, BlobCounters> CachedBlobSource::AllCounters() const {
  std::lock_guard<std::mutex> lock(counters_mu_);
  return counters_;
}

double CachedBlobSource::PercentCached(const BlobDescriptor& blob) {
  auto st = cache_->GetBlobState(blob.digest);
  if (!st.ok() || !st->known) return blob.size == 0 ? 100.0 : 0.0;
  if (st->chunk_count == 0) return 100.0;
  return 100.0 * static_cast<double>(st->chunks_present) / static_cast<double>(st->chunk_count);
}

Status CachedBlobSource::CheckNotBad(const BlobDescriptor& blob) {
  std::string actual;
  if (!cache_->IsBad(blob.digest, &actual)) return Status::Ok();
  return Status::Corrupt("blob " + blob.digest + " did not match its digest (got " + actual +
                         "); not served until a full fetch verifies it");
}

bool CachedBlobSource::KnownVerified(const BlobDescriptor& blob) {
  {
    std::lock_guard<std::mutex> lock(verified_mu_);
    if (verified_.count(blob.digest)) return true;
  }
  auto state = cache_->GetBlobState(blob.digest);
  if (!state.ok() || !state->verified || state->size != blob.size) return false;
  NoteVerified(blob.digest);
  return true;
}

void CachedBlobSource::NoteVerified(const std::string& digest) {
  constexpr size_t kMaxRemembered = 100000;  // bounds the memory; forgetting costs a query
  std::lock_guard<std::mutex> lock(verified_mu_);
  if (verified_.size() >= kMaxRemembered) verified_.clear();
  verified_.insert(digest);
}

Status CachedBlobSource::ReadAt(const BlobDescriptor& blob, uint64_t offset,
                                std::span<uint8_t> out) {
  if (out.empty()) return Status::Ok();
  RETURN_IF_ERROR(CheckRange(blob, offset, out.size(), "read"));
  RETURN_IF_ERROR(CheckNotBad(blob));
  const uint64_t cs = cache_->chunk_size();
  const uint64_t last_chunk_start = (blob.size - 1) / cs * cs;
  // A read from the start of a blob not verified yet starts its in-order
  // pass before it fetches, so that the fetched chunks feed the pass as
  // they arrive (StreamRun), in memory.
  std::shared_ptr<SeqHash> pass = offset == 0 ? StartPass(blob) : nullptr;
  if (offset + out.size() <= last_chunk_start) {
    RETURN_IF_ERROR(ReadRange(blob, offset, out));
    return TrackSequential(blob, std::move(pass), offset, out, nullptr);
  }
  if (!pass && KnownVerified(blob)) return ReadRange(blob, offset, out);
  // The last chunk of a blob not verified yet: its bytes go out only once
  // the whole blob has been verified, so that a reader never reaches a clean
  // end of file after wrong bytes. The blob's in-order pass, if there is
  // one, is finished here: caught up to this read from the chunks kept for
  // it, the cache or upstream (it may lag behind the reader: reads do not
  // wait for it), then over this read's bytes and the rest of the blob, so
  // that it verifies exactly the bytes handed out and hashes no byte twice.
  // Without a pass, the blob is verified from the cache, fetching what is
  // missing, and the range read again (a refetched chunk is then checked
  // against its hash).
  if (!pass) pass = FindPass(blob.digest);
  bool filled = false;
  if (pass) {
    RETURN_IF_ERROR(ReadRange(blob, offset, out));
    filled = true;
    bool verified = false;
    RETURN_IF_ERROR(TrackSequential(blob, std::move(pass), offset, out, &verified));
    if (verified) return Status::Ok();
  }
  // The pass ended on another thread meanwhile (a fetch fed it its last
  // bytes): its answer stands, the blob is not hashed again.
  RETURN_IF_ERROR(CheckNotBad(blob));
  if (!KnownVerified(blob)) {
    RETURN_IF_ERROR(VerifyWhole(blob));
    filled = false;
  }
  return filled ? Status::Ok() : ReadRange(blob, offset, out);
}

Status CachedBlobSource::SelfVerifying::ReadAt(const BlobDescriptor& blob, uint64_t offset,
                                               std::span<uint8_t> out) {
  if (out.empty()) return Status::Ok();
  RETURN_IF_ERROR(CheckRange(blob, offset, out.size(), "read"));
  RETURN_IF_ERROR(owner_->CheckNotBad(blob));
  // Small reads (a footer, a TOC, a file's compressed chunk) fetch only
  // their own bytes the first time they touch a cache chunk, whatever the
  // read-ahead setting: a TOC layer is read in small pieces that whole
  // 1 MiB chunks would multiply. A second touch keeps the chunk.
  if (out.size() <= owner_->options_.small_read_bytes) {
    const uint64_t cs = owner_->cache_->chunk_size();
    const uint64_t first = offset / cs, last = (offset + out.size() - 1) / cs;
    auto present = owner_->cache_->PresentChunks(blob.digest, first, last - first + 1);
    if (present.ok() && std::none_of(present->begin(), present->end(), [](bool b) { return b; })) {
      std::vector<uint64_t> missing;
      for (uint64_t c = first; c <= last; ++c) missing.push_back(c);
      Status st;
      if (owner_->FetchSmallRandom(blob, offset, out, missing, &st)) return st;
    }
  }
  return owner_->ReadRange(blob, offset, out);
}

Status CachedBlobSource::VerifyWhole(const BlobDescriptor& blob) {
  const auto deadline = std::chrono::steady_clock::now() + options_.wait_timeout;
  std::shared_ptr<Flight> f;
  bool leader = false;
  {
    std::lock_guard<std::mutex> lock(flights_mu_);
    auto [it, inserted] = whole_flights_.try_emplace(blob.digest);
    if (inserted) it->second = std::make_shared<Flight>();
    f = it->second;
    leader = inserted;
  }
  if (!leader) {
    std::span<const uint8_t> none;
    Status st = f->Wait(deadline, &none);
    if (st.code() == Code::kTransient) st = st.Annotate("verifying " + blob.digest);
    return st;
  }
  Status st;
  try {
    st = FetchWhole(blob, nullptr, deadline);
  } catch (const std::exception& e) {
    st = Status::IoError("verifying " + blob.digest + ": " + e.what());
  }
  {
    std::lock_guard<std::mutex> lock(flights_mu_);
    whole_flights_.erase(blob.digest);
  }
  f->Finish(st, nullptr);
  return st;
}

std::vector<uint64_t> CachedBlobSource::Lookup(const BlobDescriptor& blob, uint64_t offset,
                                               std::span<uint8_t> out,
                                               const std::vector<uint64_t>& chunks) {
  const uint64_t cs = cache_->chunk_size();
  std::vector<uint64_t> missing;
  uint64_t hits = 0;
  for (uint64_t c : chunks) {
    const uint64_t a = std::max(offset, c * cs);
    const uint64_t b = std::min(offset + out.size(), (c + 1) * cs);
    auto r = cache_->ReadChunk(blob.digest, c, static_cast<uint32_t>(a - c * cs),
                               out.subspan(a - offset, b - a));
    if (!r.ok()) {
      LOG_WARN("chunk cache lookup failed, going upstream: " + r.status().ToString());
      missing.push_back(c);
    } else if (*r) {
      ++hits;
    } else {
      missing.push_back(c);
    }
  }
  if (hits) Count(blob.digest, hits, 0, 0, 0);
  return missing;
}

Status CachedBlobSource::ReadRange(const BlobDescriptor& blob, uint64_t offset,
                                   std::span<uint8_t> out) {
  const uint64_t cs = cache_->chunk_size();
  const uint64_t first = offset / cs, last = (offset + out.size() - 1) / cs;
  ChunkCache::Pin pin(cache_, blob.digest, first, last);
  std::vector<uint64_t> todo;
  for (uint64_t c = first; c <= last; ++c) todo.push_back(c);
  // A miss can go stale if another reader's fetch stores the chunk between our
  // lookup and our registration; then look again rather than fetch it twice.
  for (int attempt = 0;; ++attempt) {
    const uint64_t gen = completed_gen_.load(std::memory_order_acquire);
    std::vector<uint64_t> missing = Lookup(blob, offset, out, todo);
    if (missing.empty()) return Status::Ok();
    bool stale = false;
    Status st = FetchMissing(blob, offset, out, missing, attempt < 3 ? gen : UINT64_MAX, &stale);
    if (!stale) {
      Count(blob.digest, 0, missing.size(), 0, 0);
      return st;
    }
    todo = std::move(missing);
  }
}

Status CachedBlobSource::FetchMissing(const BlobDescriptor& blob, uint64_t offset,
                                      std::span<uint8_t> out,
                                      const std::vector<uint64_t>& missing, uint64_t gen,
                                      bool* stale) {
  *stale = false;
  const uint64_t cs = cache_->chunk_size();
  const uint64_t nchunks = (blob.size + cs - 1) / cs;
  const uint64_t max_chunks = std::max<uint64_t>(1, options_.max_fetch_bytes / cs);

  // Readahead: how many chunks past the request a sequential reader gets.
  std::vector<uint64_t> extra;
  uint64_t window = 1;
  if (options_.readahead) {
    {
      std::lock_guard<std::mutex> lock(flights_mu_);
      auto it = readahead_.find(blob.digest);
      if (it != readahead_.end() && it->second.window > 0 &&
          missing.front() == it->second.next_chunk) {
        window = std::min(it->second.window * 2, max_chunks);
      }
    }
  }
  // Also without the cache's own read-ahead (the daemon reads ahead in fs/):
  // a random 4 KiB read costs a round trip, not a round trip and a chunk.
  if (window == 1 && options_.small_random_fetches) {
    Status st;
    if (FetchSmallRandom(blob, offset, out, missing, &st)) return st;
  }
  if (options_.readahead) {
    const uint64_t span_chunks = missing.back() - missing.front() + 1;
    if (window > span_chunks && missing.back() + 1 < nchunks) {
      const uint64_t from = missing.back() + 1;
      const uint64_t count = std::min(window - span_chunks, nchunks - from);
      auto present = cache_->PresentChunks(blob.digest, from, count);
      if (present.ok()) {
        for (uint64_t i = 0; i < count && !(*present)[i]; ++i) extra.push_back(from + i);
      }
    }
  }

  // Register: lead the chunks nobody fetches yet, wait for the others.
  std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>> mine;   // chunk, flight (leader)
  std::map<uint64_t, std::shared_ptr<Flight>> needed;               // chunk of the request
  // Reserved, so that a flight once registered is always recorded in `mine`.
  mine.reserve(missing.size() + extra.size());
  try {
    std::lock_guard<std::mutex> lock(flights_mu_);
    if (gen != UINT64_MAX && completed_gen_.load(std::memory_order_relaxed) != gen) {
      *stale = true;
      return Status::Ok();
    }
    for (uint64_t c : missing) {
      auto key = std::make_pair(blob.digest, c);
      auto it = flights_.find(key);
      if (it != flights_.end()) {
        needed[c] = it->second;
      } else {
        auto f = std::make_shared<Flight>();
        auto& slot = needed[c];
        flights_.emplace(key, f);
        mine.emplace_back(c, f);
        slot = f;
      }
    }
    for (uint64_t c : extra) {
      auto key = std::make_pair(blob.digest, c);
      if (flights_.count(key)) break;  // someone else reads ahead there already
      auto f = std::make_shared<Flight>();
      flights_.emplace(key, f);
      mine.emplace_back(c, f);
    }
    if (options_.readahead && !mine.empty()) {
      Readahead& ra = readahead_[blob.digest];
      ra.next_chunk = mine.back().first + 1;
      ra.window = window;
    }
  } catch (const std::exception& e) {
    // Nobody may wait forever for a flight registered here.
    Status st = Status::IoError("reading " + blob.digest + ": " + e.what());
    AbandonFlights(blob, mine, st);
    return st;
  }

  Status first_error = FetchLed(blob, std::move(mine));
  // Measured from here: the wait is for others' fetches, not for our own.
  const auto deadline = std::chrono::steady_clock::now() + options_.wait_timeout;

  // Copy every missing chunk's part of the request, from whoever fetched it.
  for (const auto& [c, flight] : needed) {
    std::span<const uint8_t> bytes;
    Status st = flight->Wait(deadline, &bytes);
    if (!st.ok()) {
      if (first_error.ok()) first_error = st;
      continue;
    }
    const uint64_t a = std::max(offset, c * cs);
    const uint64_t b = std::min(offset + out.size(), (c + 1) * cs);
    std::memcpy(out.data() + (a - offset), bytes.data() + (a - c * cs), b - a);
  }
  return first_error;
}

Status CachedBlobSource::FetchLed(
    const BlobDescriptor& blob, std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>> mine) {
  // In runs of consecutive indices, at most max_fetch_bytes each. The flights
  // move into the runs, which drop each one once it is stored, so that its
  // buffer goes back to the pool as soon as no waiter holds it.
  const uint64_t max_chunks = std::max<uint64_t>(1, options_.max_fetch_bytes / cache_->chunk_size());
  Status first_error;
  try {
    for (size_t i = 0; i < mine.size();) {
      size_t j = i + 1;
      while (j < mine.size() && mine[j].first == mine[j - 1].first + 1 && j - i < max_chunks) ++j;
      std::vector<std::shared_ptr<Flight>> run;
      run.reserve(j - i);
      for (size_t k = i; k < j; ++k) run.push_back(std::move(mine[k].second));
      Status st = FetchRun(blob, mine[i].first, mine[j - 1].first, std::move(run));
      if (!st.ok() && first_error.ok()) first_error = st;
      i = j;
    }
  } catch (const std::exception& e) {
    // Nobody may wait forever for a flight this call registered.
    Status st = Status::IoError("fetching " + blob.digest + ": " + e.what());
    AbandonFlights(blob, mine, st);
    return st;
  }
  return first_error;
}

void CachedBlobSource::AbandonFlights(
    const BlobDescriptor& blob, const std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>>& led,
    const Status& st) noexcept {
  {
    std::lock_guard<std::mutex> lock(flights_mu_);
    for (const auto& [c, f] : led) {
      if (!f) continue;
      auto it = flights_.find({blob.digest, c});
      if (it != flights_.end() && it->second == f) flights_.erase(it);
    }
    completed_gen_.fetch_add(1, std::memory_order_release);
  }
  for (const auto& [c, f] : led) {
    if (f) f->Finish(st, nullptr);
  }
}

Status CachedBlobSource::Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len) {
  if (len == 0) return Status::Ok();
  RETURN_IF_ERROR(CheckRange(blob, offset, len, "prefetch"));
  RETURN_IF_ERROR(CheckNotBad(blob));
  const uint64_t cs = cache_->chunk_size();
  const uint64_t first = offset / cs, last = (offset + len - 1) / cs;
  std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>> mine;
  mine.reserve(last - first + 1);  // no allocation between registering and recording
  // As in ReadRange: a fetch that completes between the presence query and
  // the registration makes the query stale; then ask again.
  for (int attempt = 0;; ++attempt) {
    const uint64_t gen = completed_gen_.load(std::memory_order_acquire);
    ASSIGN_OR_RETURN(std::vector<bool> present,
                     cache_->PresentChunks(blob.digest, first, last - first + 1));
    try {
      std::lock_guard<std::mutex> lock(flights_mu_);
      if (attempt < 3 && completed_gen_.load(std::memory_order_relaxed) != gen) continue;
      for (uint64_t c = first; c <= last; ++c) {
        auto key = std::make_pair(blob.digest, c);
        if (present[c - first] || flights_.count(key)) continue;
        auto f = std::make_shared<Flight>();
        flights_.emplace(key, f);
        mine.emplace_back(c, f);
      }
    } catch (const std::exception& e) {
      Status st = Status::IoError("prefetching " + blob.digest + ": " + e.what());
      AbandonFlights(blob, mine, st);
      return st;
    }
    break;
  }
  if (mine.empty()) return Status::Ok();
  Count(blob.digest, 0, mine.size(), 0, 0);
  return FetchLed(blob, std::move(mine));
}

bool CachedBlobSource::FetchSmallRandom(const BlobDescriptor& blob, uint64_t offset,
                                        std::span<uint8_t> out,
                                        const std::vector<uint64_t>& missing, Status* st) {
  constexpr size_t kMaxTouched = 100000;  // bounds the memory of first touches
  const uint64_t cs = cache_->chunk_size();
  if (offset == 0 || out.size() > options_.small_read_bytes ||
      missing.back() - missing.front() + 1 != missing.size()) {
    return false;
  }
  // Verified: fetch whole chunks (checked against their hashes).
  if (KnownVerified(blob)) return false;
  // A read right after a cached chunk continues a sequential run (the
  // daemon reads ahead in fs/, without the window above): it fetches and
  // keeps whole chunks, leading its own fetch as a sequential reader does,
  // rather than leave its chunk to a read-ahead request that may fail
  // further on and take the read with it.
  if (missing.front() > 0) {
    auto before = cache_->PresentChunks(blob.digest, missing.front() - 1, 1);
    if (before.ok() && !before->empty() && (*before)[0]) return false;
  }
  {
    std::lock_guard<std::mutex> lock(flights_mu_);
    for (uint64_t c : missing) {
      if (flights_.count({blob.digest, c})) return false;  // being fetched whole: wait for it
    }
    std::set<uint64_t>& touched = touched_[blob.digest];
    for (uint64_t c : missing) {
      if (touched.count(c)) return false;  // second touch: fetch and keep the chunk
    }
    if (touched_count_ + missing.size() > kMaxTouched) {
      touched_.clear();
      touched_count_ = 0;
    }
    for (uint64_t c : missing) touched_[blob.digest].insert(c);
    touched_count_ += missing.size();
    // A read of the next chunk after this one is the start of a sequential
    // run (for the cache's own read-ahead; without it nobody reads this).
    if (options_.readahead) {
      Readahead& ra = readahead_[blob.digest];
      ra.next_chunk = missing.back() + 1;
      ra.window = 1;
    }
  }
  const uint64_t a = std::max(offset, missing.front() * cs);
  const uint64_t b = std::min<uint64_t>(offset + out.size(), (missing.back() + 1) * cs);
  *st = upstream_->ReadAt(blob, a, out.subspan(a - offset, b - a));
  Count(blob.digest, 0, 0, 1, st->ok() ? b - a : 0);
  return true;
}

Status CachedBlobSource::FetchRun(const BlobDescriptor& blob, uint64_t first, uint64_t last,
                                  std::vector<std::shared_ptr<Flight>> flights) {
  try {
    return StreamRun(blob, first, last, flights);
  } catch (const std::exception& e) {
    // Out of memory, say: every flight of the run not yet dropped ends (the
    // ones answered already keep their bytes) and leaves the map.
    Status st = Status::IoError("fetching " + blob.digest + ": " + e.what());
    std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>> left;
    for (uint64_t c = first; c <= last; ++c) left.emplace_back(c, flights[c - first]);
    AbandonFlights(blob, left, st);
    return st;
  }
}

Status CachedBlobSource::StreamRun(const BlobDescriptor& blob, uint64_t first, uint64_t last,
                                   std::vector<std::shared_ptr<Flight>>& flights) {
  // One upstream request for the run, streamed: each chunk is answered to
  // its waiters as soon as its last byte is in, and stored in small batches,
  // instead of after the whole run. Chunk buffers come from the pool.
  constexpr size_t kStoreBatch = 4;
  const uint64_t cs = cache_->chunk_size();
  const uint64_t start = first * cs;
  const uint64_t end = std::min((last + 1) * cs, blob.size);
  // A verified blob's chunks are checked against its recorded chain.
  std::optional<std::string> chain;
  if (auto h = cache_->GetChunkChain(blob.digest); h.ok()) chain = std::move(*h);

  uint64_t next = first;  // the chunk being filled
  uint64_t received = 0;
  std::shared_ptr<FetchBuf> cur;
  std::vector<std::pair<uint64_t, std::shared_ptr<const FetchBuf>>> unstored;
  unstored.reserve(kStoreBatch);
  bool stored = false;
  auto unregister = [&](uint64_t from, uint64_t to) {
    {
      // Stored before unregistering: a newcomer finds either the flight or the chunk.
      std::lock_guard<std::mutex> lock(flights_mu_);
      for (uint64_t c = from; c <= to; ++c) flights_.erase({blob.digest, c});
      completed_gen_.fetch_add(1, std::memory_order_release);
    }
    for (uint64_t c = from; c <= to; ++c) flights[c - first].reset();
  };
  auto store = [&] {
    if (unstored.empty()) return;
    std::vector<std::span<const uint8_t>> spans;
    for (const auto& u : unstored) spans.emplace_back(u.second->data(), u.second->size);
    // A cache that cannot store (full disk, read-only) has logged why; the
    // bytes were served from memory all the same.
    if (cache_->PutChunks(blob, unstored.front().first, spans).ok()) stored = true;
    unregister(unstored.front().first, unstored.back().first);
    unstored.clear();
  };
  auto sink = [&](std::span<const uint8_t> bytes) -> Status {
    received += bytes.size();
    while (!bytes.empty()) {
      if (next > last) return Status::Protocol("more bytes than the range asked for");
      if (!cur) cur = buffers_->Get(std::min<uint64_t>(cs, blob.size - next * cs), cs);
      const size_t n = std::min(bytes.size(), cur->size - cur->filled);
      std::memcpy(cur->data() + cur->filled, bytes.data(), n);
      cur->filled += n;
      bytes = bytes.subspan(n);
      if (cur->filled < cur->size) break;
      const std::span<const uint8_t> chunk(cur->data(), cur->size);
      if (chain) {
        CountHashing(blob.digest, chunk.size(), 0);
        RETURN_IF_ERROR(CheckChunkHash(blob, cs, *chain, next, chunk));
      }
      std::shared_ptr<const FetchBuf> done = std::move(cur);
      cur.reset();
      const uint64_t c = next++;  // from here on, chunk c counts as answered
      unstored.emplace_back(c, done);  // no allocation: reserved, flushed at kStoreBatch
      flights[c - first]->Finish(Status::Ok(), std::move(done));
      // An unverified blob's in-order pass hashes the chunk now, from
      // memory, or keeps it until the pass gets there.
      if (!chain) FeedPass(blob, c, unstored.back().second);
      if (unstored.size() >= kStoreBatch) store();
    }
    return Status::Ok();
  };
  Status st = upstream_->ReadStream(blob, start, end - start, sink);
  Count(blob.digest, 0, 0, 1, received);
  if (st.ok() && next <= last) st = Status::Protocol("upstream ended the range early");
  store();
  if (next <= last) {
    std::vector<std::shared_ptr<Flight>> failed(flights.begin() + static_cast<ptrdiff_t>(next - first),
                                                flights.end());
    unregister(next, last);
    for (auto& f : failed) f->Finish(st, nullptr);
  }
  if (stored && options_.verify_complete) MaybeVerifyComplete(blob);
  return st;
}

Status CachedBlobSource::CheckChunkHash(const BlobDescriptor& blob, uint64_t chunk_size,
                                        const std::string& chain, uint64_t c,
                                        std::span<const uint8_t> chunk) {
  constexpr uint64_t kEntry = Sha256Chain::kStateBytes;
  const uint64_t last = (blob.size - 1) / chunk_size;
  if (c > last || chain.size() != (last + 1) * kEntry ||
      chunk.size() != std::min(chunk_size, blob.size - c * chunk_size)) {
    return Status::Corrupt("chunk " + std::to_string(c) + " of " + blob.digest +
                           ": recorded chain does not fit the blob");
  }
  // Resume the blob's hash where chunk c starts, hash the chunk, and compare
  // with the state recorded after it (the digest, for the last chunk).
  const std::string_view entries(chain);
  Sha256Chain sha;
  if (c > 0) {
    auto resumed = Sha256Chain::Resume(entries.substr((c - 1) * kEntry, kEntry), c * chunk_size);
    if (!resumed.ok()) return Status::Corrupt("chunk chain: " + resumed.status().ToString());
    sha = std::move(resumed).value();
  }
  sha.Update(chunk.data(), chunk.size());
  const std::string got = c == last ? sha.FinishRaw() : sha.State();
  if (got != entries.substr(c * kEntry, kEntry)) {
    return Status::Corrupt("chunk " + std::to_string(c) + " of " + blob.digest +
                           " from upstream does not match its recorded sha256");
  }
  return Status::Ok();
}

std::shared_ptr<CachedBlobSource::SeqHash> CachedBlobSource::FindPass(const std::string& digest) {
  std::lock_guard<std::mutex> lock(seq_mu_);
  auto it = seq_.find(digest);
  return it == seq_.end() ? nullptr : it->second;
}

std::shared_ptr<CachedBlobSource::SeqHash> CachedBlobSource::StartPass(const BlobDescriptor& blob) {
  if (std::shared_ptr<SeqHash> h = FindPass(blob.digest)) return h;
  if (KnownVerified(blob) || cache_->IsBad(blob.digest)) return nullptr;
  std::lock_guard<std::mutex> lock(seq_mu_);
  if (seq_.size() >= kMaxSequentialPasses) {
    // The pass that advanced least recently is most likely abandoned.
    auto oldest = seq_.begin();
    for (auto it = seq_.begin(); it != seq_.end(); ++it) {
      if (it->second->last_use.load() < oldest->second->last_use.load()) oldest = it;
    }
    oldest->second->DropStash(UINT64_MAX);
    seq_.erase(oldest);
  }
  auto [it, inserted] = seq_.emplace(
      blob.digest, std::make_shared<SeqHash>(cache_->chunk_size(), blob.size, &stashed_bytes_));
  return it->second;
}

void CachedBlobSource::HashLocked(const BlobDescriptor& blob, SeqHash* h, const uint8_t* p,
                                  uint64_t n, bool reread) {
  h->last_use.store(seq_tick_.fetch_add(1, std::memory_order_relaxed));
  h->last_advance_ns.store(std::chrono::steady_clock::now().time_since_epoch().count());
  h->hasher.Update(p, n);
  h->hashed.store(h->hasher.next());
  CountHashing(blob.digest, n, reread ? n : 0);
  if (h->hasher.next() < blob.size) return;
  h->done = true;
  const std::string actual = h->hasher.Finish();
  // Recorded before the pass leaves seq_: the background check, which waits
  // while a pass exists, must find the blob verified once it is gone (else
  // it hashes the whole blob a second time); and under h->mu, so that a
  // reader of the last chunk waiting for the pass gets its answer.
  h->result = FinishVerification(blob, actual, h->hasher.TakeChain());
  h->finished.store(true);
  {
    std::lock_guard<std::mutex> l(seq_mu_);
    auto it = seq_.find(blob.digest);
    if (it != seq_.end() && it->second.get() == h) seq_.erase(it);
  }
  h->DropStash(UINT64_MAX);
}

void CachedBlobSource::AdvanceLocked(const BlobDescriptor& blob, SeqHash* h) {
  while (!h->done) {
    const uint64_t next = h->hasher.next();
    std::shared_ptr<const FetchBuf> b = h->TakeStashed(next);
    if (!b) break;
    const uint64_t skip = next % h->hasher.chunk_size();
    if (skip >= b->size) break;  // cannot be: a stashed chunk holds `next`
    HashLocked(blob, h, b->data() + skip, b->size - skip, /*reread=*/false);
  }
  if (!h->done) h->DropStash(h->hasher.next());  // chunks the pass went past otherwise
}

void CachedBlobSource::DrainPass(const BlobDescriptor& blob, const std::shared_ptr<SeqHash>& h) {
  // Whoever holds the pass drains the stash before letting go, and looks
  // again after: a chunk stashed while it held the pass (its feeder found
  // the pass busy) is never left behind.
  while (!h->finished.load() && h->HasStashed(h->hashed.load())) {
    std::unique_lock<std::mutex> lock(h->mu, std::try_to_lock);
    if (!lock.owns_lock()) return;  // the holder looks again after it lets go
    AdvanceLocked(blob, h.get());
  }
}

void CachedBlobSource::FeedPass(const BlobDescriptor& blob, uint64_t c,
                                const std::shared_ptr<const FetchBuf>& buf) {
  std::shared_ptr<SeqHash> h = FindPass(blob.digest);
  if (!h || h->finished.load()) return;
  const uint64_t cs = cache_->chunk_size();
  const uint64_t start = c * cs, end = start + buf->size;
  if (end <= h->hashed.load()) return;
  {
    bool keep = true;
    std::unique_lock<std::mutex> lock(h->mu, std::try_to_lock);
    if (lock.owns_lock()) {
      AdvanceLocked(blob, h.get());
      const uint64_t next = h->hasher.next();
      if (!h->done && start <= next && next < end) {
        HashLocked(blob, h.get(), buf->data() + (next - start), end - next, /*reread=*/false);
        AdvanceLocked(blob, h.get());
      }
      keep = !h->done && end > h->hasher.next();
    }
    // Ahead of the pass (another request's chunks arrive first), or the
    // pass is busy: keep the chunk for it if there is room. The chunk the
    // pass needs next is always kept (the holder hashes it before it lets
    // go; dropped, it would stall the pass until a read caught up from the
    // cache): at most one chunk per fetching thread over the bound.
    if (keep) {
      const bool needed_next = start <= h->hashed.load();
      if (stashed_bytes_.fetch_add(buf->size) + buf->size > options_.pass_stash_bytes &&
          !needed_next) {
        stashed_bytes_.fetch_sub(buf->size);
      } else {
        std::lock_guard<std::mutex> l(h->stash_mu);
        if (!h->stash.emplace(c, buf).second) stashed_bytes_.fetch_sub(buf->size);
      }
    }
  }
  DrainPass(blob, h);
}

Status CachedBlobSource::CatchUp(const BlobDescriptor& blob, SeqHash* h, uint64_t to, bool fetch,
                                 bool* reached) {
  const uint64_t cs = cache_->chunk_size();
  std::shared_ptr<FetchBuf> buf;  // from the pool: no fresh, zeroed memory per catch-up
  *reached = false;
  for (;;) {
    AdvanceLocked(blob, h);  // stashed chunks first: no copy, no CRC check
    if (h->done || h->hasher.next() >= to) {
      *reached = true;
      return Status::Ok();
    }
    const uint64_t next = h->hasher.next();
    const uint64_t c = next / cs;
    const uint64_t chunk_end = std::min((c + 1) * cs, blob.size);
    const uint64_t n = std::min(chunk_end, to) - next;
    if (!buf) buf = buffers_->Get(cs, cs);
    std::span<uint8_t> part(buf->data(), n);
    if (fetch) {
      // Through the cache: a chunk not there yet is waited for (another
      // reader's fetch) or fetched. Its fetch may feed the pass a chunk it
      // hashes here (the stash then drops it): the pass goes by position.
      RETURN_IF_ERROR(ReadRange(blob, next, part));
    } else {
      auto hit = cache_->ReadChunk(blob.digest, c, static_cast<uint32_t>(next - c * cs), part,
                                   /*count_access=*/false);
      if (!hit.ok() || !*hit) return Status::Ok();
    }
    HashLocked(blob, h, part.data(), n, /*reread=*/true);
  }
}

Status CachedBlobSource::TrackSequential(const BlobDescriptor& blob, std::shared_ptr<SeqHash> h,
                                         uint64_t offset, std::span<const uint8_t> bytes,
                                         bool* verified) {
  if (!h) h = offset == 0 ? StartPass(blob) : FindPass(blob.digest);
  if (!h) return Status::Ok();
  // A read that only feeds the pass does not wait for it: while another
  // thread hashes, this one answers its reader, and its bytes are caught up
  // from the stash or the cache by whoever continues the pass. Waiting here
  // made every FUSE thread queue behind the one hashing (and behind its
  // preemption, on a busy machine). The read that must finish the pass (the
  // last chunk's, `verified` given) waits.
  std::unique_lock<std::mutex> lock(h->mu, std::defer_lock);
  if (verified) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return Status::Ok();
  }
  // A read ahead of the pass: FUSE hands a sequential reader's requests to
  // several threads, so the one at the pass's position may come second, and
  // the pass may lag behind the reader. The pass catches up from the stash
  // or the cache when the bytes in between are there; otherwise the read
  // (another reader's, elsewhere in the blob) is not part of it, and the
  // pass goes on with the reads and fetches that continue it. The read that
  // finishes the pass catches up whatever it takes, fetching if need be,
  // and then the rest of the blob after its own bytes.
  const uint64_t end = offset + bytes.size();
  if (!h->done) {
    bool reached = offset <= h->hasher.next();
    if (!reached) {
      RETURN_IF_ERROR(CatchUp(blob, h.get(), offset, /*fetch=*/verified != nullptr, &reached));
    }
    if (reached && !h->done && end > h->hasher.next()) {
      const uint64_t from = h->hasher.next();
      HashLocked(blob, h.get(), bytes.data() + (from - offset), end - from, /*reread=*/false);
    }
    if (reached && verified && !h->done) {
      RETURN_IF_ERROR(CatchUp(blob, h.get(), blob.size, /*fetch=*/true, &reached));
    }
    AdvanceLocked(blob, h.get());
  }
  const bool done = h->done;
  const Status result = done ? h->result : Status::Ok();
  lock.unlock();
  if (!done) {
    DrainPass(blob, h);
    return Status::Ok();
  }
  // The pass is over (this read finished it, or another thread did): its
  // answer is this read's (bytes of a blob that failed are not served).
  RETURN_IF_ERROR(result);
  if (verified) *verified = true;
  return Status::Ok();
}

Status CachedBlobSource::FinishVerification(const BlobDescriptor& blob, const std::string& actual,
                                            const std::string& chunk_chain) {
  if (actual != blob.digest) {
    {
      std::lock_guard<std::mutex> lock(verified_mu_);
      verified_.erase(blob.digest);
    }
    Status dropped = cache_->MarkBad(blob.digest, actual);
    LOG_WARN("blob " + blob.digest + " has content digest " + actual +
             "; dropped its cached chunks and marked it bad" +
             (dropped.ok() ? "" : " (" + dropped.ToString() + ")"));
    return Status::Corrupt("blob " + blob.digest + " does not match its digest (got " + actual +
                           ")");
  }
  NoteVerified(blob.digest);
  Status st = cache_->SetVerified(blob, chunk_chain);
  if (!st.ok()) LOG_DEBUG("could not record verification of " + blob.digest + ": " + st.ToString());
  return Status::Ok();
}

Status CachedBlobSource::FetchWhole(const BlobDescriptor& blob, const Sink& sink) {
  return FetchWhole(blob, sink, std::chrono::steady_clock::time_point::max());
}

Status CachedBlobSource::FetchWhole(const BlobDescriptor& blob, const Sink& sink,
                                    std::chrono::steady_clock::time_point deadline) {
  RETURN_IF_ERROR(ValidateDigest(blob.digest));
  // This pass verifies the blob itself: keep the background verifier off it
  // (hashing it twice), and hand it over if the pass stops early.
  bool mine;
  {
    std::lock_guard<std::mutex> lock(verify_mu_);
    mine = verify_queued_.insert(blob.digest).second;
  }
  Status st = FetchWholeVerified(blob, sink, deadline);
  if (mine) {
    {
      std::lock_guard<std::mutex> lock(verify_mu_);
      verify_queued_.erase(blob.digest);
    }
    verify_cv_.notify_all();
    if (!st.ok() && st.code() != Code::kCorrupt && options_.verify_complete) {
      MaybeVerifyComplete(blob);
    }
  }
  return st;
}

Status CachedBlobSource::FetchWholeVerified(const BlobDescriptor& blob, const Sink& sink,
                                            std::chrono::steady_clock::time_point deadline) {
  const uint64_t cs = cache_->chunk_size();
  const uint64_t step = std::max<uint64_t>(1, options_.max_fetch_bytes / cs) * cs;
  // Not zeroed: ReadRange fills it (up to max_fetch_bytes of fresh memory).
  std::unique_ptr<uint8_t[]> buf(new uint8_t[std::min<uint64_t>(step, blob.size)]);
  ChainHasher hasher(cs, blob.size);
  for (uint64_t off = 0; off < blob.size; off += step) {
    if (std::chrono::steady_clock::now() > deadline) {
      return Status::Transient("verifying " + blob.digest + " took longer than its budget");
    }
    std::span<uint8_t> s(buf.get(), std::min(step, blob.size - off));
    RETURN_IF_ERROR(ReadRange(blob, off, s));
    hasher.Update(s.data(), s.size());
    CountHashing(blob.digest, s.size(), 0);
    if (sink) RETURN_IF_ERROR(sink(off, s));
  }
  const std::string actual = hasher.Finish();
  return FinishVerification(blob, actual, hasher.TakeChain());
}

}  // namespace regfs
