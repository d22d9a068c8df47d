#include "cache/chunk_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "cache/crc32c.h"
#include "cache/sqlite.h"
#include "reader/base/digest.h"
#include "reader/base/log.h"

namespace regfs {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::Transaction;

namespace {

constexpr int kSchemaVersion = 4;
constexpr int kPageSize = 65536;
constexpr size_t kMaxPendingTouches = 20000;
// Layer indexes and manifests may take up to this share of the cap; beyond
// it the least recently used go.
constexpr uint64_t kKeyedShareDivisor = 4;
// Prune forgets what has not been used for this long (see Prune).
constexpr int64_t kPruneUnusedMicros = int64_t{kPruneUnusedDays} * 86400 * 1000000;

// Migration i takes the schema from version i to i + 1. Never edit a shipped
// entry; append a new one.
const char* const kMigrations[] = {
    // 0 -> 1
    R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE blobs(
  id INTEGER PRIMARY KEY,
  digest TEXT NOT NULL UNIQUE,
  size INTEGER NOT NULL,
  present INTEGER NOT NULL DEFAULT 0,   -- chunks stored (maintained by triggers)
  chunk_sha256 BLOB                     -- 32 bytes per chunk once verified
);
CREATE TABLE chunks(
  id INTEGER PRIMARY KEY,
  blob_id INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  size INTEGER NOT NULL,
  crcs BLOB NOT NULL,                   -- BlockChecksum per 32 KiB block, little endian
  atime INTEGER NOT NULL,               -- microseconds; LRU order
  UNIQUE(blob_id, idx)
);
CREATE INDEX chunks_lru ON chunks(atime, id);
-- Bytes live apart from metadata so that an access-time update never rewrites them.
CREATE TABLE chunk_data(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE totals(id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL,
                    chunks INTEGER NOT NULL);
INSERT INTO totals VALUES (0, 0, 0);
CREATE TRIGGER chunks_ins AFTER INSERT ON chunks BEGIN
  UPDATE totals SET bytes = bytes + NEW.size, chunks = chunks + 1;
  UPDATE blobs SET present = present + 1 WHERE id = NEW.blob_id;
END;
CREATE TRIGGER chunks_del AFTER DELETE ON chunks BEGIN
  UPDATE totals SET bytes = bytes - OLD.size, chunks = chunks - 1;
  UPDATE blobs SET present = present - 1 WHERE id = OLD.blob_id;
  DELETE FROM chunk_data WHERE id = OLD.id;
END;
CREATE TABLE layer_indexes(digest TEXT NOT NULL, format TEXT NOT NULL, data BLOB NOT NULL,
                           created INTEGER NOT NULL, PRIMARY KEY (digest, format));
CREATE TABLE manifests(digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, data BLOB NOT NULL,
                       created INTEGER NOT NULL);
)sql",
    // 1 -> 2: chunk bytes move out of the database into per-blob files
    // (ChunkFiles); the chunks stored so far are forgotten and refetched.
    R"sql(
DROP TRIGGER chunks_del;
DELETE FROM chunks;
UPDATE totals SET bytes = 0, chunks = 0;
UPDATE blobs SET present = 0;
DROP TABLE chunk_data;
CREATE TRIGGER chunks_del AFTER DELETE ON chunks BEGIN
  UPDATE totals SET bytes = bytes - OLD.size, chunks = chunks - 1;
  UPDATE blobs SET present = present - 1 WHERE id = OLD.blob_id;
END;
)sql",
    // 2 -> 3: blobs that failed their digest check (served as errors until a
    // fetch verifies them), and access times of layer indexes and manifests
    // so that they can be evicted least recently used first.
    R"sql(
CREATE TABLE bad_blobs(digest TEXT PRIMARY KEY, actual TEXT NOT NULL, marked INTEGER NOT NULL);
ALTER TABLE layer_indexes ADD COLUMN atime INTEGER NOT NULL DEFAULT 0;
UPDATE layer_indexes SET atime = created;
ALTER TABLE manifests ADD COLUMN atime INTEGER NOT NULL DEFAULT 0;
UPDATE manifests SET atime = created;
-- When chunks were last stored or the blob verified (microseconds).
ALTER TABLE blobs ADD COLUMN atime INTEGER NOT NULL DEFAULT 0;
UPDATE blobs SET atime = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER);
)sql",
    // 3 -> 4: a verified blob's per-chunk sha256s become its chunk chain
    // (SHA-256 states at chunk boundaries, from the blob's one digest pass).
    // The old hashes cannot be converted without the bytes: those blobs are
    // verified again (their next read of a last chunk, or the background
    // check), never trusted in a format they were not written in.
    R"sql(
UPDATE blobs SET chunk_sha256 = NULL;
ALTER TABLE blobs RENAME COLUMN chunk_sha256 TO chunk_chain;
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion);

int64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string CrcsOf(std::span<const uint8_t> chunk) {
  std::string out;
  for (size_t off = 0; off < chunk.size(); off += kChunkCrcBlock) {
    size_t n = std::min<size_t>(kChunkCrcBlock, chunk.size() - off);
    uint32_t c = BlockChecksum(chunk.data() + off, n);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((c >> (8 * i)) & 0xff));
  }
  return out;
}

uint32_t CrcAt(std::span<const uint8_t> crcs, size_t block) {
  uint32_t c = 0;
  for (int i = 0; i < 4; ++i) c |= static_cast<uint32_t>(crcs[block * 4 + i]) << (8 * i);
  return c;
}

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Status ApplyPragmas(const Db& db) {
  return db.Exec(
      "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY;"
      "PRAGMA journal_size_limit=67108864;"
      // Memory-mapped reads (clamped by sqlite to its compile-time limit, 2 GB
      // on Debian): hits then copy straight from the page cache, and walking a
      // chunk's overflow pages costs no read() calls. Measured: 4 KiB hit p50
      // ~105 us without, ~13 us with (tests/bench/cache_bench).
      "PRAGMA mmap_size=1099511627776;");
}

}  // namespace

std::string DefaultCacheDir() {
  if (geteuid() == 0) return "/var/cache/regfs";
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return std::string(xdg) + "/regfs";
  const char* home = std::getenv("HOME");
  if (home && home[0]) return std::string(home) + "/.cache/regfs";
  return "/tmp/regfs-cache-" + std::to_string(geteuid());
}

struct ChunkCache::ReadConn {
  Db db;
  Stmt blob_id, chunk, present, blob_state, chunk_sha;
};

struct ChunkCache::WriteConn {
  Db db;
  Stmt insert_blob, blob_row, blob_used, chunk_exists, insert_chunk, touch, totals, lru, delete_chunk;
};

class ChunkCache::ReadConnLease {
 public:
  ReadConnLease(ChunkCache* cache, std::unique_ptr<ReadConn> conn)
      : cache_(cache), conn_(std::move(conn)) {}
  ReadConnLease(ReadConnLease&&) = default;
  ~ReadConnLease() {
    if (conn_) cache_->ReleaseRead(std::move(conn_));
  }
  ReadConn& operator*() { return *conn_; }
  ReadConn* operator->() { return conn_.get(); }

