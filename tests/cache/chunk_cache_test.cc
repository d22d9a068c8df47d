// The sqlite store on its own: chunks, checksums, LRU eviction, pins, layer
// indexes, manifests, stats, schema versions, full disk.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "reader/base/digest.h"
#include "tests/cache/cache_test_util.h"

namespace regfs::testing {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class ChunkCacheTest : public CacheTest {
 protected:
  // A blob of `n` bytes whose descriptor has the true digest.
  BlobDescriptor MakeBlob(size_t n, uint64_t seed, std::string* bytes) {
    *bytes = RandomBytes(n, seed);
    return BlobDescriptor{"application/octet-stream", Sha256Digest(*bytes), n};
  }
  bool Has(const BlobDescriptor& b, uint64_t idx) {
    auto p = cache_->PresentChunks(b.digest, idx, 1);
    EXPECT_OK(p);
    return p.ok() && (*p)[0];
  }
  std::string ReadChunk(const BlobDescriptor& b, uint64_t idx, uint32_t off, size_t n,
                        bool* hit) {
    std::string out(n, '\0');
    auto r = cache_->ReadChunk(b.digest, idx, off, {reinterpret_cast<uint8_t*>(out.data()), n});
    EXPECT_OK(r);
    *hit = r.ok() && *r;
    return out;
  }
};

TEST_F(ChunkCacheTest, StoresAndReadsChunksAtAnyOffset) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk * 2 + 1000, 1, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  bool hit = false;
  // Ranges that start and end inside checksum blocks, and cross them.
  for (auto [idx, off, n] : {std::tuple<uint64_t, uint32_t, size_t>{0, 0, kTestChunk},
                             {0, 100, 5000},
                             {1, 32 * 1024 - 10, 20},
                             {1, 7, kTestChunk - 7},
                             {2, 0, 1000},
                             {2, 999, 1}}) {
    std::string got = ReadChunk(b, idx, off, n, &hit);
    ASSERT_TRUE(hit) << idx << " " << off;
    EXPECT_EQ(got, data.substr(idx * kTestChunk + off, n)) << idx << " " << off;
  }
  ReadChunk(b, 3, 0, 1, &hit);
  EXPECT_FALSE(hit);
  auto st = cache_->GetBlobState(b.digest);
  ASSERT_OK(st);
  EXPECT_TRUE(st->known);
  EXPECT_EQ(st->chunk_count, 3u);
  EXPECT_EQ(st->chunks_present, 3u);
  EXPECT_TRUE(st->complete());
  EXPECT_FALSE(st->verified);
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->bytes, data.size());
  EXPECT_EQ(stats->chunks, 3u);
  EXPECT_EQ(stats->blobs, 1u);
  EXPECT_EQ(stats->complete_blobs, 1u);
  EXPECT_EQ(stats->hits, 6u);
  EXPECT_EQ(stats->misses, 1u);
  auto ic = cache_->IntegrityCheck();
  ASSERT_OK(ic);
  EXPECT_EQ(*ic, "ok");
}

TEST_F(ChunkCacheTest, RejectsPartialChunks) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 2, &data);
  EXPECT_EQ(cache_->PutChunks(b, 0, Bytes(data.substr(0, 100))).code(), Code::kInvalidArgument);
  EXPECT_EQ(cache_->PutChunks(b, 2, Bytes(data.substr(0, kTestChunk))).code(),
            Code::kInvalidArgument);
}

TEST_F(ChunkCacheTest, ChunkSizeIsFixedPerDatabase) {
  OpenCache();
  EXPECT_EQ(cache_->chunk_size(), kTestChunk);
  cache_.reset();
  source_.reset();
  CacheOptions o = Options();
  o.chunk_size = 1 << 20;
  auto c = ChunkCache::Open(o);
  ASSERT_OK(c);
  EXPECT_EQ((*c)->chunk_size(), kTestChunk);
}

