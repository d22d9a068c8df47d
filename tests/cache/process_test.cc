// Tests with more than one process: a writer killed with SIGKILL mid-write,
// two processes sharing one database, a read-only cache directory.
//
// The child processes are this test binary re-executed with
// REGFS_CACHE_TEST_CHILD set: a static initializer below runs the child's job
// and _exits before gtest's main ever starts.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "tests/cache/cache_test_util.h"

extern char** environ;

namespace regfs::testing {
namespace {

constexpr int kChildFd = 100;  // where a child finds its end of the pipe
constexpr int kCrashBlobs = 24;
constexpr uint64_t kCrashCap = 3ull << 20;

// The blobs the crash writer stores: deterministic, so the parent can check them.
std::string CrashBlob(int k) { return RandomBytes(kTestChunk * 5 - 1000 * k, 5000 + k); }

// Blobs for the two-process test: "shared" ones both read, and each side's own.
std::string ShareBlob(const std::string& who, int k) {
  uint64_t base = who == "shared" ? 7000 : who == "child" ? 8000 : 9000;
  return RandomBytes(kTestChunk * 7 + 333 * k, base + k);
}

CacheOptions ChildOptions(const std::string& dir, uint64_t max_size) {
  CacheOptions o;
  o.dir = dir;
  o.chunk_size = kTestChunk;
  o.max_size = max_size;
  return o;
}

void Signal(int fd) {
  char c = 'x';
  if (write(fd, &c, 1) != 1) _exit(90);
  close(fd);
}

// Writes chunks, evicts, records verification, forever (until killed).
int CrashWriterMain(const std::string& dir) {
  auto c = ChunkCache::Open(ChildOptions(dir, kCrashCap));
  if (!c.ok() || !(*c)->writable()) return 10;
  ChunkCache& cache = **c;
  bool signalled = false;
  for (int i = 0; i < 100000; ++i) {
    const int k = i % kCrashBlobs;
    std::string data = CrashBlob(k);
    BlobDescriptor b{"application/octet-stream", Sha256Digest(data), data.size()};
    std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    if (!cache.PutChunks(b, 0, bytes).ok()) return 11;
    if (i % 3 == 0) {
      if (!cache.SetVerified(b, ChunkChainOf(data)).ok()) return 12;
    }
    if (i % 5 == 0 && !cache.PutLayerIndex(b.digest, "test/v1", data.substr(0, 5000)).ok())
      return 13;
    std::vector<uint8_t> out(100);
    if (!cache.ReadChunk(b.digest, 1, 10, out).ok()) return 14;
    if (!signalled) {
      Signal(kChildFd);
      signalled = true;
    }
  }
  return 0;
}

// Reads every blob of `who` and the shared ones through the cache, checking bytes.
int ReadBlobs(const std::string& dir, const std::string& who) {
  auto c = ChunkCache::Open(ChildOptions(dir, 1ull << 30));
  if (!c.ok() || !(*c)->writable()) return 20;
  FakeBlobSource upstream;
  std::vector<std::pair<BlobDescriptor, std::string>> blobs;
  for (int k = 0; k < 4; ++k) {
    for (const std::string& w : {who, std::string("shared")}) {
      std::string d = ShareBlob(w, k);
      blobs.emplace_back(upstream.AddBlob(d), d);
    }
  }
  CachedBlobSource source(c->get(), &upstream);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < blobs.size(); ++i) {
        const auto& [b, d] = blobs[(i + t * 3) % blobs.size()];
        for (uint64_t off = 0; off < d.size(); off += 50000) {
          size_t n = std::min<uint64_t>(50000, d.size() - off);
          std::string out(n, '\0');
          Status st = source.ReadAt(b, off, {reinterpret_cast<uint8_t*>(out.data()), n});
          if (!st.ok() || out != d.substr(off, n)) ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  return bad.load() ? 21 : 0;
}

// In a read-only directory: every read still answered, a warning logged.
int ReadOnlyMain(const std::string& dir) {
  if (geteuid() == 0) {
    // Root writes anywhere; drop to nobody so that the mode bits bind.
    if (setgid(65534) != 0 || setuid(65534) != 0) return 30;
  }
  std::FILE* log = tmpfile();
  if (!log) return 31;
  SetLogFile(log);
  auto c = ChunkCache::Open(ChildOptions(dir, 1ull << 30));
  if (!c.ok()) return 32;
  if ((*c)->writable()) return 33;
  FakeBlobSource upstream;
  std::string d = RandomBytes(kTestChunk * 3 + 5, 42);
  BlobDescriptor b = upstream.AddBlob(d);
  CachedBlobSource source(c->get(), &upstream);
  for (int round = 0; round < 2; ++round) {
    std::string out(d.size(), '\0');
    if (!source.ReadAt(b, 0, {reinterpret_cast<uint8_t*>(out.data()), out.size()}).ok())
      return 34;
    if (out != d) return 35;
  }
  c->reset();
  SetLogFile(nullptr);
  std::rewind(log);
  char buf[4096] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, log);
  std::fclose(log);
  if (std::string(buf, n).find("warning") == std::string::npos) return 36;
  return 0;
}

int RunChildIfAsked() {
  const char* mode = std::getenv("REGFS_CACHE_TEST_CHILD");
  if (!mode) return 0;
  const char* dir_env = std::getenv("REGFS_CACHE_TEST_DIR");
  std::string m = mode, dir = dir_env ? dir_env : "";
  int rc = 99;
  if (m == "crash-writer") rc = CrashWriterMain(dir);
  else if (m == "share") {
    rc = ReadBlobs(dir, "child");
    if (rc == 0) Signal(kChildFd);
  } else if (m == "readonly") rc = ReadOnlyMain(dir);
  _exit(rc);
}
[[maybe_unused]] const int kChildHook = RunChildIfAsked();

// fork + exec of this binary in child mode. `fd` (or -1) becomes kChildFd there.
pid_t SpawnChild(const std::string& mode, const std::string& dir, int fd) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  env.push_back("REGFS_CACHE_TEST_CHILD=" + mode);
  env.push_back("REGFS_CACHE_TEST_DIR=" + dir);
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  char* argv[] = {self.data(), nullptr};
  pid_t pid = fork();
  if (pid == 0) {
    if (fd >= 0 && dup2(fd, kChildFd) < 0) _exit(126);
    execve(self.c_str(), argv, envp.data());
    _exit(127);
  }
  return pid;
}

// Waits (bounded) for one byte on fd; false on timeout or EOF.
bool WaitByte(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return false;
  char c;
  return read(fd, &c, 1) == 1;
}

struct Pipe {
  Pipe() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
      r = fds[0];
      w = fds[1];
    }
  }
  ~Pipe() {
    if (r >= 0) close(r);
    CloseWrite();
  }
  void CloseWrite() {
    if (w >= 0) close(w);
    w = -1;
  }
  int r = -1, w = -1;
};