 private:
  ChunkCache* cache_;
  std::unique_ptr<ReadConn> conn_;
};

ChunkCache::ChunkCache(const CacheOptions& options)
    : options_(options), chunk_size_(options.chunk_size), max_size_(options.max_size) {}

Result<std::unique_ptr<ChunkCache>> ChunkCache::Open(const CacheOptions& options) {
  if (options.dir.empty()) return Status::InvalidArgument("cache dir is empty");
  if (options.chunk_size < 4096) return Status::InvalidArgument("chunk size below 4096");
  if (options.chunk_size % 64 != 0) {
    return Status::InvalidArgument("chunk size not a multiple of 64 (SHA-256's block)");
  }
  // Absolute, so that a daemon that later changes directory keeps its cache.
  CacheOptions opts = options;
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(opts.dir, ec);
  if (!ec) opts.dir = abs.lexically_normal().string();
  std::unique_ptr<ChunkCache> cache(new ChunkCache(opts));
  Status st = cache->Init();
  if (st.code() == Code::kUnsupported) return st;
  if (!st.ok()) {
    cache->Degrade(st);
    return cache;
  }
  cache->flusher_ = std::thread([c = cache.get()] { c->FlusherLoop(); });
  return cache;
}

ChunkCache::~ChunkCache() {
  {
    std::lock_guard<std::mutex> lock(flusher_mu_);
    stopping_ = true;
  }
  flusher_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  if (writable_) {
    Status st = FlushTouches();
    if (st.ok()) st = PersistRunStats();
    if (!st.ok()) LOG_WARN("chunk cache: closing: " + st.ToString());
  }
}

Status ChunkCache::Init() {
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  if (ec) return Status::IoError("cannot create cache dir " + options_.dir + ": " + ec.message());
  std::filesystem::permissions(options_.dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::add, ec);
  db_path_ = options_.dir + "/cache.db";
  if (access(options_.dir.c_str(), W_OK) != 0) {
    return Status::IoError("cache dir " + options_.dir + " is not writable");
  }

  auto w = std::make_unique<WriteConn>();
  ASSIGN_OR_RETURN(w->db, Db::Open(db_path_,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                       SQLITE_OPEN_NOMUTEX,
                                   options_.busy_timeout_ms));
  // page_size and auto_vacuum only take effect on a new, empty database
  // (Prune converts an older one): incremental vacuum lets the file shrink
  // when rows are evicted, so that the cap holds on disk.
  RETURN_IF_ERROR(w->db.Exec("PRAGMA page_size=" + std::to_string(kPageSize) +
                             "; PRAGMA auto_vacuum=INCREMENTAL"));
  ASSIGN_OR_RETURN(std::string mode, w->db.QueryText("PRAGMA journal_mode=WAL"));
  if (mode != "wal") return Status::IoError("cannot switch cache database to WAL (" + mode + ")");
  RETURN_IF_ERROR(ApplyPragmas(w->db));
  {
    // The WAL counts against the cap: checkpoint (and truncate) it at a
    // 64th of the cap, between 1 MiB and sqlite's default of 1000 pages.
    const uint64_t wal = std::clamp<uint64_t>(options_.max_size / 64, 16 * uint64_t{kPageSize},
                                              1000 * uint64_t{kPageSize});
    RETURN_IF_ERROR(w->db.Exec("PRAGMA wal_autocheckpoint=" + std::to_string(wal / kPageSize) +
                               "; PRAGMA journal_size_limit=" + std::to_string(wal)));
  }
  if (options_.max_page_count) {
    RETURN_IF_ERROR(w->db.Exec("PRAGMA max_page_count=" +
                               std::to_string(options_.max_page_count)));
  }
  writer_ = std::move(w);
  RETURN_IF_ERROR(Migrate());
  const std::string chunk_dir = options_.dir + "/chunks";
  std::filesystem::create_directories(chunk_dir, ec);
  if (ec) return Status::IoError("cannot create " + chunk_dir + ": " + ec.message());
  files_ = std::make_unique<ChunkFiles>(chunk_dir, options_.max_chunk_bytes_written);

  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(writer_->insert_blob,
                   Stmt::Prepare(db, "INSERT OR IGNORE INTO blobs(digest, size) VALUES (?, ?)"));
  ASSIGN_OR_RETURN(writer_->blob_row,
                   Stmt::Prepare(db, "SELECT id, size FROM blobs WHERE digest = ?"));
  ASSIGN_OR_RETURN(writer_->blob_used,
                   Stmt::Prepare(db, "UPDATE blobs SET atime = ? WHERE id = ?"));
  ASSIGN_OR_RETURN(writer_->chunk_exists,
                   Stmt::Prepare(db, "SELECT 1 FROM chunks WHERE blob_id = ? AND idx = ?"));
  ASSIGN_OR_RETURN(writer_->insert_chunk,
                   Stmt::Prepare(db,
                                 "INSERT INTO chunks(blob_id, idx, size, crcs, atime) "
                                 "VALUES (?, ?, ?, ?, ?)"));
  ASSIGN_OR_RETURN(writer_->touch, Stmt::Prepare(db, "UPDATE chunks SET atime = ? WHERE id = ?"));
  ASSIGN_OR_RETURN(writer_->totals, Stmt::Prepare(db, "SELECT bytes FROM totals"));
  ASSIGN_OR_RETURN(writer_->lru,
                   Stmt::Prepare(db,
                                 "SELECT c.id, c.idx, c.size, b.digest FROM chunks c "
                                 "JOIN blobs b ON b.id = c.blob_id ORDER BY c.atime, c.id"));
  ASSIGN_OR_RETURN(writer_->delete_chunk, Stmt::Prepare(db, "DELETE FROM chunks WHERE id = ?"));

  {
    ASSIGN_OR_RETURN(Stmt bad, Stmt::Prepare(db, "SELECT digest, actual FROM bad_blobs"));
    std::unique_lock<std::shared_mutex> lock(bad_mu_);
    while (true) {
      ASSIGN_OR_RETURN(bool row, bad.Step());
      if (!row) break;
      bad_[bad.Text(0)] = bad.Text(1);
    }
    any_bad_ = !bad_.empty();
  }

  // One reader up front proves the database can be read by a second connection.
  ASSIGN_OR_RETURN(auto r, NewReadConn());
  ReleaseRead(std::move(r));
  return Status::Ok();
}