TEST_F(ChunkCacheTest, EvictsLeastRecentlyUsedFirst) {
  OpenCache(3 * kTestChunk);
  std::string a, b, c, d;
  auto ba = MakeBlob(kTestChunk, 10, &a);
  auto bb = MakeBlob(kTestChunk, 11, &b);
  auto bc = MakeBlob(kTestChunk, 12, &c);
  auto bd = MakeBlob(kTestChunk, 13, &d);
  ASSERT_OK(cache_->PutChunks(ba, 0, Bytes(a)));
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));
  ASSERT_OK(cache_->PutChunks(bc, 0, Bytes(c)));
  bool hit = false;
  ReadChunk(ba, 0, 0, 10, &hit);  // a is now more recent than b and c
  ASSERT_TRUE(hit);
  ASSERT_OK(cache_->PutChunks(bd, 0, Bytes(d)));  // room for d: evict b
  EXPECT_TRUE(Has(ba, 0));
  EXPECT_FALSE(Has(bb, 0));
  EXPECT_TRUE(Has(bc, 0));
  EXPECT_TRUE(Has(bd, 0));
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));  // now c is the oldest
  EXPECT_FALSE(Has(bc, 0));
  EXPECT_TRUE(Has(ba, 0));
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->bytes, 3 * kTestChunk);
  EXPECT_EQ(stats->evicted_chunks, 2u);
}

TEST_F(ChunkCacheTest, AccessTimesSurviveReopenAndDecideEviction) {
  OpenCache(3 * kTestChunk);
  std::string a, b, c, d;
  auto ba = MakeBlob(kTestChunk, 20, &a);
  auto bb = MakeBlob(kTestChunk, 21, &b);
  auto bc = MakeBlob(kTestChunk, 22, &c);
  auto bd = MakeBlob(kTestChunk, 23, &d);
  ASSERT_OK(cache_->PutChunks(ba, 0, Bytes(a)));
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));
  ASSERT_OK(cache_->PutChunks(bc, 0, Bytes(c)));
  bool hit = false;
  ReadChunk(ba, 0, 0, 10, &hit);
  ASSERT_TRUE(hit);
  OpenCache(3 * kTestChunk);  // closing flushes the pending touch of a
  ASSERT_OK(cache_->PutChunks(bd, 0, Bytes(d)));
  EXPECT_TRUE(Has(ba, 0));
  EXPECT_FALSE(Has(bb, 0));
}

TEST_F(ChunkCacheTest, PinnedChunksAreNotEvicted) {
  OpenCache(2 * kTestChunk);
  std::string a, b, c;
  auto ba = MakeBlob(kTestChunk, 30, &a);
  auto bb = MakeBlob(kTestChunk, 31, &b);
  auto bc = MakeBlob(kTestChunk, 32, &c);
  ASSERT_OK(cache_->PutChunks(ba, 0, Bytes(a)));
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));
  {
    ChunkCache::Pin pin(cache_.get(), ba.digest, 0, 0);  // a is oldest but in use
    ASSERT_OK(cache_->PutChunks(bc, 0, Bytes(c)));
    EXPECT_TRUE(Has(ba, 0));
    EXPECT_FALSE(Has(bb, 0));
    EXPECT_TRUE(Has(bc, 0));
  }
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));
  EXPECT_FALSE(Has(ba, 0));
}

TEST_F(ChunkCacheTest, NothingFitsWhenEverythingIsPinnedOrTooBig) {
  OpenCache(kTestChunk);
  std::string a, b;
  auto ba = MakeBlob(kTestChunk, 40, &a);
  auto bb = MakeBlob(2 * kTestChunk, 41, &b);
  ASSERT_OK(cache_->PutChunks(ba, 0, Bytes(a)));
  ChunkCache::Pin pin(cache_.get(), ba.digest, 0, 0);
  ASSERT_OK(cache_->PutChunks(bb, 0, Bytes(b)));  // skipped, not an error
  EXPECT_TRUE(Has(ba, 0));
  EXPECT_FALSE(Has(bb, 0));
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_LE(stats->bytes, kTestChunk);
}

