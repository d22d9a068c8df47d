// Issues 14 and 15: bytes refetched after eviction are verified, a blob that
// failed its digest stays failed (also for a later process), a reader never
// reaches a clean end of file on wrong bytes, and no wait is unbounded.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "reader/base/digest.h"
#include "tests/cache/cache_test_util.h"

namespace regfs::testing {
namespace {

class IntegrityTest : public CacheTest {};

// What the mount uses (DaemonCacheOptions in fs/mount.cc), scaled to the
// tests' 64 KiB chunks.
CachedSourceOptions DaemonLike() {
  CachedSourceOptions o;
  o.verify_complete = true;
  o.small_random_fetches = true;
  o.small_read_bytes = 8192;
  o.max_fetch_bytes = 4 * kTestChunk;
  return o;
}

std::string WithChunkAltered(std::string data, uint64_t chunk) {
  data[chunk * kTestChunk + 777] ^= 0x5a;
  return data;
}

// The layer index pass: the blob front to back through ReadAt, with read-ahead
// (Prefetch) beside it and other readers' random reads in between, in a cache
// too small to ever hold the whole blob (so the background check never runs).
void IndexPass(CachedBlobSource* src, const BlobDescriptor& b, bool with_random_reads) {
  constexpr size_t kPiece = 20000;
  std::string buf(kPiece, '\0');
  for (uint64_t off = 0; off < b.size; off += kPiece) {
    const size_t n = std::min<uint64_t>(kPiece, b.size - off);
    ASSERT_OK(src->ReadAt(b, off, {reinterpret_cast<uint8_t*>(buf.data()), n}));
    if (off + n < b.size) {
      ASSERT_OK(src->Prefetch(b, off + n, std::min<uint64_t>(2 * kTestChunk, b.size - off - n)));
    }
    if (with_random_reads) {
      std::string r(100, '\0');
      ASSERT_OK(src->ReadAt(b, 5 * kTestChunk + 5, {reinterpret_cast<uint8_t*>(r.data()), 100}));
    }
  }
}

TEST_F(IntegrityTest, ChunksRefetchedAfterAnIndexPassAreCheckedAgainstTheirHashes) {
  OpenCache(3 * kTestChunk, DaemonLike());
  std::string data = RandomBytes(kTestChunk * 10 + 123, 1401);
  auto b = upstream_.AddBlob(data);
  IndexPass(source_.get(), b, /*with_random_reads=*/true);
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_FALSE(state->complete());
  EXPECT_TRUE(state->verified);
  ASSERT_OK(cache_->Prune(0));  // every chunk evicted; the hashes stay
  upstream_.ReplaceContent(b.digest, WithChunkAltered(data, 4));
  Status st;
  Read(b, 4 * kTestChunk, kTestChunk, &st);  // the whole chunk
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  Read(b, 4 * kTestChunk + 700, 200, &st);  // a small random read of it
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  // The small read fetched the whole chunk (so it could be checked).
  auto log = upstream_.request_log();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back().offset, 4 * kTestChunk);
  EXPECT_EQ(log.back().length, kTestChunk);
  // Other chunks still read fine.
  EXPECT_EQ(Read(b, 6 * kTestChunk + 9, 300), data.substr(6 * kTestChunk + 9, 300));
}

TEST_F(IntegrityTest, ABlobFailingItsDigestStaysFailedAlsoForALaterProcess) {
  OpenCache(1ull << 30, DaemonLike());
  std::string good = RandomBytes(kTestChunk * 3 + 10, 1402);
  auto b = upstream_.AddBlobAs(Sha256Digest(good), WithChunkAltered(good, 1));
  EXPECT_EQ(source_->FetchWhole(b).code(), Code::kCorrupt);
  Status st;
  Read(b, 0, 100, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  Read(b, kTestChunk + 700, 100, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  OpenCache(1ull << 30, DaemonLike());  // a later process on the same cache dir
  Read(b, 0, 100, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  Read(b, 2 * kTestChunk, 100, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  // The registry serves the right bytes again: a full fetch that verifies
  // clears the mark.
  upstream_.ReplaceContent(b.digest, good);
  ASSERT_OK(source_->FetchWhole(b));
  EXPECT_EQ(Read(b, kTestChunk + 700, 100), good.substr(kTestChunk + 700, 100));
  OpenCache(1ull << 30, DaemonLike());
  EXPECT_EQ(Read(b, 0, 100), good.substr(0, 100));
}

TEST_F(IntegrityTest, AFailedCheckForALastChunkReadMarksTheBlobBadToo) {
  OpenCache(1ull << 30, DaemonLike());
  std::string good = RandomBytes(kTestChunk * 3, 1403);
  auto b = upstream_.AddBlobAs(Sha256Digest(good), WithChunkAltered(good, 0));
  for (uint64_t c : {1, 0}) Read(b, c * kTestChunk, 5000);
  // The last chunk's read waits for the whole blob's check, which fails.
  Status st;
  Read(b, 2 * kTestChunk, 5000, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  source_->WaitForVerifications();
  Read(b, kTestChunk, 100, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
}

// `sha256sum blobs/*` on a mount either matches or fails: the last chunk is
// not released before the whole blob is verified.
TEST_F(IntegrityTest, AReaderNeverReachesACleanEndOfFileOnWrongBytes) {
  std::string good = RandomBytes(kTestChunk * 5 + 99, 1404);
  std::string bad = WithChunkAltered(good, 2);
  const std::string digest = Sha256Digest(good);
  // (a) in order, as sha256sum reads; (b) out of order, as the kernel's
  // concurrent reads arrive; (c) only the tail, as `tail -c` reads.
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode);
    OpenCache(1ull << 30, DaemonLike());
    auto b = upstream_.AddBlobAs(digest, bad);
    Status st;
    std::string got;
    if (mode == 0) {
      for (uint64_t off = 0; off < b.size && st.ok(); off += 16384) {
        got = Read(b, off, std::min<uint64_t>(16384, b.size - off), &st);
      }
    } else if (mode == 1) {
      for (uint64_t c : {3, 0, 2, 4}) EXPECT_EQ(Read(b, c * kTestChunk, 64), bad.substr(c * kTestChunk, 64));
      got = Read(b, 5 * kTestChunk, 99, &st);
    } else {
      got = Read(b, b.size - 10, 10, &st);
    }
    EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
    source_.reset();
    cache_.reset();
    std::filesystem::remove_all(dir_ + "/cache");
  }
  // The right bytes: the tail read first verifies the blob and is answered.
  OpenCache(1ull << 30, DaemonLike());
  upstream_.ReplaceContent(digest, good);
  BlobDescriptor b{"application/octet-stream", digest, good.size()};
  EXPECT_EQ(Read(b, b.size - 10, 10), good.substr(good.size() - 10));
  auto state = cache_->GetBlobState(digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->verified);
}

// The cost of the checks: a cold in-order read (the kernel's reads of `cat`
// or an index pass, with read-ahead beside it) hashes every byte once, and
// from the bytes it serves (nothing read back from the cache), while it
// records both the digest and what a later refetch of each chunk is checked
// against. So does FetchWhole; the background check of a blob completed out
// of order reads it back once and hashes it once.
TEST_F(IntegrityTest, EachVerificationPassHashesEveryByteOnce) {
  OpenCache(1ull << 30, DaemonLike());
  std::string data = RandomBytes(kTestChunk * 10 + 123, 1407);
  auto b = upstream_.AddBlob(data);
  IndexPass(source_.get(), b, /*with_random_reads=*/false);
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->verified);
  BlobCounters c = source_->Counters(b.digest);
  EXPECT_EQ(c.hashed_bytes, data.size());
  EXPECT_EQ(c.reread_bytes, 0u);

  auto w = upstream_.AddBlob(RandomBytes(kTestChunk * 7 + 5, 1408));
  ASSERT_OK(source_->FetchWhole(w));
  EXPECT_EQ(source_->Counters(w.digest).hashed_bytes, w.size);

  auto o = upstream_.AddBlob(RandomBytes(kTestChunk * 4 + 9, 1409));
  // Whole chunks (a small read would not be stored); the first and the last
  // prefetched (a read at offset 0 would start an in-order pass, one of the
  // last chunk would check the whole blob at once).
  for (uint64_t ch : {3, 1}) Read(o, ch * kTestChunk, kTestChunk);
  ASSERT_OK(source_->Prefetch(o, 0, kTestChunk));
  Read(o, 2 * kTestChunk, kTestChunk);
  ASSERT_OK(source_->Prefetch(o, 4 * kTestChunk, 9));
  ASSERT_TRUE(source_->WaitForVerifications());
  state = cache_->GetBlobState(o.digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->verified);
  EXPECT_EQ(source_->Counters(o.digest).hashed_bytes, o.size);
  EXPECT_EQ(source_->Counters(o.digest).reread_bytes, o.size);
}

// A cold read as the daemon makes it: the kernel's first read at offset 0,
// fs/'s read-ahead fetching the rest in two requests of which the later one
// arrives first, the kernel's reads arriving out of order, the last chunk
// last. Every byte is hashed once, from the fetched bytes in memory: none is
// read back from the cache for the check (the cold read's CPU, issue 14).
// With the room for chunks ahead of the pass too small for a request, the
// pass reads those back from the cache instead, and still hashes each byte
// once. Wrong bytes in the later request fail the last chunk's read.
TEST_F(IntegrityTest, AColdReadIsHashedFromTheFetchedBytes) {
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode);
    CachedSourceOptions o = DaemonLike();
    o.readahead = false;  // the daemon's: fs/'s prefetcher reads ahead
    if (mode == 1) o.pass_stash_bytes = 2 * kTestChunk;
    OpenCache(1ull << 30, o);
    std::string data = RandomBytes(kTestChunk * 9 + 321, 1413 + mode);
    auto b = mode == 2 ? upstream_.AddBlobAs(Sha256Digest(data), WithChunkAltered(data, 6))
                       : upstream_.AddBlob(data);
    EXPECT_EQ(Read(b, 0, 4096), data.substr(0, 4096));
    ASSERT_OK(source_->Prefetch(b, 5 * kTestChunk, 4 * kTestChunk + 321));
    ASSERT_OK(source_->Prefetch(b, kTestChunk, 4 * kTestChunk));
    Status st;
    for (uint64_t c : {2, 1, 3, 5, 4, 6, 8, 7}) {
      std::string got = Read(b, c * kTestChunk, kTestChunk, &st);
      // Wrong bytes: the pass may have failed the blob already.
      if (mode != 2) {
        EXPECT_OK(st);
        EXPECT_EQ(got, data.substr(c * kTestChunk, kTestChunk)) << c;
      }
    }
    std::string tail = Read(b, 9 * kTestChunk, 321, &st);
    BlobCounters c = source_->Counters(b.digest);
    EXPECT_EQ(c.hashed_bytes, data.size());
    if (mode == 2) {
      EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
      EXPECT_TRUE(cache_->IsBad(b.digest));
    } else {
      EXPECT_OK(st);
      EXPECT_EQ(tail, data.substr(9 * kTestChunk));
      auto state = cache_->GetBlobState(b.digest);
      ASSERT_OK(state);
      EXPECT_TRUE(state->verified);
      auto chain = cache_->GetChunkChain(b.digest);
      ASSERT_OK(chain);
      ASSERT_TRUE(chain->has_value());
      EXPECT_EQ(**chain, ChunkChainOf(data));
    }
    if (mode == 1) {
      EXPECT_GT(c.reread_bytes, 0u);
    } else {
      EXPECT_EQ(c.reread_bytes, 0u);
    }
    ASSERT_TRUE(source_->WaitForVerifications());
    EXPECT_EQ(source_->Counters(b.digest).hashed_bytes, data.size());
    source_.reset();
    cache_.reset();
    std::filesystem::remove_all(dir_ + "/cache");
  }
}

// A read of the last chunk while the in-order pass lags far behind the
// reader (reads do not wait for it; here the chunks were cached before the
// pass started, so no fetch fed them to it) finishes the pass from where it
// is: every byte is hashed once, none twice by a second whole-blob check.
TEST_F(IntegrityTest, AReadOfTheLastChunkFinishesALaggingPass) {
  CachedSourceOptions o = DaemonLike();
  o.readahead = false;
  o.verify_complete = false;  // no background check racing the pass
  OpenCache(1ull << 30, o);
  // Longer than the 16 MiB a pass could lag before.
  std::string data = RandomBytes(24 * 1024 * 1024 + 99, 1416);
  auto b = upstream_.AddBlob(data);
  ASSERT_OK(source_->Prefetch(b, 0, b.size));
  EXPECT_EQ(Read(b, 0, 4096), data.substr(0, 4096));  // the pass starts
  EXPECT_EQ(Read(b, b.size - 1000, 1000), data.substr(b.size - 1000));
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->verified);
  BlobCounters c = source_->Counters(b.digest);
  EXPECT_EQ(c.hashed_bytes, data.size());
  EXPECT_EQ(c.reread_bytes, data.size() - 4096 - 1000);
}

// The chain the background check records (a blob completed out of order)
// checks every chunk refetched after eviction: the first (hashed from the
// initial state), a middle one (resumed from the state before it) and the
// short last one (whose check is the blob's digest).
TEST_F(IntegrityTest, AChainRecordedInTheBackgroundChecksEveryRefetchedChunk) {
  OpenCache(1ull << 30, DaemonLike());
  std::string data = RandomBytes(kTestChunk * 5 + 77, 1410);
  auto b = upstream_.AddBlob(data);
  for (uint64_t ch : {3, 1}) Read(b, ch * kTestChunk, kTestChunk);
  ASSERT_OK(source_->Prefetch(b, 0, kTestChunk));
  Read(b, 2 * kTestChunk, kTestChunk);
  ASSERT_OK(source_->Prefetch(b, 4 * kTestChunk, kTestChunk + 77));
  ASSERT_TRUE(source_->WaitForVerifications());
  auto chain = cache_->GetChunkChain(b.digest);
  ASSERT_OK(chain);
  ASSERT_TRUE(chain->has_value());
  EXPECT_EQ(**chain, ChunkChainOf(data));
  ASSERT_OK(cache_->Prune(0));  // every chunk evicted; the chain stays
  for (uint64_t ch = 0; ch <= 5; ++ch) {
    SCOPED_TRACE(ch);
    std::string bad = data;
    bad[ch * kTestChunk + (ch == 5 ? 70 : 777)] ^= 0x5a;
    upstream_.ReplaceContent(b.digest, bad);
    Status st;
    Read(b, ch * kTestChunk, 10, &st);
    EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  }
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_EQ(state->chunks_present, 0u);  // nothing wrong stored
  upstream_.ReplaceContent(b.digest, data);
  for (uint64_t ch = 0; ch <= 5; ++ch) {
    const uint64_t n = ch == 5 ? 77 : kTestChunk;
    EXPECT_EQ(Read(b, ch * kTestChunk, n), data.substr(ch * kTestChunk, n)) << ch;
  }
}

// A cache written before chunk chains (schema 3: a sha256 per chunk) forgets
// those hashes when opened: its blobs are verified again, never checked
// against hashes of another kind (which would reject every right byte).
TEST_F(IntegrityTest, PerChunkHashesOfAnOlderCacheAreForgottenAndTheBlobVerifiedAgain) {
  OpenCache(1ull << 30, DaemonLike());
  std::string data = RandomBytes(kTestChunk * 3 + 5, 1411);
  auto b = upstream_.AddBlob(data);
  ASSERT_OK(source_->FetchWhole(b));
  source_.reset();
  cache_.reset();
  std::string old_hashes;
  for (uint64_t off = 0; off < data.size(); off += kTestChunk) {
    old_hashes += Sha256Raw(std::string_view(data).substr(off, kTestChunk));
  }
  RawSql("ALTER TABLE blobs RENAME COLUMN chunk_chain TO chunk_sha256;"
         "UPDATE blobs SET chunk_sha256 = X'" + HexEncode(old_hashes) + "';"
         "UPDATE meta SET value = 3 WHERE key = 'schema_version'");
  OpenCache(1ull << 30, DaemonLike());
  EXPECT_EQ(QueryInt("SELECT value FROM meta WHERE key = 'schema_version'"), 4);
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_FALSE(state->verified);
  ASSERT_OK(cache_->Prune(0));
  EXPECT_EQ(Read(b, kTestChunk, kTestChunk), data.substr(kTestChunk, kTestChunk));
  ASSERT_OK(source_->FetchWhole(b));
  auto chain = cache_->GetChunkChain(b.digest);
  ASSERT_OK(chain);
  ASSERT_TRUE(chain->has_value());
  EXPECT_EQ(**chain, ChunkChainOf(data));
}

// Runs `f` on a thread; false if it has not returned within a generous bound
// (the old behaviour: a hang), in which case `release` is called to end it.
template <typename F>
bool ReturnsWithin(F f, std::chrono::seconds bound, const std::function<void()>& release) {
  std::packaged_task<void()> task(f);
  auto done = task.get_future();
  std::thread t(std::move(task));
  const bool ok = done.wait_for(bound) == std::future_status::ready;
  if (!ok) release();
  t.join();
  return ok;
}

// A read that only feeds the in-order pass does not wait while another
// thread holds the pass (here: stalled catching up from the cache); its
// bytes are caught up later, each byte is still hashed once, and the blob
// is verified when its last chunk is read.
TEST_F(IntegrityTest, AReadDoesNotWaitForAnotherThreadHashingThePass) {
  std::mutex mu;
  std::condition_variable cv;
  int file_reads = 0;
  bool stalled = false, release = false;
  CacheOptions opts = Options();
  opts.before_chunk_file_read = [&] {
    std::unique_lock<std::mutex> lock(mu);
    // The second chunk-file read is the pass catching up chunk 1 (the first
    // is that read's own chunk 2).
    if (++file_reads != 2) return;
    stalled = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  auto c = ChunkCache::Open(opts);
  ASSERT_OK(c);
  cache_ = std::move(c).value();
  CachedSourceOptions so = DaemonLike();
  so.readahead = false;
  so.small_random_fetches = false;
  source_ = std::make_unique<CachedBlobSource>(cache_.get(), &upstream_, so);
  std::string data = RandomBytes(kTestChunk * 6 + 50, 1412);
  auto b = upstream_.AddBlob(data);
  // Chunks 1-3 cached before the pass starts (so they are not fed to it as
  // they arrive: the pass catches them up from the cache).
  ASSERT_OK(source_->Prefetch(b, kTestChunk, 3 * kTestChunk));
  EXPECT_EQ(Read(b, 0, kTestChunk), data.substr(0, kTestChunk));  // the pass starts
  {
    std::lock_guard<std::mutex> lock(mu);
    file_reads = 0;
  }
  auto unblock = [&] {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
    cv.notify_all();
  };
  std::string got2;
  std::thread holder([&] { got2 = Read(b, 2 * kTestChunk, kTestChunk); });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return stalled; }));
  }
  std::string got3;
  EXPECT_TRUE(ReturnsWithin([&] { got3 = Read(b, 3 * kTestChunk, kTestChunk); },
                            std::chrono::seconds(20), unblock));
  unblock();
  holder.join();
  EXPECT_EQ(got2, data.substr(2 * kTestChunk, kTestChunk));
  EXPECT_EQ(got3, data.substr(3 * kTestChunk, kTestChunk));
  for (uint64_t off = 4 * kTestChunk; off < data.size(); off += kTestChunk) {
    const uint64_t n = std::min<uint64_t>(kTestChunk, data.size() - off);
    EXPECT_EQ(Read(b, off, n), data.substr(off, n)) << off;
  }
  auto state = cache_->GetBlobState(b.digest);
  ASSERT_OK(state);
  EXPECT_TRUE(state->verified);
  EXPECT_EQ(source_->Counters(b.digest).hashed_bytes, data.size());
}