Status ChunkCache::Migrate() {
  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
  RETURN_IF_ERROR(writer_->db.Exec("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value)"));
  ASSIGN_OR_RETURN(std::string v,
                   writer_->db.QueryText("SELECT value FROM meta WHERE key = 'schema_version'"));
  int version = v.empty() ? 0 : std::atoi(v.c_str());
  if (version > kSchemaVersion) {
    return Status::Unsupported("cache database " + db_path_ + " has schema version " +
                               std::to_string(version) + ", newer than this regfs (" +
                               std::to_string(kSchemaVersion) + ")");
  }
  for (int i = version; i < kSchemaVersion; ++i) {
    RETURN_IF_ERROR(writer_->db.Exec(kMigrations[i]).Annotate("migration " + std::to_string(i)));
  }
  ASSIGN_OR_RETURN(Stmt set, Stmt::Prepare(db,
                                           "INSERT OR REPLACE INTO meta(key, value) "
                                           "VALUES ('schema_version', ?)"));
  RETURN_IF_ERROR(set.Bind(1, int64_t{kSchemaVersion}).Run());
  ASSIGN_OR_RETURN(Stmt cs, Stmt::Prepare(db,
                                          "INSERT OR IGNORE INTO meta(key, value) "
                                          "VALUES ('chunk_size', ?)"));
  RETURN_IF_ERROR(cs.Bind(1, int64_t{options_.chunk_size}).Run());
  ASSIGN_OR_RETURN(std::string stored,
                   writer_->db.QueryText("SELECT value FROM meta WHERE key = 'chunk_size'"));
  int64_t n = std::atoll(stored.c_str());
  if (n < 4096 || n > (1 << 30) || n % 64 != 0) {
    return Status::Corrupt("bad chunk_size in cache: " + stored);
  }
  chunk_size_ = static_cast<uint32_t>(n);
  return txn.Commit();
}

void ChunkCache::Degrade(const Status& why) {
  writable_ = false;
  LOG_WARN("chunk cache " + options_.dir +
           " is unusable; reads go to the network uncached: " + why.ToString());
}

void ChunkCache::WarnWrite(const Status& why) {
  std::lock_guard<std::mutex> lock(warn_mu_);
  auto now = std::chrono::steady_clock::now();
  if (last_warn_.time_since_epoch().count() != 0 && now - last_warn_ < std::chrono::seconds(30))
    return;
  last_warn_ = now;
  LOG_WARN("chunk cache " + options_.dir +
           ": write failed; serving from the network uncached: " + why.ToString());
}

Result<std::unique_ptr<ChunkCache::ReadConn>> ChunkCache::NewReadConn() {
  auto c = std::make_unique<ReadConn>();
  ASSIGN_OR_RETURN(c->db, Db::Open(db_path_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                                   options_.busy_timeout_ms));
  RETURN_IF_ERROR(ApplyPragmas(c->db));
  RETURN_IF_ERROR(c->db.Exec("PRAGMA query_only=1"));
  ++read_conns_opened_;
  sqlite3* db = c->db.get();
  ASSIGN_OR_RETURN(c->blob_id, Stmt::Prepare(db, "SELECT id FROM blobs WHERE digest = ?"));
  ASSIGN_OR_RETURN(c->chunk, Stmt::Prepare(db,
                                           "SELECT id, size, crcs FROM chunks "
                                           "WHERE blob_id = ? AND idx = ?"));
  ASSIGN_OR_RETURN(c->present, Stmt::Prepare(db,
                                             "SELECT idx FROM chunks WHERE blob_id = ? "
                                             "AND idx >= ? AND idx < ?"));
  ASSIGN_OR_RETURN(c->blob_state,
                   Stmt::Prepare(db,
                                 "SELECT size, present, chunk_chain IS NOT NULL "
                                 "FROM blobs WHERE digest = ?"));
  ASSIGN_OR_RETURN(c->chunk_sha,
                   Stmt::Prepare(db, "SELECT chunk_chain FROM blobs WHERE digest = ?"));
  return c;
}

Result<ChunkCache::ReadConnLease> ChunkCache::AcquireRead() {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!read_pool_.empty()) {
      auto c = std::move(read_pool_.back());
      read_pool_.pop_back();
      return ReadConnLease(this, std::move(c));
    }
  }
  ASSIGN_OR_RETURN(auto c, NewReadConn());
  return ReadConnLease(this, std::move(c));
}

void ChunkCache::ReleaseRead(std::unique_ptr<ReadConn> conn) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  read_pool_.push_back(std::move(conn));
}

Result<int64_t> ChunkCache::BlobId(ReadConn& conn, std::string_view digest) {
  {
    std::shared_lock<std::shared_mutex> lock(ids_mu_);
    auto it = blob_ids_.find(std::string(digest));
    if (it != blob_ids_.end()) return it->second;
  }
  // Blob rows are never deleted, so a committed id stays valid forever.
  conn.blob_id.Bind(1, digest);
  auto row = conn.blob_id.Step();
  if (!row.ok()) return row.status();
  int64_t id = *row ? conn.blob_id.Int(0) : 0;
  conn.blob_id.Reset();
  if (id) {
    std::unique_lock<std::shared_mutex> lock(ids_mu_);
    blob_ids_.emplace(std::string(digest), id);
  }
  return id;
}