TEST_F(ChunkCacheTest, ChunkFailingItsChecksumIsDroppedNotServed) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 50, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  // Flip one byte of chunk 1's stored bytes behind the cache's back (same length).
  PatchChunkFile(b.digest, kTestChunk + 40000,
                 std::string(1, static_cast<char>(data[kTestChunk + 40000] ^ 0x5a)));
  bool hit = true;
  ReadChunk(b, 1, 0, 100, &hit);  // the bad byte is in block 1, this reads block 0: served
  EXPECT_TRUE(hit);
  std::string got = ReadChunk(b, 1, 39990, 100, &hit);
  EXPECT_FALSE(hit);
  EXPECT_FALSE(Has(b, 1));
  EXPECT_TRUE(Has(b, 0));
  auto st = cache_->GetBlobState(b.digest);
  ASSERT_OK(st);
  EXPECT_EQ(st->chunks_present, 1u);
}

TEST_F(ChunkCacheTest, TruncatedChunkIsDropped) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk, 51, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  TruncateChunkFile(b.digest, 1000);
  bool hit = true;
  ReadChunk(b, 0, 0, 10, &hit);
  EXPECT_FALSE(hit);
  EXPECT_FALSE(Has(b, 0));
}

TEST_F(ChunkCacheTest, LayerIndexesAndManifestsRoundTrip) {
  OpenCache();
  const std::string layer = Sha256Digest("layer");
  EXPECT_FALSE(cache_->GetLayerIndex(layer, "tar-index/v1")->has_value());
  std::string index = RandomBytes(300000, 5);
  index[10] = '\0';
  ASSERT_OK(cache_->PutLayerIndex(layer, "tar-index/v1", index));
  ASSERT_OK(cache_->PutLayerIndex(layer, "tar-index/v2", "other"));
  auto got = cache_->GetLayerIndex(layer, "tar-index/v1");
  ASSERT_OK(got);
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, index);
  ASSERT_OK(cache_->PutLayerIndex(layer, "tar-index/v1", "replaced"));
  EXPECT_EQ(**cache_->GetLayerIndex(layer, "tar-index/v1"), "replaced");
  EXPECT_EQ(**cache_->GetLayerIndex(layer, "tar-index/v2"), "other");

  const std::string manifest = R"({"schemaVersion":2})";
  const std::string md = Sha256Digest(manifest);
  EXPECT_FALSE(cache_->GetManifest(md)->has_value());
  ASSERT_OK(cache_->PutManifest(md, "application/vnd.oci.image.manifest.v1+json", manifest));
  auto m = cache_->GetManifest(md);
  ASSERT_OK(m);
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->bytes, manifest);
  EXPECT_EQ((*m)->media_type, "application/vnd.oci.image.manifest.v1+json");
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->layer_indexes, 2u);
  EXPECT_EQ(stats->manifests, 1u);
  // They survive a reopen.
  OpenCache();
  EXPECT_EQ(**cache_->GetLayerIndex(layer, "tar-index/v2"), "other");
  EXPECT_EQ((*cache_->GetManifest(md))->bytes, manifest);
}

TEST_F(ChunkCacheTest, PruneAndLastRunHitRatio) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk * 4, 60, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  bool hit = false;
  ReadChunk(b, 3, 0, 1, &hit);
  ReadChunk(b, 2, 0, 1, &hit);
  ReadChunk(b, 1, 0, 1, &hit);
  ReadChunk(b, 9, 0, 1, &hit);  // a miss
  ASSERT_OK(cache_->Prune(2 * kTestChunk));  // keeps the two most recent: 2 and 1
  EXPECT_FALSE(Has(b, 0));
  EXPECT_FALSE(Has(b, 3));
  EXPECT_TRUE(Has(b, 1));
  EXPECT_TRUE(Has(b, 2));
  OpenCache();  // closing records hits 3, misses 1... plus the Has() probes (not counted)
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->last_run_hits, 3u);
  EXPECT_EQ(stats->last_run_misses, 1u);
  EXPECT_DOUBLE_EQ(stats->last_run_hit_ratio(), 0.75);
  EXPECT_EQ(stats->bytes, 2 * kTestChunk);
  EXPECT_EQ(stats->complete_blobs, 0u);
  ASSERT_OK(cache_->Prune(0));
  stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->bytes, 0u);
  EXPECT_EQ(stats->chunks, 0u);
  EXPECT_EQ(stats->blobs, 0u);
}