TEST_F(IntegrityTest, WaitersOnAStalledFetchGiveUpAfterTheWaitTimeout) {
  CachedSourceOptions o = DaemonLike();
  o.readahead = false;
  o.wait_timeout = std::chrono::milliseconds(200);
  OpenCache(1ull << 30, o);
  std::string data = RandomBytes(kTestChunk * 3, 1405);
  auto b = upstream_.AddBlob(data);
  upstream_.HoldRequests();
  Status leader_st;
  std::thread leader([&] { Read(b, 0, 100, &leader_st); });
  ASSERT_TRUE(upstream_.WaitForRequests(1, std::chrono::seconds(30)));
  Status waiter_st;
  EXPECT_TRUE(ReturnsWithin([&] { Read(b, 50, 100, &waiter_st); }, std::chrono::seconds(20),
                            [&] { upstream_.ReleaseRequests(); }));
  EXPECT_EQ(waiter_st.code(), Code::kTransient) << waiter_st.ToString();
  upstream_.ReleaseRequests();
  leader.join();
  EXPECT_OK(leader_st);
  EXPECT_EQ(Read(b, 50, 100), data.substr(50, 100));
}

TEST_F(IntegrityTest, WaitersOnAStalledWholeBlobCheckGiveUpAfterTheWaitTimeout) {
  CachedSourceOptions o = DaemonLike();
  o.readahead = false;
  o.wait_timeout = std::chrono::milliseconds(200);
  OpenCache(1ull << 30, o);
  std::string data = RandomBytes(kTestChunk * 3, 1406);
  auto b = upstream_.AddBlob(data);
  upstream_.HoldRequests();
  Status leader_st;
  // A read of the last chunk: the whole blob is checked first (and stalls).
  std::thread leader([&] { Read(b, 2 * kTestChunk, 100, &leader_st); });
  ASSERT_TRUE(upstream_.WaitForRequests(1, std::chrono::seconds(30)));
  Status waiter_st;
  EXPECT_TRUE(ReturnsWithin([&] { Read(b, 2 * kTestChunk + 50, 100, &waiter_st); },
                            std::chrono::seconds(20), [&] { upstream_.ReleaseRequests(); }));
  EXPECT_EQ(waiter_st.code(), Code::kTransient) << waiter_st.ToString();
  upstream_.ReleaseRequests();
  leader.join();
  // The leader, released, may finish its check or be past its budget.
  if (!leader_st.ok()) {
    EXPECT_EQ(leader_st.code(), Code::kTransient) << leader_st.ToString();
  }
  EXPECT_EQ(Read(b, 2 * kTestChunk + 50, 100), data.substr(2 * kTestChunk + 50, 100));
}

}  // namespace
}  // namespace regfs::testing