Result<bool> ChunkCache::ReadChunk(std::string_view digest, uint64_t index, uint32_t offset,
                                   std::span<uint8_t> out, bool count_access) {
  if (!writable_) {
    if (count_access) ++misses_;
    return false;
  }
  int64_t chunk_id = 0;
  uint64_t size = 0;
  uint8_t crcs[512];  // enough for 4 MiB chunks; larger ones use the heap
  std::vector<uint8_t> crc_heap;
  std::span<const uint8_t> crc_view;
  {
    // The connection is held for the row lookup only, not across the file
    // reads: a reader blocked on the disk would otherwise hold it, and the
    // next reader would open a new connection, whose first read of the
    // database file queues behind that same disk.
    ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
    ASSIGN_OR_RETURN(int64_t blob_id, BlobId(*conn, digest));
    if (!blob_id) {
      if (count_access) ++misses_;
      return false;
    }
    Stmt& q = conn->chunk;
    q.Bind(1, blob_id).Bind(2, static_cast<int64_t>(index));
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) {
      q.Reset();
      if (count_access) ++misses_;
      return false;
    }
    chunk_id = q.Int(0);
    size = static_cast<uint64_t>(q.Int(1));
    auto crc_col = q.BlobCol(2);
    if (crc_col.size() <= sizeof crcs) {
      std::memcpy(crcs, crc_col.data(), crc_col.size());
      crc_view = {crcs, crc_col.size()};
    } else {
      crc_heap.assign(crc_col.begin(), crc_col.end());
      crc_view = crc_heap;
    }
    q.Reset();
  }
  // The row is the promise; the file's bytes are checked against it. Blocks
  // wholly inside `out` are read straight into it, in one pread per run; the
  // partial blocks at the ends go through a scratch buffer.
  if (options_.before_chunk_file_read) options_.before_chunk_file_read();
  const size_t blocks = (size + kChunkCrcBlock - 1) / kChunkCrcBlock;
  bool corrupt = offset + out.size() > size || crc_view.size() != blocks * 4;
  const uint64_t base = index * chunk_size_;
  const uint64_t end = offset + out.size();
  uint64_t b = offset / kChunkCrcBlock;
  while (!corrupt && !out.empty() && b * kChunkCrcBlock < end) {
    const uint64_t bstart = b * kChunkCrcBlock;
    const uint64_t blen = std::min<uint64_t>(kChunkCrcBlock, size - bstart);
    if (bstart >= offset && bstart + blen <= end) {
      // A run of whole blocks.
      uint64_t run_end = bstart + blen;
      while (run_end < end && run_end < size &&
             run_end + std::min<uint64_t>(kChunkCrcBlock, size - run_end) <= end) {
        run_end += std::min<uint64_t>(kChunkCrcBlock, size - run_end);
      }
      uint8_t* dst = out.data() + (bstart - offset);
      ASSIGN_OR_RETURN(bool whole,
                       files_->Read(digest, base + bstart, {dst, run_end - bstart}));
      if (!whole) {
        corrupt = true;
        break;
      }
      for (uint64_t s = bstart; s < run_end; s += kChunkCrcBlock, ++b) {
        const uint64_t n = std::min<uint64_t>(kChunkCrcBlock, run_end - s);
        if (BlockChecksum(dst + (s - bstart), n) != CrcAt(crc_view, b)) corrupt = true;
      }
      continue;
    }
    thread_local std::vector<uint8_t> scratch;
    scratch.resize(kChunkCrcBlock);
    ASSIGN_OR_RETURN(bool whole, files_->Read(digest, base + bstart, {scratch.data(), blen}));
    if (!whole || BlockChecksum(scratch.data(), blen) != CrcAt(crc_view, b)) {
      corrupt = true;
      break;
    }
    const uint64_t from = std::max(bstart, uint64_t{offset});
    const uint64_t to = std::min(bstart + blen, end);
    std::memcpy(out.data() + (from - offset), scratch.data() + (from - bstart), to - from);
    ++b;
  }
  if (corrupt) {
    LOG_WARN("chunk cache: chunk " + std::to_string(index) + " of " + std::string(digest) +
             " failed its checksum; dropped and refetching");
    Status st = DropChunk(chunk_id, digest, index, size);
    if (!st.ok()) WarnWrite(st);
    if (count_access) ++misses_;
    return false;
  }
  if (count_access) {
    Touch(chunk_id);
    ++hits_;
  }
  return true;
}

Result<std::vector<bool>> ChunkCache::PresentChunks(std::string_view digest, uint64_t first,
                                                    uint64_t count) {
  std::vector<bool> present(count, false);
  if (!writable_ || count == 0) return present;
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  ASSIGN_OR_RETURN(int64_t blob_id, BlobId(*conn, digest));
  if (!blob_id) return present;
  Stmt& q = conn->present;
  q.Bind(1, blob_id).Bind(2, static_cast<int64_t>(first)).Bind(3, static_cast<int64_t>(first + count));
  while (true) {
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    present[static_cast<uint64_t>(q.Int(0)) - first] = true;
  }
  q.Reset();
  return present;
}

void ChunkCache::Touch(int64_t chunk_id) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(touch_mu_);
    last_time_us_ = std::max(WallMicros(), last_time_us_ + 1);
    touches_[chunk_id] = last_time_us_;
    wake = touches_.size() >= kMaxPendingTouches;
  }
  if (wake) flusher_cv_.notify_all();
}

Status ChunkCache::FlushTouchesLocked() {
  std::unordered_map<int64_t, int64_t> batch;
  {
    std::lock_guard<std::mutex> lock(touch_mu_);
    batch.swap(touches_);
  }
  for (const auto& [id, t] : batch) {
    RETURN_IF_ERROR(writer_->touch.Bind(1, t).Bind(2, id).Run());
  }
  return Status::Ok();
}

Status ChunkCache::FlushTouches() {
  if (!writable_) return Status::Ok();
  std::lock_guard<std::mutex> lock(write_mu_);
  {
    std::lock_guard<std::mutex> tl(touch_mu_);
    if (touches_.empty()) return Status::Ok();
  }
  ASSIGN_OR_RETURN(Transaction txn,
                   Transaction::Begin(writer_->db.get(), Transaction::Kind::kImmediate));
  RETURN_IF_ERROR(FlushTouchesLocked());
  return txn.Commit();
}

void ChunkCache::FlusherLoop() {
  std::unique_lock<std::mutex> lock(flusher_mu_);
  while (!stopping_) {
    flusher_cv_.wait_for(lock, options_.touch_flush_interval);
    if (stopping_) break;
    lock.unlock();
    Status st = FlushTouches();
    if (!st.ok()) WarnWrite(st);
    lock.lock();
  }
}

bool ChunkCache::IsPinned(const std::string& digest, uint64_t index) {
  std::lock_guard<std::mutex> lock(pin_mu_);
  return pins_.count({digest, index}) > 0;
}

ChunkCache::Pin::Pin(ChunkCache* cache, std::string digest, uint64_t first, uint64_t last)
    : cache_(cache), digest_(std::move(digest)), first_(first), last_(last) {
  std::lock_guard<std::mutex> lock(cache_->pin_mu_);
  for (uint64_t i = first_; i <= last_; ++i) ++cache_->pins_[{digest_, i}];
}

ChunkCache::Pin::~Pin() {
  std::lock_guard<std::mutex> lock(cache_->pin_mu_);
  for (uint64_t i = first_; i <= last_; ++i) {
    auto it = cache_->pins_.find({digest_, i});
    if (it != cache_->pins_.end() && --it->second == 0) cache_->pins_.erase(it);
  }
}

uint64_t ChunkCache::DiskBytesBesideChunks() const {
  if (!options_.cap_counts_database) return 0;
  return DatabaseDiskBytes();
}