TEST_F(ChunkCacheTest, NewerSchemaIsRefused) {
  OpenCache();
  cache_.reset();
  source_.reset();
  RawSql("UPDATE meta SET value = 99 WHERE key = 'schema_version'");
  auto c = ChunkCache::Open(Options());
  EXPECT_EQ(c.status().code(), Code::kUnsupported) << c.status().ToString();
}

TEST_F(ChunkCacheTest, FullDiskSkipsStoresAndReadsStillWork) {
  CacheOptions o = Options();
  o.max_page_count = 24;                       // metadata: 24 pages of 64 KiB
  o.max_chunk_bytes_written = 3 * kTestChunk;  // chunk bytes: 3 chunks, then ENOSPC
  auto c = ChunkCache::Open(o);
  ASSERT_OK(c);
  cache_ = std::move(c).value();
  source_ = std::make_unique<CachedBlobSource>(cache_.get(), &upstream_);
  std::string data = RandomBytes(kTestChunk * 20, 70);
  auto b = upstream_.AddBlob(data);
  ASSERT_TRUE(cache_->writable());
  // Cold and again: every byte right although most chunks cannot be stored.
  EXPECT_EQ(Read(b, 0, data.size()), data);
  EXPECT_EQ(Read(b, 12345, 300000), data.substr(12345, 300000));
  auto st = cache_->GetBlobState(b.digest);
  ASSERT_OK(st);
  EXPECT_LT(st->chunks_present, 20u);
  auto ic = cache_->IntegrityCheck();
  ASSERT_OK(ic);
  EXPECT_EQ(*ic, "ok");
}

TEST_F(ChunkCacheTest, UnusableDirDegradesToUncached) {
  // A regular file where the directory should be: not creatable even by root.
  std::string file = dir_ + "/file";
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  CacheOptions o = Options();
  o.dir = file + "/cache";
  auto c = ChunkCache::Open(o);
  ASSERT_OK(c);
  cache_ = std::move(c).value();
  EXPECT_FALSE(cache_->writable());
  source_ = std::make_unique<CachedBlobSource>(cache_.get(), &upstream_);
  std::string data = RandomBytes(kTestChunk * 3, 71);
  auto b = upstream_.AddBlob(data);
  EXPECT_EQ(Read(b, 0, data.size()), data);
  EXPECT_EQ(Read(b, 100, 1000), data.substr(100, 1000));
  EXPECT_GE(upstream_.requests(), 2u);
}