class ProcessTest : public CacheTest {};

TEST_F(ProcessTest, SigkillMidWriteLeavesAConsistentDatabase) {
  std::mt19937 rng(7);
  int killed = 0;
  for (int round = 0; round < 20; ++round) {
    Pipe p;
    ASSERT_GE(p.r, 0);
    pid_t pid = SpawnChild("crash-writer", dir_ + "/cache", p.w);
    ASSERT_GT(pid, 0);
    p.CloseWrite();
    bool started = WaitByte(p.r, 60000);
    if (started) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(started) << "writer never stored anything; status " << status;
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer ended on its own with status " << status;
    ++killed;
  }
  EXPECT_EQ(killed, 20);

  OpenCache(kCrashCap);
  ASSERT_TRUE(cache_->writable());
  auto ic = cache_->IntegrityCheck();
  ASSERT_OK(ic);
  EXPECT_EQ(*ic, "ok");
  // Bookkeeping kept by triggers agrees with the rows.
  EXPECT_EQ(QueryInt("SELECT bytes FROM totals"), QueryInt("SELECT total(size) FROM chunks"));
  EXPECT_EQ(QueryInt("SELECT chunks FROM totals"), QueryInt("SELECT count(*) FROM chunks"));
  EXPECT_EQ(QueryInt("SELECT count(*) FROM blobs b WHERE present != "
                     "(SELECT count(*) FROM chunks c WHERE c.blob_id = b.id)"),
            0);
  const int64_t rows = QueryInt("SELECT count(*) FROM chunks");
  EXPECT_LE(static_cast<uint64_t>(QueryInt("SELECT bytes FROM totals")), kCrashCap);

  // Every cached chunk holds exactly the right bytes.
  uint64_t hits = 0;
  for (int k = 0; k < kCrashBlobs; ++k) {
    std::string d = CrashBlob(k);
    std::string digest = Sha256Digest(d);
    for (uint64_t idx = 0; idx * kTestChunk < d.size(); ++idx) {
      size_t n = std::min<uint64_t>(kTestChunk, d.size() - idx * kTestChunk);
      std::string out(n, '\0');
      auto r = cache_->ReadChunk(digest, idx, 0, {reinterpret_cast<uint8_t*>(out.data()), n});
      ASSERT_OK(r);
      if (*r) {
        ++hits;
        EXPECT_EQ(out, d.substr(idx * kTestChunk, n)) << k << "/" << idx;
      }
    }
  }
  EXPECT_GT(hits, 0u);
  // Bytes are written before the row that vouches for them, so a kill never
  // leaves a row without its bytes: every row is a hit.
  EXPECT_EQ(static_cast<int64_t>(hits), rows);
  // And full reads through the read path return the blobs (these refetch and
  // evict, so they come after the chunk-by-chunk check).
  for (int k = 0; k < kCrashBlobs; ++k) {
    std::string d = CrashBlob(k);
    BlobDescriptor b = upstream_.AddBlob(d);
    EXPECT_EQ(Read(b, 0, d.size()), d) << k;
  }
}