uint64_t ChunkCache::DatabaseDiskBytes() const {
  // What du counts: allocated blocks of the database files and of the
  // directories. (Chunk files hold what `totals` counts, rounded up to a
  // block for a blob's short last chunk.)
  uint64_t total = 0;
  for (const std::string& path : {db_path_, db_path_ + "-wal", db_path_ + "-shm", options_.dir,
                                  options_.dir + "/chunks"}) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

Status ChunkCache::MakeRoomLocked(uint64_t needed, uint64_t max_size, bool* fits,
                                  std::vector<Victim>* victims) {
  *fits = false;
  const uint64_t beside = DiskBytesBesideChunks();
  max_size = max_size > beside ? max_size - beside : 0;
  if (needed > max_size) return Status::Ok();
  WriteConn& w = *writer_;
  ASSIGN_OR_RETURN(bool row, w.totals.Step());
  uint64_t bytes = row ? static_cast<uint64_t>(w.totals.Int(0)) : 0;
  w.totals.Reset();
  if (bytes + needed <= max_size) {
    *fits = true;
    return Status::Ok();
  }
  uint64_t to_free = bytes + needed - max_size;
  std::vector<int64_t> ids;
  uint64_t freed = 0;
  while (freed < to_free) {
    auto r = w.lru.Step();
    if (!r.ok()) return r.status();
    if (!*r) break;
    std::string digest = w.lru.Text(3);
    const auto index = static_cast<uint64_t>(w.lru.Int(1));
    if (IsPinned(digest, index)) continue;
    const auto size = static_cast<uint64_t>(w.lru.Int(2));
    ids.push_back(w.lru.Int(0));
    victims->push_back(Victim{std::move(digest), index, size});
    freed += size;
  }
  w.lru.Reset();
  for (int64_t id : ids) RETURN_IF_ERROR(w.delete_chunk.Bind(1, id).Run());
  evicted_ += ids.size();
  *fits = freed >= to_free;
  return Status::Ok();
}

Status ChunkCache::PutChunks(const BlobDescriptor& blob, uint64_t first_index,
                             std::span<const uint8_t> data) {
  const uint64_t cs = chunk_size_;
  std::vector<std::span<const uint8_t>> chunks;
  for (uint64_t off = 0; off < data.size(); off += cs) {
    chunks.push_back(data.subspan(off, std::min<uint64_t>(cs, data.size() - off)));
  }
  return PutChunks(blob, first_index, chunks);
}

Status ChunkCache::PutChunks(const BlobDescriptor& blob, uint64_t first_index,
                             std::span<const std::span<const uint8_t>> chunks) {
  if (!writable_) return Status::IoError("chunk cache is not writable");
  const uint64_t cs = chunk_size_;
  const uint64_t n = chunks.size();
  bool whole = n > 0;
  for (uint64_t i = 0; whole && i < n; ++i) {
    const uint64_t start = (first_index + i) * cs;
    whole = start + chunks[i].size() == std::min(start + cs, blob.size) && start < blob.size;
  }
  if (!whole) {
    return Status::InvalidArgument("PutChunks: data is not whole chunks of " + blob.digest);
  }
  std::vector<std::string> crcs(n);
  for (uint64_t i = 0; i < n; ++i) crcs[i] = CrcsOf(chunks[i]);

  std::lock_guard<std::mutex> lock(write_mu_);
  // A fetch that was under way when the blob failed its digest check stores
  // nothing (MarkBad deletes and marks under write_mu_).
  if (IsBad(blob.digest)) return Status::Ok();
  std::vector<Victim> victims;
  Status write_error;
  bool committed = false;
  Status st = [&]() -> Status {
    WriteConn& w = *writer_;
    ASSIGN_OR_RETURN(Transaction txn,
                     Transaction::Begin(w.db.get(), Transaction::Kind::kImmediate));
    RETURN_IF_ERROR(FlushTouchesLocked());
    RETURN_IF_ERROR(w.insert_blob.Bind(1, blob.digest).Bind(2, static_cast<int64_t>(blob.size)).Run());
    w.blob_row.Bind(1, blob.digest);
    ASSIGN_OR_RETURN(bool row, w.blob_row.Step());
    if (!row) {
      w.blob_row.Reset();
      return Status::IoError("blob row vanished");
    }
    const int64_t blob_id = w.blob_row.Int(0);
    const uint64_t stored_size = static_cast<uint64_t>(w.blob_row.Int(1));
    w.blob_row.Reset();
    RETURN_IF_ERROR(w.blob_used.Bind(1, WallMicros()).Bind(2, blob_id).Run());
    if (stored_size != blob.size) {
      return Status::InvalidArgument("blob " + blob.digest + " has size " +
                                     std::to_string(stored_size) + " in the cache, not " +
                                     std::to_string(blob.size));
    }
    const uint64_t max = max_size_.load();
    for (uint64_t i = 0; i < n; ++i) {
      const int64_t idx = static_cast<int64_t>(first_index + i);
      w.chunk_exists.Bind(1, blob_id).Bind(2, idx);
      ASSIGN_OR_RETURN(bool exists, w.chunk_exists.Step());
      w.chunk_exists.Reset();
      if (exists) continue;
      std::span<const uint8_t> bytes = chunks[i];
      bool fits = false;
      RETURN_IF_ERROR(MakeRoomLocked(bytes.size(), max, &fits, &victims));
      if (!fits) break;
      // Bytes first, then the row that vouches for them. A failed write (full
      // disk) keeps the chunks stored so far.
      write_error = files_->Write(blob.digest, static_cast<uint64_t>(idx) * cs, bytes);
      if (!write_error.ok()) break;
      // A victim of this call with the same index (evicted for an earlier
      // chunk, absent when its own turn came) was just stored again: its
      // new bytes must not be punched after the commit. One evicted after
      // this point (for a later chunk) is a victim again and stays listed.
      std::erase_if(victims, [&](const Victim& v) {
        return v.index == static_cast<uint64_t>(idx) && v.digest == blob.digest;
      });
      int64_t now;
      {
        std::lock_guard<std::mutex> tl(touch_mu_);
        last_time_us_ = std::max(WallMicros(), last_time_us_ + 1);
        now = last_time_us_;
      }
      RETURN_IF_ERROR(w.insert_chunk.Bind(1, blob_id)
                          .Bind(2, idx)
                          .Bind(3, static_cast<int64_t>(bytes.size()))
                          .BindBlob(4, AsBytes(crcs[i]))
                          .Bind(5, now)
                          .Run());
    }
    RETURN_IF_ERROR(txn.Commit());
    committed = true;
    return write_error;
  }();
  // Victims' rows are gone only if the transaction committed.
  if (committed) FreeVictims(victims);
  if (!st.ok() && st.code() != Code::kInvalidArgument) WarnWrite(st);
  return st;
}

void ChunkCache::FreeVictims(const std::vector<Victim>& victims) {
  for (const Victim& v : victims) {
    Status st = files_->Punch(v.digest, v.index * chunk_size_, v.size);
    if (!st.ok()) LOG_DEBUG("chunk cache: " + st.ToString());
  }
}

Result<std::string> ChunkCache::ChunkFilePath(std::string_view digest) const {
  if (!files_) return Status::IoError("chunk cache is not open");
  return files_->PathOf(digest);
}

Status ChunkCache::DropChunk(int64_t chunk_id, std::string_view digest, uint64_t index,
                             uint64_t size) {
  if (!writable_) return Status::Ok();
  std::lock_guard<std::mutex> lock(write_mu_);
  bool deleted = false;
  {
    ASSIGN_OR_RETURN(Transaction txn,
                     Transaction::Begin(writer_->db.get(), Transaction::Kind::kImmediate));
    RETURN_IF_ERROR(writer_->delete_chunk.Bind(1, chunk_id).Run());
    // The row may be gone already (evicted, and the chunk perhaps stored
    // again under a new row): then its bytes are not this row's to free.
    deleted = sqlite3_changes(writer_->db.get()) > 0;
    RETURN_IF_ERROR(txn.Commit());
  }
  if (deleted) FreeVictims({Victim{std::string(digest), index, size}});
  return Status::Ok();
}

Status ChunkCache::DropBlob(std::string_view digest) {
  if (!writable_) return Status::Ok();
  std::lock_guard<std::mutex> lock(write_mu_);
  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
  ASSIGN_OR_RETURN(Stmt del, Stmt::Prepare(db,
                                           "DELETE FROM chunks WHERE blob_id = "
                                           "(SELECT id FROM blobs WHERE digest = ?)"));
  RETURN_IF_ERROR(del.Bind(1, digest).Run());
  ASSIGN_OR_RETURN(Stmt unverify,
                   Stmt::Prepare(db, "UPDATE blobs SET chunk_chain = NULL WHERE digest = ?"));
  RETURN_IF_ERROR(unverify.Bind(1, digest).Run());
  RETURN_IF_ERROR(txn.Commit());
  return files_->Clear(digest);
}

Status ChunkCache::MarkBad(std::string_view digest, std::string_view actual) {
  // The mark becomes visible (to readers, and to PutChunks, which checks it
  // under write_mu_) once the chunks are gone, so that a reader that sees it
  // also sees them dropped, and no fetch stores chunks after the drop.
  auto mark = [&] {
    std::unique_lock<std::shared_mutex> lock(bad_mu_);
    bad_[std::string(digest)] = std::string(actual);
    any_bad_ = true;
  };
  if (!writable_) {
    mark();
    return Status::Ok();
  }
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    Status st = [&]() -> Status {
      sqlite3* db = writer_->db.get();
      ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
      ASSIGN_OR_RETURN(Stmt del, Stmt::Prepare(db,
                                               "DELETE FROM chunks WHERE blob_id = "
                                               "(SELECT id FROM blobs WHERE digest = ?)"));
      RETURN_IF_ERROR(del.Bind(1, digest).Run());
      ASSIGN_OR_RETURN(Stmt unverify, Stmt::Prepare(db,
                                                    "UPDATE blobs SET chunk_chain = NULL "
                                                    "WHERE digest = ?"));
      RETURN_IF_ERROR(unverify.Bind(1, digest).Run());
      ASSIGN_OR_RETURN(Stmt bad, Stmt::Prepare(db,
                                               "INSERT OR REPLACE INTO bad_blobs(digest, "
                                               "actual, marked) VALUES (?, ?, ?)"));
      RETURN_IF_ERROR(bad.Bind(1, digest).Bind(2, actual).Bind(3, WallMicros()).Run());
      return txn.Commit();
    }();
    mark();  // in memory even if the database could not be written
    RETURN_IF_ERROR(st);
  }
  return files_->Clear(digest);
}

