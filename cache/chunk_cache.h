// ChunkCache: the store behind the chunk cache. Compressed blob bytes are
// kept as fixed-size chunks keyed by (blob digest, chunk index); layer indexes
// and manifests are keyed by digest. Keys are digests only, so a layer shared
// by many images is stored once and never goes stale. One sqlite database in
// WAL mode (<dir>/cache.db) holds the metadata (which chunks are present,
// their checksums, access times) and the small keyed tables; chunk bytes live
// in one sparse file per blob under <dir>/chunks (ChunkFiles), written once,
// outside the journal. Several processes may share one cache directory.
//
// Integrity: every chunk carries a checksum (BlockChecksum, CRC-32C based)
// of each of its 32 KiB blocks,
// checked on every read; a chunk that fails is deleted and reported as a miss,
// never served. Blob-level sha256 verification happens in CachedBlobSource,
// which records each verified blob's chunk chain here (SetVerified) so that a
// later refetch of an evicted chunk is verified too.
//
// Limits: chunk bytes are capped (max_size); room is made before each write
// by evicting least-recently-used chunks, skipping chunks pinned by in-flight
// reads. Access times are kept in memory and written in batches (on each
// write, every touch_flush_interval by a background thread, and on close), so
// a hit never waits for a write lock.
//
// Failure: if the directory or database cannot be written (read-only dir, full
// disk, unreadable database), the cache degrades instead of failing: lookups
// miss, stores are skipped, and a warning is logged (rate-limited). Open()
// fails only on invalid options or a database created by a newer schema.
//
// Thread-safe: reads use a pool of sqlite connections (one per concurrent
// reader, never shared), writes go through one writer connection.
#ifndef REGFS_CACHE_CHUNK_CACHE_H_
#define REGFS_CACHE_CHUNK_CACHE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/chunk_files.h"
#include "reader/base/blob_source.h"
#include "reader/base/status.h"

namespace regfs {

inline constexpr uint64_t kDefaultCacheMaxSize = 10ull << 30;  // 10 GiB
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;        // 1 MiB
inline constexpr uint32_t kChunkCrcBlock = 32u << 10;          // checksum granularity
inline constexpr int kPruneUnusedDays = 30;                     // see ChunkCache::Prune

// $XDG_CACHE_HOME/regfs (or ~/.cache/regfs); /var/cache/regfs for root.
std::string DefaultCacheDir();

struct CacheOptions {
  std::string dir;                          // required; created (0700) if missing
  uint64_t max_size = kDefaultCacheMaxSize;  // cap on chunk bytes
  // Only for a new database; >= 4096 and a multiple of 64 (chunk chains are
  // SHA-256 states at chunk boundaries, which must be block boundaries).
  uint32_t chunk_size = kDefaultChunkSize;
  int busy_timeout_ms = 30000;               // waiting for another process's write lock
  std::chrono::milliseconds touch_flush_interval{2000};
  // Test hooks, to emulate a full disk: PRAGMA max_page_count on the writer,
  // and a cap on the chunk bytes this object writes (then ENOSPC).
  uint32_t max_page_count = 0;
  uint64_t max_chunk_bytes_written = 0;
  // max_size caps everything the cache keeps on disk: chunk files and the
  // database files. Test hook: false caps chunk bytes alone, as tests of
  // LRU order with a cap of a few chunks need.
  bool cap_counts_database = true;
  // Test hook: called by ReadChunk just before it reads the chunk file.
  std::function<void()> before_chunk_file_read;
};

// What the cache holds of one blob.
struct BlobCacheState {
  bool known = false;             // the blob has a row (some chunk was ever stored)
  uint64_t size = 0;
  uint64_t chunk_count = 0;       // ceil(size / chunk_size)
  uint64_t chunks_present = 0;
  bool verified = false;          // digest checked; chunk chain recorded
  bool complete() const { return known && chunks_present == chunk_count; }
};

struct CacheStats {
  uint64_t bytes = 0;           // chunk bytes stored
  uint64_t database_bytes = 0;  // disk besides chunks: cache.db, WAL, shm, directories
  uint64_t chunks = 0;
  uint64_t blobs = 0;           // blobs with at least one chunk
  uint64_t complete_blobs = 0;
  uint64_t layer_indexes = 0;
  uint64_t manifests = 0;
  uint64_t max_size = 0;
  uint32_t chunk_size = 0;
  // This process (this ChunkCache object).
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evicted_chunks = 0;
  // The last process that used the cache and closed it (persisted).
  uint64_t last_run_hits = 0;
  uint64_t last_run_misses = 0;
  double last_run_hit_ratio() const {
    uint64_t n = last_run_hits + last_run_misses;
    return n ? static_cast<double>(last_run_hits) / static_cast<double>(n) : 0.0;
  }
};

struct StoredManifest {
  std::string media_type;
  std::string bytes;
};

class ChunkCache {
 public:
  static Result<std::unique_ptr<ChunkCache>> Open(const CacheOptions& options);
  ~ChunkCache();  // flushes access times, records this run's hit ratio
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  uint32_t chunk_size() const { return chunk_size_; }
  uint64_t max_size() const { return max_size_.load(); }
  void set_max_size(uint64_t bytes) { max_size_ = bytes; }
  // False once the cache is degraded (cannot be written); it then never hits.
  bool writable() const { return writable_.load(); }
  const std::string& path() const { return db_path_; }
  // The file holding a blob's chunk bytes (for diagnostics and tests).
  Result<std::string> ChunkFilePath(std::string_view digest) const;