TEST_F(ProcessTest, TwoProcessesShareOneDatabase) {
  Pipe p;
  ASSERT_GE(p.r, 0);
  pid_t pid = SpawnChild("share", dir_ + "/cache", p.w);
  ASSERT_GT(pid, 0);
  p.CloseWrite();
  int mine = ReadBlobs(dir_ + "/cache", "parent");
  bool child_ok = WaitByte(p.r, 120000);
  int status = 0;
  if (!child_ok) kill(pid, SIGKILL);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_EQ(mine, 0);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(child_ok);

  // What the child stored serves this process with no upstream at all.
  OpenCache();
  upstream_.FailNext(1000000, Status::Transient("offline"));
  for (int k = 0; k < 4; ++k) {
    for (const char* who : {"child", "shared", "parent"}) {
      std::string d = ShareBlob(who, k);
      BlobDescriptor b = upstream_.AddBlob(d);
      auto st = cache_->GetBlobState(b.digest);
      ASSERT_OK(st);
      EXPECT_TRUE(st->complete()) << who << k;
      EXPECT_TRUE(st->verified) << who << k;
      EXPECT_EQ(Read(b, 0, d.size()), d) << who << k;
    }
  }
  EXPECT_EQ(upstream_.requests(), 0u);
  auto ic = cache_->IntegrityCheck();
  ASSERT_OK(ic);
  EXPECT_EQ(*ic, "ok");
}

TEST_F(ProcessTest, ReadOnlyCacheDirFallsBackToUpstream) {
  // Case 1: an existing database in a directory that became read-only.
  OpenCache();
  std::string d = RandomBytes(kTestChunk * 2, 43);
  BlobDescriptor b = upstream_.AddBlob(d);
  EXPECT_EQ(Read(b, 0, d.size()), d);
  source_.reset();
  cache_.reset();
  // Case 2: an empty read-only directory.
  ASSERT_EQ(mkdir((dir_ + "/empty").c_str(), 0555), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  for (std::string sub : {"cache", "empty"}) {
    std::string path = dir_ + "/" + sub;
    ASSERT_EQ(chmod(path.c_str(), 0555), 0);
    if (sub == "cache") {
      for (const char* f : {"/cache.db", "/cache.db-wal", "/cache.db-shm"}) chmod((path + f).c_str(), 0444);
    }
    pid_t pid = SpawnChild("readonly", path, -1);
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 0) << sub << " (exit codes: see ReadOnlyMain)";
    chmod(path.c_str(), 0755);
  }
  // The read-only directory got nothing new and the database is intact.
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/empty/cache.db"));
  for (const char* f : {"/cache.db", "/cache.db-wal", "/cache.db-shm"}) chmod((dir_ + "/cache" + f).c_str(), 0644);
  OpenCache();
  auto ic = cache_->IntegrityCheck();
  ASSERT_OK(ic);
  EXPECT_EQ(*ic, "ok");
  upstream_.ResetCounters();
  EXPECT_EQ(Read(b, 0, d.size()), d);
  EXPECT_EQ(upstream_.requests(), 0u);
}

}  // namespace
}  // namespace regfs::testing