TEST_F(ChunkCacheTest, EvictionAndDropFreeTheChunkFilesSpace) {
  OpenCache(2 * kTestChunk);
  std::string da, db;
  auto a = MakeBlob(kTestChunk * 2, 80, &da);
  auto b = MakeBlob(kTestChunk * 2, 81, &db);
  ASSERT_OK(cache_->PutChunks(a, 0, Bytes(da)));
  auto path_a = cache_->ChunkFilePath(a.digest);
  ASSERT_OK(path_a);
  struct stat st {};
  ASSERT_EQ(stat(path_a->c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 2u * kTestChunk);
  // b evicts both of a's chunks: their bytes are punched out of a's file.
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(db)));
  EXPECT_FALSE(Has(a, 0));
  EXPECT_FALSE(Has(a, 1));
  ASSERT_EQ(stat(path_a->c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kTestChunk / 2);
  // Pruning deletes the files of blobs with no chunk left.
  ASSERT_OK(cache_->Prune(2 * kTestChunk));
  EXPECT_NE(stat(path_a->c_str(), &st), 0);
  EXPECT_TRUE(Has(b, 0));
  // Dropping a blob frees its file too.
  ASSERT_OK(cache_->DropBlob(b.digest));
  auto path_b = cache_->ChunkFilePath(b.digest);
  ASSERT_OK(path_b);
  ASSERT_EQ(stat(path_b->c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_FALSE(Has(b, 0));
}

TEST_F(ChunkCacheTest, DigestsThatCouldEscapeTheDirectoryAreRefused) {
  OpenCache();
  for (const char* d : {"../../etc/passwd", "sha256:../x", "sha256:a/b", ".sha256:ab", "sha256:",
                        "nocolon"}) {
    EXPECT_EQ(cache_->ChunkFilePath(d).status().code(), Code::kInvalidArgument) << d;
    BlobDescriptor b{"x", d, 10};
    EXPECT_FALSE(cache_->PutChunks(b, 0, Bytes(std::string(10, 'x'))).ok()) << d;
  }
}

TEST_F(ChunkCacheTest, RelativeDirStillWorksAfterTheProcessChangesDirectory) {
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(chdir(dir_.c_str()), 0);
  CacheOptions o = Options();
  o.dir = "relcache";
  auto c = ChunkCache::Open(o);
  ASSERT_EQ(chdir("/"), 0);  // as the daemon does once it is in the background
  ASSERT_OK(c);
  cache_ = std::move(c).value();
  std::string data;
  auto b = MakeBlob(kTestChunk, 82, &data);
  Status put = cache_->PutChunks(b, 0, Bytes(data));
  bool hit = false;
  std::string got = ReadChunk(b, 0, 0, 100, &hit);
  ASSERT_EQ(chdir(cwd), 0);
  ASSERT_OK(put);
  EXPECT_TRUE(hit);
  EXPECT_EQ(got, data.substr(0, 100));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/relcache/cache.db"));
}

TEST_F(ChunkCacheTest, SchemaOneDatabaseIsMigratedAndItsChunksForgotten) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk, 83, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  ASSERT_OK(cache_->PutManifest(b.digest, "m", "manifest bytes"));
  cache_.reset();
  source_.reset();
  // Back to what schema 1 looked like: bytes in a chunk_data table.
  RawSql(
      "DROP TRIGGER chunks_del; CREATE TABLE chunk_data(id INTEGER PRIMARY KEY, data BLOB);"
      "INSERT INTO chunk_data SELECT id, zeroblob(size) FROM chunks;"
      "CREATE TRIGGER chunks_del AFTER DELETE ON chunks BEGIN "
      "UPDATE totals SET bytes = bytes - OLD.size, chunks = chunks - 1; "
      "UPDATE blobs SET present = present - 1 WHERE id = OLD.blob_id; "
      "DELETE FROM chunk_data WHERE id = OLD.id; END;"
      // What migration 3 -> 4 renames.
      "ALTER TABLE blobs RENAME COLUMN chunk_chain TO chunk_sha256;"
      // What migration 2 -> 3 adds.
      "DROP TABLE bad_blobs; ALTER TABLE layer_indexes DROP COLUMN atime;"
      "ALTER TABLE manifests DROP COLUMN atime; ALTER TABLE blobs DROP COLUMN atime;"
      "UPDATE meta SET value = 1 WHERE key = 'schema_version'");
  OpenCache();
  EXPECT_EQ(QueryInt("SELECT value FROM meta WHERE key = 'schema_version'"), 4);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM sqlite_master WHERE name = 'chunk_data'"), 0);
  EXPECT_FALSE(Has(b, 0));
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_EQ(stats->bytes, 0u);
  EXPECT_EQ(stats->chunks, 0u);
  auto m = cache_->GetManifest(b.digest);
  ASSERT_OK(m);
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->bytes, "manifest bytes");
  // And it stores again.
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  EXPECT_TRUE(Has(b, 0));
}

// Storing chunks 0 and 1 under a one-chunk cap: chunk 1, already present, is
// evicted to make room for chunk 0, then stored again (evicting chunk 0).
// Freeing the victims' bytes after the commit must spare the new chunk 1.
TEST_F(ChunkCacheTest, AChunkEvictedAndStoredAgainInOneCallKeepsItsBytes) {
  OpenCache(kTestChunk);
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 84, &data);
  ASSERT_OK(cache_->PutChunks(b, 1, Bytes(data.substr(kTestChunk))));
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  EXPECT_FALSE(Has(b, 0));
  bool hit = false;
  std::string got = ReadChunk(b, 1, 0, kTestChunk, &hit);
  EXPECT_TRUE(hit);
  EXPECT_EQ(got, data.substr(kTestChunk));
}