bool ChunkCache::IsBad(std::string_view digest, std::string* actual) {
  if (!any_bad_.load(std::memory_order_relaxed)) return false;
  std::shared_lock<std::shared_mutex> lock(bad_mu_);
  auto it = bad_.find(std::string(digest));
  if (it == bad_.end()) return false;
  if (actual) *actual = it->second;
  return true;
}

Result<std::optional<std::string>> ChunkCache::GetChunkChain(std::string_view digest) {
  if (!writable_) return std::optional<std::string>();
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  Stmt& q = conn->chunk_sha;
  q.Bind(1, digest);
  ASSIGN_OR_RETURN(bool row, q.Step());
  std::optional<std::string> out;
  if (row && !q.IsNull(0)) {
    auto b = q.BlobCol(0);
    out.emplace(reinterpret_cast<const char*>(b.data()), b.size());
  }
  q.Reset();
  return out;
}

Status ChunkCache::SetVerified(const BlobDescriptor& blob, std::string_view chunk_chain) {
  if (!writable_) return Status::IoError("chunk cache is not writable");
  const uint64_t chunks = (blob.size + chunk_size_ - 1) / chunk_size_;
  if (chunk_chain.size() != chunks * 32) {
    return Status::InvalidArgument("SetVerified: chunk chain of the wrong length");
  }
  {
    std::unique_lock<std::shared_mutex> lock(bad_mu_);
    bad_.erase(blob.digest);
  }
  Status st = [&]() -> Status {
    std::lock_guard<std::mutex> lock(write_mu_);
    WriteConn& w = *writer_;
    ASSIGN_OR_RETURN(Transaction txn,
                     Transaction::Begin(w.db.get(), Transaction::Kind::kImmediate));
    RETURN_IF_ERROR(w.insert_blob.Bind(1, blob.digest).Bind(2, static_cast<int64_t>(blob.size)).Run());
    ASSIGN_OR_RETURN(Stmt up, Stmt::Prepare(w.db.get(),
                                            "UPDATE blobs SET chunk_chain = ?, atime = ? "
                                            "WHERE digest = ? AND size = ?"));
    RETURN_IF_ERROR(up.BindBlob(1, AsBytes(chunk_chain))
                        .Bind(2, WallMicros())
                        .Bind(3, blob.digest)
                        .Bind(4, static_cast<int64_t>(blob.size))
                        .Run());
    if (sqlite3_changes(w.db.get()) != 1) {
      return Status::InvalidArgument("blob " + blob.digest + " is cached with another size");
    }
    ASSIGN_OR_RETURN(Stmt good, Stmt::Prepare(w.db.get(), "DELETE FROM bad_blobs WHERE digest = ?"));
    RETURN_IF_ERROR(good.Bind(1, blob.digest).Run());
    return txn.Commit();
  }();
  if (!st.ok() && st.code() != Code::kInvalidArgument) WarnWrite(st);
  return st;
}

Result<BlobCacheState> ChunkCache::GetBlobState(std::string_view digest) {
  BlobCacheState s;
  if (!writable_) return s;
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  Stmt& q = conn->blob_state;
  q.Bind(1, digest);
  ASSIGN_OR_RETURN(bool row, q.Step());
  if (row) {
    s.known = true;
    s.size = static_cast<uint64_t>(q.Int(0));
    s.chunks_present = static_cast<uint64_t>(q.Int(1));
    s.verified = q.Int(2) != 0;
    s.chunk_count = (s.size + chunk_size_ - 1) / chunk_size_;
  }
  q.Reset();
  return s;
}

Status ChunkCache::PutKeyedRow(const char* sql, std::string_view key, std::string_view tag,
                               std::string_view bytes) {
  if (!writable_) return Status::IoError("chunk cache is not writable");
  std::lock_guard<std::mutex> lock(write_mu_);
  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
  ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(db, sql));
  RETURN_IF_ERROR(
      q.Bind(1, key).Bind(2, tag).BindBlob(3, AsBytes(bytes)).Bind(4, WallMicros()).Run());
  bool evicted = false;
  if (options_.cap_counts_database) {
    RETURN_IF_ERROR(EvictKeyedRowsLocked(max_size_.load() / kKeyedShareDivisor, &evicted));
  }
  RETURN_IF_ERROR(txn.Commit());
  // Give the freed pages back, so that the file shrinks with the rows.
  if (evicted) RETURN_IF_ERROR(writer_->db.Exec("PRAGMA incremental_vacuum"));
  return Status::Ok();
}

