// Shared helpers for the chunk cache tests: a temporary cache directory and a
// fixture that checks fds around each test.
#ifndef REGFS_TESTS_CACHE_CACHE_TEST_UTIL_H_
#define REGFS_TESTS_CACHE_CACHE_TEST_UTIL_H_

#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "reader/base/digest.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs::testing {

inline constexpr uint32_t kTestChunk = 64 * 1024;

// The chunk chain a verification of `data` records (ChunkCache::GetChunkChain),
// computed independently: chunk by chunk, each from the state the previous
// one left.
inline std::string ChunkChainOf(std::string_view data, uint64_t chunk_size = kTestChunk) {
  std::string chain;
  Sha256Chain sha;
  for (uint64_t off = 0; off < data.size(); off += chunk_size) {
    auto state = off == 0 ? Result<Sha256Chain>(Sha256Chain()) : Sha256Chain::Resume(chain.substr(chain.size() - 32), off);
    if (!state.ok()) return "";
    sha = std::move(state).value();
    const uint64_t n = std::min<uint64_t>(chunk_size, data.size() - off);
    sha.Update(data.data() + off, n);
    chain += off + n < data.size() ? sha.State() : sha.FinishRaw();
  }
  return chain;
}

class CacheTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    char tmpl[] = "/tmp/regfs-cache-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    source_.reset();
    cache_.reset();
    std::error_code ec;
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(dir_, ec);
    FdCheckedTest::TearDown();
  }

  CacheOptions Options(uint64_t max_size = 1ull << 30) const {
    CacheOptions o;
    o.dir = dir_ + "/cache";
    o.chunk_size = kTestChunk;
    o.max_size = max_size;
    // Most tests count chunks against caps of a few chunks, smaller than the
    // database itself; size_cap_test.cc counts everything.
    o.cap_counts_database = false;
    return o;
  }
  void OpenCache(uint64_t max_size = 1ull << 30, CachedSourceOptions so = {}) {
    source_.reset();
    cache_.reset();
    auto c = ChunkCache::Open(Options(max_size));
    ASSERT_OK(c);
    cache_ = std::move(c).value();
    source_ = std::make_unique<CachedBlobSource>(cache_.get(), &upstream_, so);
  }
  std::string Read(const BlobDescriptor& b, uint64_t off, size_t n, Status* st = nullptr) {
    std::string out(n, '\0');
    Status s = source_->ReadAt(b, off, {reinterpret_cast<uint8_t*>(out.data()), n});
    if (st) *st = s;
    else EXPECT_OK(s);
    return out;
  }
  // Runs SQL on the cache database through a separate connection (to corrupt
  // or inspect it behind the cache's back).
  void RawSql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ + "/cache/cache.db").c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }

  // Overwrites bytes of a blob's chunk file behind the cache's back.
  void PatchChunkFile(const std::string& digest, uint64_t offset, const std::string& bytes) {
    auto path = cache_->ChunkFilePath(digest);
    ASSERT_OK(path);
    int fd = open(path->c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << *path;
    ssize_t n = pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    close(fd);
    ASSERT_EQ(n, static_cast<ssize_t>(bytes.size()));
  }
  void TruncateChunkFile(const std::string& digest, uint64_t size) {
    auto path = cache_->ChunkFilePath(digest);
    ASSERT_OK(path);
    ASSERT_EQ(truncate(path->c_str(), static_cast<off_t>(size)), 0) << *path;
  }

  // First column of the first row of `sql`, as an integer (-1 on error).
  int64_t QueryInt(const std::string& sql) {
    sqlite3* db = nullptr;
    int64_t v = -1;
    if (sqlite3_open((dir_ + "/cache/cache.db").c_str(), &db) == SQLITE_OK) {
      sqlite3_busy_timeout(db, 10000);
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
          sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
      }
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
  }

  std::string dir_;
  FakeBlobSource upstream_;
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<CachedBlobSource> source_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_CACHE_CACHE_TEST_UTIL_H_