// Under a one-chunk cap, storing chunks 0 and 1 evicts chunk 0, stored
// moments before in the same call: its bytes are freed too.
TEST_F(ChunkCacheTest, AChunkStoredThenEvictedInOneCallIsFreed) {
  OpenCache(kTestChunk);
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 85, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data)));
  EXPECT_FALSE(Has(b, 0));
  EXPECT_TRUE(Has(b, 1));
  auto path = cache_->ChunkFilePath(b.digest);
  ASSERT_OK(path);
  struct stat st {};
  ASSERT_EQ(stat(path->c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kTestChunk * 3 / 2);
}

// Two processes on one cache: one prunes (deleting a blob's file) while the
// other holds that file open. The other's next store must land in the new
// file, where everyone else reads it.
TEST_F(ChunkCacheTest, AStoreAfterAnotherProcessDeletedTheFileGoesToTheNewFile) {
  OpenCache();
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 86, &data);
  ASSERT_OK(cache_->PutChunks(b, 0, Bytes(data.substr(0, kTestChunk))));  // fd now open
  {
    auto other = ChunkCache::Open(Options());
    ASSERT_OK(other);
    ASSERT_OK((*other)->Prune(0));  // evicts chunk 0 and deletes the file
  }
  auto path = cache_->ChunkFilePath(b.digest);
  ASSERT_OK(path);
  struct stat st {};
  EXPECT_NE(stat(path->c_str(), &st), 0);
  ASSERT_OK(cache_->PutChunks(b, 1, Bytes(data.substr(kTestChunk))));
  auto reader = ChunkCache::Open(Options());
  ASSERT_OK(reader);
  std::string out(100, '\0');
  auto hit = (*reader)->ReadChunk(b.digest, 1, 0, {reinterpret_cast<uint8_t*>(out.data()), 100});
  ASSERT_OK(hit);
  EXPECT_TRUE(*hit);
  EXPECT_EQ(out, data.substr(kTestChunk, 100));
}

// A reader waiting on the chunk file (a cold disk) must not hold a sqlite
// connection: the next reader would open another one, and a new connection's
// first read of the database file queued behind that same disk (an 18 ms stall
// seen in warm-read traces).
TEST_F(ChunkCacheTest, AReaderBlockedOnTheChunkFileHoldsNoDatabaseConnection) {
  std::string data;
  auto b = MakeBlob(kTestChunk * 2, 87, &data);
  std::mutex mu;
  std::condition_variable cv;
  bool first_inside = false, second_done = false;
  int calls = 0;
  CacheOptions o = Options();
  o.before_chunk_file_read = [&] {
    std::unique_lock lock(mu);
    if (++calls != 1) return;
    first_inside = true;
    cv.notify_all();
    // The first reader stays "on the disk" until the second has finished.
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return second_done; });
  };
  auto c = ChunkCache::Open(o);
  ASSERT_OK(c);
  ASSERT_OK((*c)->PutChunks(b, 0, Bytes(data)));
  std::string out1(100, '\0'), out2(100, '\0');
  Result<bool> hit1 = false;
  std::thread first([&] {
    hit1 = (*c)->ReadChunk(b.digest, 0, 0, {reinterpret_cast<uint8_t*>(out1.data()), 100});
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return first_inside; }));
  }
  const uint64_t opened = (*c)->read_connections_opened();
  auto hit2 = (*c)->ReadChunk(b.digest, 1, 0, {reinterpret_cast<uint8_t*>(out2.data()), 100});
  {
    std::lock_guard lock(mu);
    second_done = true;
  }
  cv.notify_all();
  first.join();
  ASSERT_OK(hit1);
  ASSERT_OK(hit2);
  EXPECT_TRUE(*hit1);
  EXPECT_TRUE(*hit2);
  EXPECT_EQ(out1, data.substr(0, 100));
  EXPECT_EQ(out2, data.substr(kTestChunk, 100));
  EXPECT_EQ((*c)->read_connections_opened(), opened)
      << "the second reader had to open a connection of its own";
}

}  // namespace
}  // namespace regfs::testing