Status ChunkCache::EvictKeyedRowsLocked(uint64_t limit, bool* evicted) {
  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(Stmt total, Stmt::Prepare(db,
                                             "SELECT (SELECT coalesce(sum(length(data)), 0) "
                                             "FROM layer_indexes) + (SELECT coalesce(sum("
                                             "length(data)), 0) FROM manifests)"));
  ASSIGN_OR_RETURN(bool row, total.Step());
  uint64_t bytes = row ? static_cast<uint64_t>(total.Int(0)) : 0;
  if (bytes <= limit) return Status::Ok();
  // Least recently used first, across both tables; the most recent row
  // (the one just stored or looked up) always stays.
  ASSIGN_OR_RETURN(Stmt lru, Stmt::Prepare(db,
                                           "SELECT 0, rowid, length(data), atime FROM "
                                           "layer_indexes UNION ALL SELECT 1, rowid, "
                                           "length(data), atime FROM manifests "
                                           "ORDER BY atime DESC"));
  std::vector<std::pair<int64_t, int64_t>> victims;  // table, rowid
  uint64_t kept = 0;
  bool first = true;
  while (true) {
    ASSIGN_OR_RETURN(bool r, lru.Step());
    if (!r) break;
    const auto n = static_cast<uint64_t>(lru.Int(2));
    if (first || kept + n <= limit) {
      kept += n;
    } else {
      victims.emplace_back(lru.Int(0), lru.Int(1));
      kept = limit + 1;  // past the first row that does not fit, every older one goes
    }
    first = false;
  }
  lru.Reset();
  ASSIGN_OR_RETURN(Stmt del_index, Stmt::Prepare(db, "DELETE FROM layer_indexes WHERE rowid = ?"));
  ASSIGN_OR_RETURN(Stmt del_manifest, Stmt::Prepare(db, "DELETE FROM manifests WHERE rowid = ?"));
  for (const auto& [table, rowid] : victims) {
    RETURN_IF_ERROR((table == 0 ? del_index : del_manifest).Bind(1, rowid).Run());
  }
  *evicted = *evicted || !victims.empty();
  return Status::Ok();
}

void ChunkCache::TouchKeyedRow(const char* sql, std::string_view key, std::string_view tag) {
  // A lookup of an index or manifest is rare (one per layer or image per
  // mount): its access time is written at once.
  std::lock_guard<std::mutex> lock(write_mu_);
  Status st = [&]() -> Status {
    ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(writer_->db.get(), sql));
    q.Bind(1, WallMicros()).Bind(2, key);
    if (!tag.empty()) q.Bind(3, tag);
    return q.Run();
  }();
  if (!st.ok()) WarnWrite(st);
}

Status ChunkCache::PutLayerIndex(std::string_view layer_digest, std::string_view format,
                                 std::string_view bytes) {
  return PutKeyedRow(
      "INSERT OR REPLACE INTO layer_indexes(digest, format, data, created, atime) "
      "VALUES (?1, ?2, ?3, ?4, ?4)",
      layer_digest, format, bytes);
}

Result<std::optional<std::string>> ChunkCache::GetLayerIndex(std::string_view layer_digest,
                                                             std::string_view format) {
  if (!writable_) return std::optional<std::string>();
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(conn->db.get(),
                                         "SELECT data FROM layer_indexes "
                                         "WHERE digest = ? AND format = ?"));
  q.Bind(1, layer_digest).Bind(2, format);
  ASSIGN_OR_RETURN(bool row, q.Step());
  std::optional<std::string> out;
  if (row) {
    auto b = q.BlobCol(0);
    out.emplace(reinterpret_cast<const char*>(b.data()), b.size());
  }
  q.Reset();
  if (out) {
    TouchKeyedRow("UPDATE layer_indexes SET atime = ? WHERE digest = ? AND format = ?",
                  layer_digest, format);
  }
  return out;
}

Status ChunkCache::PutManifest(std::string_view digest, std::string_view media_type,
                               std::string_view bytes) {
  return PutKeyedRow(
      "INSERT OR REPLACE INTO manifests(digest, media_type, data, created, atime) "
      "VALUES (?1, ?2, ?3, ?4, ?4)",
      digest, media_type, bytes);
}

Result<std::optional<StoredManifest>> ChunkCache::GetManifest(std::string_view digest) {
  if (!writable_) return std::optional<StoredManifest>();
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(conn->db.get(),
                                         "SELECT media_type, data FROM manifests WHERE digest = ?"));
  q.Bind(1, digest);
  ASSIGN_OR_RETURN(bool row, q.Step());
  std::optional<StoredManifest> out;
  if (row) {
    auto b = q.BlobCol(1);
    out.emplace(StoredManifest{q.Text(0), std::string(reinterpret_cast<const char*>(b.data()),
                                                      b.size())});
  }
  q.Reset();
  if (out) TouchKeyedRow("UPDATE manifests SET atime = ? WHERE digest = ?", digest, "");
  return out;
}

Result<CacheStats> ChunkCache::Stats() {
  CacheStats s;
  s.max_size = max_size_.load();
  s.chunk_size = chunk_size_;
  s.hits = hits_.load();
  s.misses = misses_.load();
  s.evicted_chunks = evicted_.load();
  if (!writable_) return s;
  s.database_bytes = DatabaseDiskBytes();
  ASSIGN_OR_RETURN(ReadConnLease conn, AcquireRead());
  sqlite3* db = conn->db.get();
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kDeferred));
  auto one = [&](const std::string& sql, int col = 0) -> Result<int64_t> {
    ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(db, sql));
    q.Bind(1, static_cast<int64_t>(chunk_size_));
    ASSIGN_OR_RETURN(bool row, q.Step());
    return row ? q.Int(col) : 0;
  };
  ASSIGN_OR_RETURN(int64_t bytes, one("SELECT bytes, ?1 FROM totals"));
  ASSIGN_OR_RETURN(int64_t chunks, one("SELECT chunks, ?1 FROM totals"));
  ASSIGN_OR_RETURN(int64_t blobs, one("SELECT count(*), ?1 FROM blobs WHERE present > 0"));
  ASSIGN_OR_RETURN(int64_t complete,
                   one("SELECT count(*) FROM blobs WHERE present > 0 AND "
                       "present = (size + ?1 - 1) / ?1"));
  ASSIGN_OR_RETURN(int64_t indexes, one("SELECT count(*), ?1 FROM layer_indexes"));
  ASSIGN_OR_RETURN(int64_t manifests, one("SELECT count(*), ?1 FROM manifests"));
  ASSIGN_OR_RETURN(int64_t lh,
                   one("SELECT CAST(value AS INTEGER), ?1 FROM meta WHERE key = 'last_run_hits'"));
  ASSIGN_OR_RETURN(int64_t lm, one("SELECT CAST(value AS INTEGER), ?1 FROM meta "
                                   "WHERE key = 'last_run_misses'"));
  s.bytes = static_cast<uint64_t>(bytes);
  s.chunks = static_cast<uint64_t>(chunks);
  s.blobs = static_cast<uint64_t>(blobs);
  s.complete_blobs = static_cast<uint64_t>(complete);
  s.layer_indexes = static_cast<uint64_t>(indexes);
  s.manifests = static_cast<uint64_t>(manifests);
  s.last_run_hits = static_cast<uint64_t>(lh);
  s.last_run_misses = static_cast<uint64_t>(lm);
  RETURN_IF_ERROR(txn.Commit());
  return s;
}