  // Reads bytes [offset, offset + out.size()) of chunk `index` of blob
  // `digest` into `out`. true: hit. false: absent, or failed its checksum
  // (then it has been dropped). An error means the cache itself failed; the
  // caller should treat it as a miss.
  // `count_access` false: an internal read (background verification) that
  // neither counts as a hit or miss nor refreshes the chunk's LRU position.
  Result<bool> ReadChunk(std::string_view digest, uint64_t index, uint32_t offset,
                         std::span<uint8_t> out, bool count_access = true);
  // Which chunks in [first, first + count) are present.
  Result<std::vector<bool>> PresentChunks(std::string_view digest, uint64_t first,
                                          uint64_t count);

  // Stores whole chunks first_index, first_index+1, ... from `data` (each
  // chunk_size bytes except a blob's last). Chunks already present are kept.
  // Makes room first; chunks that do not fit under the cap are not stored,
  // nor are chunks of a blob marked bad (MarkBad).
  Status PutChunks(const BlobDescriptor& blob, uint64_t first_index,
                   std::span<const uint8_t> data);
  // The same, with each consecutive chunk in a buffer of its own.
  Status PutChunks(const BlobDescriptor& blob, uint64_t first_index,
                   std::span<const std::span<const uint8_t>> chunks);
  // Deletes every chunk of a blob (and forgets its verification).
  Status DropBlob(std::string_view digest);
  // DropBlob, and remembers (persisted, for later processes too) that the
  // blob's bytes did not match its digest (`actual` is what they hashed to),
  // until SetVerified clears the mark. Remembered in memory even when the
  // cache cannot be written. Marks are loaded at Open: a mark made by another
  // process after that is seen by this one only at its next Open.
  Status MarkBad(std::string_view digest, std::string_view actual);
  bool IsBad(std::string_view digest, std::string* actual = nullptr);

  // The chunk chain of a verified blob: 32 bytes per chunk, in chunk order,
  // the SHA-256 state (Sha256Chain::State) after each chunk but the last,
  // then the blob's raw digest; nullopt if the blob was never verified.
  // Written by CachedBlobSource; opaque here but for its length.
  Result<std::optional<std::string>> GetChunkChain(std::string_view digest);
  Status SetVerified(const BlobDescriptor& blob, std::string_view chunk_chain);
  Result<BlobCacheState> GetBlobState(std::string_view digest);

  // Layer indexes: opaque bytes keyed by (layer digest, format tag such as
  // "tar-index/v1"). Manifests (and resolutions, under keys of the caller's
  // choosing): exact bytes and media type by digest. Put replaces; Get
  // refreshes the row's access time. They count against max_size (they live
  // in the database) and may take up to a quarter of it; beyond that the
  // least recently used rows of either kind are evicted when one is put.
  Status PutLayerIndex(std::string_view layer_digest, std::string_view format,
                       std::string_view bytes);
  Result<std::optional<std::string>> GetLayerIndex(std::string_view layer_digest,
                                                   std::string_view format);
  Status PutManifest(std::string_view digest, std::string_view media_type,
                     std::string_view bytes);
  Result<std::optional<StoredManifest>> GetManifest(std::string_view digest);

  Result<CacheStats> Stats();
  // sqlite read connections this object has opened (each costs a database
  // open); for tests.
  uint64_t read_connections_opened() const { return read_conns_opened_.load(); }
  // Brings everything the cache keeps on disk (database files and chunk
  // files) under max_size, and forgets what nothing references:
  //  - layer indexes of blobs with no chunk cached, unused (not looked up)
  //    for kPruneUnusedDays; manifests and resolutions unused that long;
  //    marks of blobs that failed their digest check that long ago;
  //  - index and manifest rows beyond a quarter of max_size, least recently
  //    used first;
  //  - then chunks, least recently used first (pinned ones stay), and the
  //    chunk files of blobs left with no chunk;
  //  - the chunk chains of blobs with no chunk and no layer index whose
  //    chunks were last stored (or which were verified) kPruneUnusedDays
  //    ago, and then such blob rows (except the one with the largest id:
  //    sqlite would reuse its id, which another process may remember);
  //  - the database file shrinks (incremental vacuum; a database made
  //    before this is VACUUMed once) and the WAL is truncated.
  // A process that remembers the id of a blob row deleted here misses on
  // that blob until it restarts (never serves wrong bytes: a missing row is
  // a miss).
  // With keep_indexes, index and manifest rows are not evicted for space
  // (step two): only chunks go, so the next mount of a pruned image lists
  // at once and fetches its bytes again (what a benchmark of "index present,
  // chunks gone" wants).
  Status Prune(uint64_t max_size, bool keep_indexes = false);
  // Writes pending access times now.
  Status FlushTouches();
  // PRAGMA integrity_check: "ok" or the problems found.
  Result<std::string> IntegrityCheck();

