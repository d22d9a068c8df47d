// CachedBlobSource: a BlobSource that answers from a ChunkCache and goes to an
// upstream BlobSource (the registry) only for chunks the cache lacks.
//
// Read path: each chunk of a request is looked up; misses are fetched with
// single flight (concurrent misses on one chunk make one upstream request, the
// others wait for its bytes) and adjacent misses are coalesced into one
// upstream ReadAt of up to max_fetch_bytes. A sequential reader's window
// doubles (1, 2, 4, ... chunks up to max_fetch_bytes), so a cold sequential
// read of N bytes makes about N / max_fetch_bytes requests while a random
// reader fetches only the chunks it touches. Fetched chunks are stored, then
// served from memory, so a failing cache never fails a read.
//
// Verification: a blob's sha256 is checked against its digest, and its
// chunk chain recorded (the SHA-256 state after each chunk, taken from the
// same pass: Sha256Chain; every byte is hashed once), in one of three ways:
// FetchWhole; an in-order pass from offset 0 to the end (such as a layer's
// index pass or a `cat`), hashed as it goes, whatever other reads of the
// blob happen meanwhile (reads that do not continue the pass are simply not
// part of it): a read at offset 0 starts it, the chunks fetched for the blob
// feed it as they arrive, in memory (those that arrive ahead of it, from
// read-ahead requests side by side, wait in memory up to pass_stash_bytes),
// and the reads that continue it feed it the chunks that were cached
// already; or, once fetches have left every chunk of the blob in the
// cache in whatever order (verify_complete), by hashing it from the cache on
// a background thread. Later fetches of a verified blob's chunks are fetched
// whole and checked against the chain (the state before the chunk, resumed
// over its bytes, must give the state after it, or for the last chunk the
// digest), so bytes refetched after eviction are verified.
//
// A digest mismatch is Code::kCorrupt, every cached chunk of the blob is
// dropped, and the blob is marked bad in the cache (ChunkCache::MarkBad,
// persisted): every later read of it, in this process or a later one, is
// kCorrupt until a FetchWhole verifies it. Bytes of an unverified blob served
// before verification are only as good as the upstream (the cache's own CRCs
// guard against local corruption, not a lying server), except the blob's last
// chunk: a read that touches it is answered only once the whole blob is
// verified (from the cache, fetching what is missing), so a reader that reads
// a blob to its end sees either the right bytes or an error, never a clean
// end of file after wrong bytes.
//
// Waits: a reader waiting for another reader's fetch (single flight) or for
// another reader's whole-blob verification gives up after wait_timeout with
// kTransient; nothing in here waits without a deadline (the background
// verifier's idle wait for work aside).
//
// Errors: upstream errors are returned as they are (waiters on a shared fetch
// get the leader's error); cache errors are logged and bypassed.
// Thread-safe.
#ifndef REGFS_CACHE_CACHED_BLOB_SOURCE_H_
#define REGFS_CACHE_CACHED_BLOB_SOURCE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cache/chunk_cache.h"
#include "reader/base/blob_source.h"
#include "reader/base/status.h"

namespace regfs {

struct CachedSourceOptions {
  uint64_t max_fetch_bytes = 16u << 20;  // cap of one coalesced upstream request
  bool readahead = true;                 // grow the window for sequential readers
  bool verify_complete = true;           // verify blobs the cache completes, in the background
  // How long a reader waits for someone else's fetch of a chunk (single
  // flight) or verification of a blob before it fails with kTransient; also
  // the budget of the whole-blob verification a read of the last chunk needs.
  std::chrono::milliseconds wait_timeout{120000};
  // A small random read (at most small_read_bytes, not at the blob's start,
  // not continuing a sequential run) that misses fetches only its own bytes
  // the first time it touches a chunk, and does not store them; a second
  // touch of that chunk fetches and stores the whole chunk. Over a slow link
  // a 4 KiB read then costs a round trip, not a round trip plus a chunk.
  // Not used for verified blobs (their chunks are checked whole).
  bool small_random_fetches = false;
  uint64_t small_read_bytes = 128u << 10;
  // Fetched chunks that arrive ahead of a blob's in-order pass (read-ahead
  // requests run side by side) are kept in memory for it, up to this many
  // bytes for all passes; beyond that the pass reads them back from the
  // cache (a copy and a CRC check more per byte).
  uint64_t pass_stash_bytes = 32u << 20;
};

// Per-blob counters of this process, for .regfs/status.json.
struct BlobCounters {
  uint64_t upstream_requests = 0;
  uint64_t upstream_bytes = 0;
  uint64_t hits = 0;    // chunk reads answered by the cache
  uint64_t misses = 0;  // chunk reads that needed upstream bytes (own fetch or a shared one)
  // Bytes fed to SHA-256 for verification (every pass counted): what the
  // integrity checks cost in CPU. A cold in-order read hashes each byte once.
  uint64_t hashed_bytes = 0;
  // Bytes read back from the cache only to be hashed (a pass catching up, the
  // background check of a blob completed out of order).
  uint64_t reread_bytes = 0;
};

class CachedBlobSource : public BlobSource {
 public:
  // Neither pointer is owned; both must outlive this object.
  CachedBlobSource(ChunkCache* cache, BlobSource* upstream, CachedSourceOptions options = {});
  ~CachedBlobSource() override;

  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override;
  // Fetches and stores the chunks of the range that are neither cached nor
  // being fetched by someone else; copies nothing out and waits for nobody.
  Status Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len) override;
  // Reads through the cache as ReadAt does, without waiting for the whole
  // blob's verification before a last-chunk read (see BlobSource).
  BlobSource* SelfVerifyingReads() override { return &self_verifying_; }

