// The cap (--cache-max-size) counts everything the cache keeps on disk: the
// database files (WAL included) and the chunk files. Layer indexes and
// manifests are evicted too, least recently used first, and prune removes
// what nothing references.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "reader/base/digest.h"
#include "tests/cache/cache_test_util.h"

namespace regfs::testing {
namespace {

// What du says: allocated blocks of the directory and everything in it.
uint64_t DiskUsage(const std::string& dir) {
  uint64_t total = 0;
  struct stat st;
  if (lstat(dir.c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (lstat(e.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

class SizeCapTest : public CacheTest {
 protected:
  static constexpr uint64_t kCap = 6u << 20;
  void OpenCounting() {
    source_.reset();
    cache_.reset();
    CacheOptions o = Options(kCap);
    o.cap_counts_database = true;
    auto c = ChunkCache::Open(o);
    ASSERT_OK(c);
    cache_ = std::move(c).value();
    CachedSourceOptions so;
    so.readahead = false;
    source_ = std::make_unique<CachedBlobSource>(cache_.get(), &upstream_, so);
  }
};

TEST_F(SizeCapTest, IndexesManifestsAndChunksStayUnderTheCapAndWhatIsUsedStays) {
  OpenCounting();
  // 30 layer indexes of 256 KiB (7.5 MiB), manifests, and 40 blobs of two
  // chunks (5 MiB) read through the cache: well past the 6 MiB cap.
  std::vector<std::string> index_keys;
  for (int i = 0; i < 30; ++i) {
    index_keys.push_back(Sha256Digest("layer " + std::to_string(i)));
    ASSERT_OK(cache_->PutLayerIndex(index_keys.back(), "tar-index/v1",
                                    RandomBytes(256 << 10, 1500 + i)));
    ASSERT_OK(cache_->PutManifest(Sha256Digest("manifest " + std::to_string(i)), "m",
                                  RandomBytes(20 << 10, 1600 + i)));
    // The first index is in use: looked up again and again.
    auto used = cache_->GetLayerIndex(index_keys[0], "tar-index/v1");
    ASSERT_OK(used);
    ASSERT_TRUE(used->has_value());
  }
  std::vector<BlobDescriptor> blobs;
  for (int i = 0; i < 40; ++i) {
    std::string data = RandomBytes(2 * kTestChunk, 1700 + i);
    blobs.push_back(upstream_.AddBlob(data));
    ASSERT_EQ(Read(blobs.back(), 0, data.size()), data);
  }
  ASSERT_OK(cache_->FlushTouches());
  EXPECT_LE(DiskUsage(dir_ + "/cache"), kCap) << "after eviction alone";
  ASSERT_OK(cache_->Prune(kCap));
  EXPECT_LE(DiskUsage(dir_ + "/cache"), kCap) << "after prune";
  // Nothing in use is lost: the index looked up all along, the newest index
  // and manifest, the blob read last.
  for (const std::string& key : {index_keys[0], index_keys.back()}) {
    auto idx = cache_->GetLayerIndex(key, "tar-index/v1");
    ASSERT_OK(idx);
    EXPECT_TRUE(idx->has_value()) << key;
  }
  auto m = cache_->GetManifest(Sha256Digest("manifest 29"));
  ASSERT_OK(m);
  EXPECT_TRUE(m->has_value());
  auto state = cache_->GetBlobState(blobs.back().digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->complete());
  // And some of the oldest did go.
  auto old = cache_->GetLayerIndex(index_keys[1], "tar-index/v1");
  ASSERT_OK(old);
  EXPECT_FALSE(old->has_value());
  auto stats = cache_->Stats();
  ASSERT_OK(stats);
  EXPECT_LT(stats->layer_indexes, 30u);
  EXPECT_GT(stats->database_bytes, 0u);
  EXPECT_LE(stats->bytes + stats->database_bytes, kCap);
  // A prune to a smaller size shrinks the directory with it.
  ASSERT_OK(cache_->Prune(kCap / 2));
  EXPECT_LE(DiskUsage(dir_ + "/cache"), kCap / 2);
}

// Prune drops what nothing references any more: layer indexes of blobs with
// no chunk left and manifests unused for kPruneUnusedDays, marks of blobs
// that failed long ago, and blob rows left with nothing.
TEST_F(SizeCapTest, PruneDropsRowsNothingUsesAnyMore) {
  OpenCache();
  std::string data = RandomBytes(2 * kTestChunk, 1800);
  auto b = upstream_.AddBlob(data);
  ASSERT_OK(source_->FetchWhole(b));
  const std::string orphan = Sha256Digest("an old layer");
  ASSERT_OK(cache_->PutLayerIndex(orphan, "tar-index/v1", "old index"));
  ASSERT_OK(cache_->PutLayerIndex(b.digest, "tar-index/v1", "index of a cached layer"));
  ASSERT_OK(cache_->PutManifest("ref:old|host", "r", "{}"));
  ASSERT_OK(cache_->PutManifest("ref:new|host", "r", "{}"));
  cache_.reset();
  source_.reset();
  // Age everything but the new resolution past the limit.
  RawSql("UPDATE layer_indexes SET atime = 0; UPDATE manifests SET atime = 0 "
         "WHERE digest = 'ref:old|host'; INSERT INTO blobs(digest, size) VALUES "
         "('sha256:" + std::string(64, 'a') + "', 5), ('sha256:" + std::string(64, 'b') + "', 5)");
  OpenCache();
  ASSERT_OK(cache_->Prune(1ull << 30));
  EXPECT_EQ(QueryInt("SELECT count(*) FROM layer_indexes WHERE digest = '" + orphan + "'"), 0);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM layer_indexes WHERE digest = '" + b.digest + "'"), 1);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM manifests WHERE digest = 'ref:old|host'"), 0);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM manifests WHERE digest = 'ref:new|host'"), 1);
  // The empty blob row goes unless it holds the largest id (kept, so that an
  // id is never reused); the cached blob's row stays.
  EXPECT_EQ(QueryInt("SELECT count(*) FROM blobs WHERE digest = '" + b.digest + "'"), 1);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM blobs WHERE digest = 'sha256:" + std::string(64, 'a') +
                     "'"), 0);
  EXPECT_EQ(QueryInt("SELECT count(*) FROM blobs WHERE digest = 'sha256:" + std::string(64, 'b') +
                     "'"), 1);
  EXPECT_EQ(Read(b, 0, data.size()), data);
}

}  // namespace
}  // namespace regfs::testing