  // Chunks pinned by a live Pin are never evicted by this process.
  class Pin {
   public:
    Pin(ChunkCache* cache, std::string digest, uint64_t first, uint64_t last);
    ~Pin();
    Pin(const Pin&) = delete;
    Pin& operator=(const Pin&) = delete;

   private:
    ChunkCache* cache_;
    std::string digest_;
    uint64_t first_, last_;
  };

 private:
  struct ReadConn;
  struct WriteConn;
  struct Victim {  // an evicted chunk whose bytes are freed after commit
    std::string digest;
    uint64_t index;
    uint64_t size;
  };
  class ReadConnLease;

  explicit ChunkCache(const CacheOptions& options);
  Status Init();
  Status Migrate();
  void Degrade(const Status& why);
  void WarnWrite(const Status& why);
  Result<std::unique_ptr<ReadConn>> NewReadConn();
  Result<ReadConnLease> AcquireRead();
  void ReleaseRead(std::unique_ptr<ReadConn> conn);
  // Blob row id, cached; 0 if the blob has no row.
  Result<int64_t> BlobId(ReadConn& conn, std::string_view digest);
  void Touch(int64_t chunk_id);
  // Writer-side helpers: caller holds write_mu_ and an open transaction.
  Status FlushTouchesLocked();
  // Evicts chunks until `needed` more chunk bytes fit under max_size less
  // the disk the database takes (DiskBytesBesideChunks).
  Status MakeRoomLocked(uint64_t needed, uint64_t max_size, bool* fits,
                        std::vector<Victim>* victims);
  uint64_t DiskBytesBesideChunks() const;  // 0 unless cap_counts_database
  uint64_t DatabaseDiskBytes() const;
  // Deletes least-recently-used index and manifest rows until they take at
  // most `limit` bytes; sets *evicted if any went.
  Status EvictKeyedRowsLocked(uint64_t limit, bool* evicted);
  // Hands free pages back to the file system and truncates the WAL.
  Status ShrinkDatabaseLocked();
  // Writes now as the access time of a keyed row (`sql` binds time, key, tag).
  void TouchKeyedRow(const char* sql, std::string_view key, std::string_view tag);
  // Frees the bytes of chunks whose rows are gone (committed).
  void FreeVictims(const std::vector<Victim>& victims);
  Status DeleteChunkLocked(int64_t chunk_id);
  bool IsPinned(const std::string& digest, uint64_t index);
  Status DropChunk(int64_t chunk_id, std::string_view digest, uint64_t index, uint64_t size);
  void FlusherLoop();
  Status PersistRunStats();
  // One row (key, tag, bytes, now) of a small keyed table, replacing.
  Status PutKeyedRow(const char* sql, std::string_view key, std::string_view tag,
                     std::string_view bytes);

  const CacheOptions options_;
  std::string db_path_;
  uint32_t chunk_size_ = kDefaultChunkSize;
  std::atomic<uint64_t> max_size_;
  std::atomic<bool> writable_{true};

  std::mutex pool_mu_;  // guards read_pool_ only; never held during a query
  std::vector<std::unique_ptr<ReadConn>> read_pool_;
  std::atomic<uint64_t> read_conns_opened_{0};

  std::mutex write_mu_;  // serialises use of writer_; lock order: write_mu_ -> touch_mu_
  std::unique_ptr<WriteConn> writer_;
  std::unique_ptr<ChunkFiles> files_;

  std::shared_mutex ids_mu_;
  std::unordered_map<std::string, int64_t> blob_ids_;

  std::mutex touch_mu_;
  std::unordered_map<int64_t, int64_t> touches_;  // chunk id -> access time (us)
  int64_t last_time_us_ = 0;

  std::shared_mutex bad_mu_;
  std::unordered_map<std::string, std::string> bad_;  // digest -> what it hashed to
  std::atomic<bool> any_bad_{false};  // bad_ is not empty (skips the lock on reads)

  std::mutex pin_mu_;
  std::map<std::pair<std::string, uint64_t>, int> pins_;

  std::mutex warn_mu_;
  std::chrono::steady_clock::time_point last_warn_{};

  std::atomic<uint64_t> hits_{0}, misses_{0}, evicted_{0};

  std::mutex flusher_mu_;
  std::condition_variable flusher_cv_;
  bool stopping_ = false;
  std::thread flusher_;
};

}  // namespace regfs

#endif  // REGFS_CACHE_CHUNK_CACHE_H_