  // Streams the whole blob through the cache in order (hits from the cache,
  // misses coalesced upstream), verifies its digest, records its chunk
  // chain. `sink`, if given, sees every byte in order (an index builder can
  // parse while fetching); a non-OK return from it aborts. On a digest
  // mismatch returns kCorrupt and drops every cached chunk of the blob.
  using Sink = std::function<Status(uint64_t offset, std::span<const uint8_t> bytes)>;
  Status FetchWhole(const BlobDescriptor& blob, const Sink& sink = nullptr);
  // The same, giving up with kTransient once `deadline` has passed.
  Status FetchWhole(const BlobDescriptor& blob, const Sink& sink,
                    std::chrono::steady_clock::time_point deadline);

  BlobCounters Counters(std::string_view digest) const;
  std::map<std::string, BlobCounters> AllCounters() const;
  // Share of the blob's chunks held in the cache, 0..100.
  double PercentCached(const BlobDescriptor& blob);

  ChunkCache* cache() const { return cache_; }

 private:
  class SelfVerifying : public BlobSource {
   public:
    explicit SelfVerifying(CachedBlobSource* owner) : owner_(owner) {}
    Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override;
    Status Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len) override {
      return owner_->Prefetch(blob, offset, len);
    }

   private:
    CachedBlobSource* owner_;
  };
  SelfVerifying self_verifying_{this};

 public:

  // Waits until every queued background verification has finished; false
  // if that took longer than wait_timeout.
  bool WaitForVerifications();

 private:
  struct Flight;
  struct SeqHash;
  struct FetchBuf;
  class BufferPool;
  struct Readahead {
    uint64_t next_chunk = 0;  // where a sequential reader's next miss lands
    uint64_t window = 0;      // chunks fetched by the last sequential miss
  };

  // The small_random_fetches path; false if it does not apply to this read.
  bool FetchSmallRandom(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out,
                        const std::vector<uint64_t>& missing, Status* st);
  // Reads [offset, offset + out.size()) through the cache; no digest tracking.
  Status ReadRange(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out);
  // Looks chunks up in the cache, copying hits into out; returns the misses.
  std::vector<uint64_t> Lookup(const BlobDescriptor& blob, uint64_t offset,
                               std::span<uint8_t> out, const std::vector<uint64_t>& chunks);
  // Fetches `missing` (single flight, coalesced). If a fetch finished since
  // `gen` was read (so a miss may be stale), registers nothing and sets *stale.
  Status FetchMissing(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out,
                      const std::vector<uint64_t>& missing, uint64_t gen, bool* stale);
  // Fetches the chunks this caller registered as leader of.
  Status FetchLed(const BlobDescriptor& blob,
                  std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>> mine);
  Status FetchRun(const BlobDescriptor& blob, uint64_t first, uint64_t last,
                  std::vector<std::shared_ptr<Flight>> flights);
  // FetchRun's work; may throw (allocation), FetchRun cleans up.
  Status StreamRun(const BlobDescriptor& blob, uint64_t first, uint64_t last,
                   std::vector<std::shared_ptr<Flight>>& flights);
  // Unregisters the still-registered flights of `led` and finishes them with
  // `st` (those finished already keep their answer).
  void AbandonFlights(const BlobDescriptor& blob,
                      const std::vector<std::pair<uint64_t, std::shared_ptr<Flight>>>& led,
                      const Status& st) noexcept;
  // Checks chunk c (all of it) against a verified blob's chunk chain.
  static Status CheckChunkHash(const BlobDescriptor& blob, uint64_t chunk_size,
                               const std::string& chain, uint64_t c,
                               std::span<const uint8_t> chunk);
  // The blob's in-order pass, if one is under way.
  std::shared_ptr<SeqHash> FindPass(const std::string& digest);
  // The blob's pass, started if there is none and the blob is neither
  // verified nor known bad (then null).
  std::shared_ptr<SeqHash> StartPass(const BlobDescriptor& blob);
  // Hashes the next n bytes of the pass (h->mu held) and, at the blob's end,
  // finishes it: records the verification (or the mismatch) and retires it.
  void HashLocked(const BlobDescriptor& blob, SeqHash* h, const uint8_t* p, uint64_t n,
                  bool reread);
  // Hashes the stashed chunks that continue the pass (h->mu held).
  void AdvanceLocked(const BlobDescriptor& blob, SeqHash* h);
  // AdvanceLocked by whoever can take the pass, until no stashed chunk
  // continues it or another thread holds it.
  void DrainPass(const BlobDescriptor& blob, const std::shared_ptr<SeqHash>& h);
  // A fetched chunk c of the blob, for its pass (if any): hashed now if it
  // continues the pass, stashed if it is ahead (and there is room).
  void FeedPass(const BlobDescriptor& blob, uint64_t c, const std::shared_ptr<const FetchBuf>& buf);
  // Hashes [h->next, to) of `blob` into the pass (h->mu held), from stashed
  // chunks and the cache; with `fetch`, through ReadRange (waiting for or
  // fetching what the cache lacks). *reached: the pass got to `to` (or
  // ended); without `fetch` it stops, with the pass as far as it got, at a
  // byte neither stashed nor cached. An error is ReadRange's.
  Status CatchUp(const BlobDescriptor& blob, SeqHash* h, uint64_t to, bool fetch, bool* reached);
  // Feeds a read to the blob's in-order pass `h` (null: the blob's, if
  // any; a read at offset 0 starts one) if it continues it; sets *verified
  // (if given) when the pass is over and the digest matched. kCorrupt once
  // the pass is over and the digest did not match.
  Status TrackSequential(const BlobDescriptor& blob, std::shared_ptr<SeqHash> h, uint64_t offset,
                         std::span<const uint8_t> bytes, bool* verified);
  // Verifies the whole blob (FetchWhole) unless it is; one caller per blob
  // does it, the others wait for its answer, all within wait_timeout.
  Status VerifyWhole(const BlobDescriptor& blob);
  Status CheckNotBad(const BlobDescriptor& blob);
  // Verified, by this object's memory or the cache's record.
  bool KnownVerified(const BlobDescriptor& blob);
  void NoteVerified(const std::string& digest);
  Status FinishVerification(const BlobDescriptor& blob, const std::string& actual,
                            const std::string& chunk_chain);
  void Count(const std::string& digest, uint64_t hits, uint64_t misses, uint64_t requests,
             uint64_t bytes);
  void CountHashing(const std::string& digest, uint64_t hashed, uint64_t reread);
  Status FetchWholeVerified(const BlobDescriptor& blob, const Sink& sink,
                            std::chrono::steady_clock::time_point deadline);
  // Queues a background verification if the blob is complete and unverified.
  void MaybeVerifyComplete(const BlobDescriptor& blob);
  void VerifierLoop();
  void VerifyFromCache(const BlobDescriptor& blob);

  ChunkCache* const cache_;
  BlobSource* const upstream_;
  const CachedSourceOptions options_;
  // Chunk buffers for fetches, recycled: fresh memory per fetch costs page
  // faults and zeroing that showed up in cold-read profiles. One pool per
  // process, so that the idle buffers it keeps resident are bounded once.
  static std::shared_ptr<BufferPool> SharedBufferPool();
  std::shared_ptr<BufferPool> buffers_;

  std::mutex flights_mu_;  // guards flights_ and readahead_; never held across I/O
  std::map<std::pair<std::string, uint64_t>, std::shared_ptr<Flight>> flights_;
  std::map<std::string, Readahead> readahead_;
  // Chunks a small random read has fetched a part of (first touch done).
  std::map<std::string, std::set<uint64_t>> touched_;
  size_t touched_count_ = 0;
  // Bumped (under flights_mu_) whenever a fetch unregisters its flights.
  std::atomic<uint64_t> completed_gen_{0};

  // Whole-blob verifications for reads of a last chunk (single flight).
  std::map<std::string, std::shared_ptr<Flight>> whole_flights_;  // guarded by flights_mu_

  std::mutex seq_mu_;  // guards seq_ (the map); each SeqHash has its own mutex
  std::map<std::string, std::shared_ptr<SeqHash>> seq_;
  std::atomic<uint64_t> seq_tick_{0};
  std::atomic<uint64_t> stashed_bytes_{0};  // fetched chunks kept for passes (pass_stash_bytes)

  std::mutex verified_mu_;  // guards verified_
  std::set<std::string> verified_;  // blobs known verified (saves a query per read)

  mutable std::mutex counters_mu_;
  std::map<std::string, BlobCounters> counters_;

  std::mutex verify_mu_;  // guards the verifier's queue and state
  std::condition_variable verify_cv_;
  std::deque<BlobDescriptor> verify_queue_;
  std::set<std::string> verify_queued_;  // digests queued or being verified
  bool verify_stop_ = false;
  std::thread verifier_;  // started on first use
};

}  // namespace regfs

#endif  // REGFS_CACHE_CACHED_BLOB_SOURCE_H_