Status ChunkCache::Prune(uint64_t max_size, bool keep_indexes) {
  if (!writable_) return Status::IoError("chunk cache is not writable");
  std::lock_guard<std::mutex> lock(write_mu_);
  sqlite3* db = writer_->db.get();
  const int64_t cutoff = WallMicros() - kPruneUnusedMicros;
  // 1. Rows nothing uses any more, and index/manifest rows past their share.
  bool evicted = false;
  {
    ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
    RETURN_IF_ERROR(FlushTouchesLocked());
    for (const char* sql : {
             "DELETE FROM layer_indexes WHERE atime < ?1 AND digest NOT IN "
             "(SELECT digest FROM blobs WHERE present > 0)",
             "DELETE FROM manifests WHERE atime < ?1",
             "DELETE FROM bad_blobs WHERE marked < ?1",
         }) {
      ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(db, sql));
      RETURN_IF_ERROR(q.Bind(1, cutoff).Run());
    }
    if (options_.cap_counts_database && !keep_indexes) {
      RETURN_IF_ERROR(EvictKeyedRowsLocked(max_size / kKeyedShareDivisor, &evicted));
    }
    RETURN_IF_ERROR(txn.Commit());
  }
  RETURN_IF_ERROR(ShrinkDatabaseLocked());
  // 2. Chunks, least recently used first, until everything fits.
  std::vector<Victim> victims;
  {
    ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
    bool fits = false;
    RETURN_IF_ERROR(MakeRoomLocked(0, max_size, &fits, &victims));
    RETURN_IF_ERROR(txn.Commit());
  }
  FreeVictims(victims);
  // 3. Files of blobs with no chunk left go (eviction leaves them as holes).
  // Other processes notice a deleted file at their next access (ChunkFiles
  // reopens by name); a write racing the unlink is lost to the deleted
  // file, and its rows fail their checksums and are refetched, never served.
  {
    ASSIGN_OR_RETURN(Stmt empty, Stmt::Prepare(db, "SELECT digest FROM blobs WHERE present = 0"));
    while (true) {
      ASSIGN_OR_RETURN(bool row, empty.Step());
      if (!row) break;
      Status st = files_->Remove(empty.Text(0));
      if (!st.ok()) LOG_DEBUG("chunk cache: " + st.ToString());
    }
  }
  // 4. Blob rows left with nothing: their chunk hashes when no layer index
  // of theirs is kept, then the rows themselves (not the one with the
  // largest id, so that sqlite never hands a deleted row's id to a new blob
  // while another process may still remember it).
  {
    ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
    ASSIGN_OR_RETURN(Stmt forget, Stmt::Prepare(db,
                                                 "UPDATE blobs SET chunk_chain = NULL "
                                                 "WHERE present = 0 AND atime < ?1 AND "
                                                 "chunk_chain IS NOT NULL AND digest NOT IN "
                                                 "(SELECT digest FROM layer_indexes)"));
    RETURN_IF_ERROR(forget.Bind(1, cutoff).Run());
    ASSIGN_OR_RETURN(Stmt drop, Stmt::Prepare(db,
                                              "DELETE FROM blobs WHERE present = 0 AND "
                                              "atime < ?1 AND chunk_chain IS NULL AND "
                                              "digest NOT IN (SELECT digest FROM layer_indexes) "
                                              "AND digest NOT IN (SELECT digest FROM bad_blobs) "
                                              "AND id < (SELECT max(id) FROM blobs)"));
    RETURN_IF_ERROR(drop.Bind(1, cutoff).Run());
    RETURN_IF_ERROR(txn.Commit());
    std::unique_lock<std::shared_mutex> ids(ids_mu_);
    blob_ids_.clear();
  }
  RETURN_IF_ERROR(ShrinkDatabaseLocked());
  // 5. The database may have shrunk less than hoped: evict chunks again
  // against what it takes now.
  victims.clear();
  {
    ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
    bool fits = false;
    RETURN_IF_ERROR(MakeRoomLocked(0, max_size, &fits, &victims));
    RETURN_IF_ERROR(txn.Commit());
  }
  FreeVictims(victims);
  return writer_->db.Exec("PRAGMA wal_checkpoint(TRUNCATE)");
}

Status ChunkCache::ShrinkDatabaseLocked() {
  // A database made before auto_vacuum was set is converted once (VACUUM
  // rewrites it); after that, free pages are handed back incrementally.
  ASSIGN_OR_RETURN(std::string mode, writer_->db.QueryText("PRAGMA auto_vacuum"));
  if (mode == "0") {
    RETURN_IF_ERROR(writer_->db.Exec("PRAGMA auto_vacuum=INCREMENTAL; VACUUM"));
  } else {
    RETURN_IF_ERROR(writer_->db.Exec("PRAGMA incremental_vacuum"));
  }
  // Hand the WAL's pages back to the database file so its size reflects the prune.
  return writer_->db.Exec("PRAGMA wal_checkpoint(TRUNCATE)");
}

Status ChunkCache::PersistRunStats() {
  const uint64_t h = hits_.load(), m = misses_.load();
  if (h + m == 0) return Status::Ok();
  std::lock_guard<std::mutex> lock(write_mu_);
  sqlite3* db = writer_->db.get();
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, Transaction::Kind::kImmediate));
  ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(db,
                                         "INSERT OR REPLACE INTO meta(key, value) VALUES "
                                         "('last_run_hits', ?1), ('last_run_misses', ?2)"));
  RETURN_IF_ERROR(q.Bind(1, static_cast<int64_t>(h)).Bind(2, static_cast<int64_t>(m)).Run());
  return txn.Commit();
}

Result<std::string> ChunkCache::IntegrityCheck() {
  if (!writer_) return Status::IoError("chunk cache database is not open");
  std::lock_guard<std::mutex> lock(write_mu_);
  ASSIGN_OR_RETURN(Stmt q, Stmt::Prepare(writer_->db.get(), "PRAGMA integrity_check"));
  std::string out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    if (!out.empty()) out += "\n";
    out += q.Text(0);
  }
  return out;
}

}  // namespace regfs
