// `regfs mount` for real: the regfs binary against Debian's docker-registry,
// read with ordinary tools (sha256sum, cat) and system calls.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <dirent.h>
#include <nlohmann/json.hpp>
#include <fstream>
#include <sstream>
#include <thread>

#include "reader/base/digest.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"
#include "tests/integration/regfs_fixture.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT

int CountFdsOf(pid_t pid, int* sockets) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  *sockets = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    ++n;
    char target[256];
    ssize_t len = readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
    if (len > 0) {
      target[len] = 0;
      if (std::string(target).rfind("socket:", 0) == 0) ++*sockets;
    }
  }
  closedir(d);
  return n;
}

class MountTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs();
    if (IsSkipped() || HasFatalFailure()) return;
    ImagePusher pusher(*registry_);
    ImageSpec spec;
    spec.layers.push_back({SampleEntries("a"), Compression::kGzip});
    spec.layers.push_back({SampleEntries("b"), Compression::kZstd});
    spec.layers.push_back({SampleEntries("c"), Compression::kNone});
    image_ = BuildImage(spec);
    ASSERT_OK(pusher.PushImage("test/app", "v1", image_));
    auto big = pusher.PushRandomBlob("test/big", 24 << 20, 42, "v1");
    ASSERT_OK(big);
    big_ = *big;
  }

  BuiltImage image_;
  BlobDescriptor big_;
};

TEST_F(MountTest, Sha256sumOfBlobsEqualsTheirDigests) {
  CommandResult m = Mount(registry_->Ref("test/app", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  ASSERT_TRUE(IsMountPoint(mnt_));
  std::string manifest, config;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &manifest));
  EXPECT_EQ(manifest, image_.manifest);
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/config.json", &config));
  EXPECT_EQ(config, image_.config);
  // The mount's kernel read-ahead is raised to 4 MiB (root: this test runs as root).
  std::string ra;
  CommandResult dev = RunCommand({"mountpoint", "-d", mnt_});
  ASSERT_EQ(dev.exit_code, 0) << dev.output;
  while (!dev.output.empty() && dev.output.back() == '\n') dev.output.pop_back();
  ASSERT_TRUE(ReadWholeFile("/sys/class/bdi/" + dev.output + "/read_ahead_kb", &ra));
  EXPECT_EQ(ra, "4096\n");
  CommandResult sums = RunShell("cd '" + mnt_ + "/blobs' && sha256sum *");
  ASSERT_EQ(sums.exit_code, 0) << sums.output;
  for (const BuiltLayer& l : image_.layers) {
    std::string hex = l.descriptor.digest.substr(7);
    EXPECT_NE(sums.output.find(hex + "  " + l.descriptor.digest), std::string::npos)
        << sums.output;
  }
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  auto j = nlohmann::json::parse(status);
  ASSERT_EQ(j["layers"].size(), 3u);
  EXPECT_EQ(j["layers"][0]["percentCached"].get<double>(), 100.0) << status;
  // Whole blobs in the cache get their digests checked in the background
  // (FUSE reads arrive out of order). Bounded wait: 600 x 50 ms.
  bool all_verified = false;
  for (int i = 0; i < 600 && !all_verified; ++i) {
    if (i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
    j = nlohmann::json::parse(status);
    all_verified = true;
    for (const auto& l : j["layers"]) all_verified = all_verified && l["digestVerified"].get<bool>();
  }
  EXPECT_TRUE(all_verified) << status;
  Umount();
}

TEST_F(MountTest, BigBlobReadsBackAndIsCachedForASecondMount) {
  std::string ref = registry_->Ref("test/big", "v1");
  CommandResult m = Mount(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  CommandResult sum = RunCommand({"sha256sum", mnt_ + "/blobs/" + big_.digest});
  EXPECT_EQ(sum.output.substr(0, 64), big_.digest.substr(7)) << sum.output;
  Umount();
  int blob_gets = registry_->CountRequests("GET", "/blobs/" + big_.digest);
  EXPECT_GT(blob_gets, 0);
  // The whole blob is cached now: a second mount reads it with the registry
  // answering only the manifest and config.
  m = Mount(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  sum = RunCommand({"sha256sum", mnt_ + "/blobs/" + big_.digest});
  EXPECT_EQ(sum.output.substr(0, 64), big_.digest.substr(7)) << sum.output;
  Umount();
  EXPECT_EQ(registry_->CountRequests("GET", "/blobs/" + big_.digest), blob_gets);
}

TEST_F(MountTest, RegistryGoesAwayAndComesBack) {
  // No read-ahead threads: their 16 MiB jobs could fetch the "uncached"
  // offset below before the registry stops.
  CommandResult m = Mount(registry_->Ref("test/big", "v1"),
                          {"--retry-timeout", "3", "--readahead-threads", "0"});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::string path = mnt_ + "/blobs/" + big_.digest;
  std::string head(1 << 20, '\0');
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pread(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
  std::string want(1 << 20, '\0');
  FillDeterministic(42, 0, std::span(reinterpret_cast<uint8_t*>(want.data()), want.size()));
  EXPECT_EQ(head, want);
  close(fd);

  registry_->Stop();
  // Cached bytes are still served (a fresh open: the page cache is dropped).
  ASSERT_EQ(RunShell("echo 3 > /proc/sys/vm/drop_caches").exit_code, 0);
  fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string again(4096, '\0');
  EXPECT_EQ(pread(fd, again.data(), again.size(), 0), 4096);
  EXPECT_EQ(again, want.substr(0, 4096));
  // Uncached bytes fail with EIO, in bounded time, and the daemon stays up.
  auto t0 = std::chrono::steady_clock::now();
  char buf[4096];
  errno = 0;
  EXPECT_EQ(pread(fd, buf, sizeof buf, 20 << 20), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60))
      << "a bound, not a speed target: the retry budget is 3 s";
  ASSERT_OK(registry_->Restart());
  std::string tail(4096, '\0');
  EXPECT_EQ(pread(fd, tail.data(), tail.size(), 20 << 20), 4096) << DaemonLog();
  std::string want_tail(4096, '\0');
  FillDeterministic(42, 20 << 20,
                    std::span(reinterpret_cast<uint8_t*>(want_tail.data()), want_tail.size()));
  EXPECT_EQ(tail, want_tail);
  close(fd);
  Umount();
}

TEST_F(MountTest, TenThousandOpenFilesHoldNoConnectionsOrFds) {
  CommandResult m = Mount(registry_->Ref("test/app", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  ASSERT_GT(pid, 0);
  rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rlimit raised = rl;
  raised.rlim_cur = std::max<rlim_t>(rl.rlim_cur, 12000);
  if (raised.rlim_max < raised.rlim_cur) raised.rlim_max = raised.rlim_cur;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &raised), 0);
  std::vector<int> fds;
  const auto& layers = image_.layers;
  for (int i = 0; i < 10000; ++i) {
    std::string p = mnt_ + "/blobs/" + layers[i % layers.size()].descriptor.digest;
    int fd = open(p.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << i << ": " << strerror(errno);
    fds.push_back(fd);
  }
  // Read a little through each of a sample, so the daemon really serves them.
  for (size_t i = 0; i < fds.size(); i += 97) {
    char c;
    ASSERT_EQ(pread(fds[i], &c, 1, 0), 1);
  }
  int sockets = 0;
  int daemon_fds = CountFdsOf(pid, &sockets);
  EXPECT_GT(daemon_fds, 0);
  EXPECT_LT(daemon_fds, 100) << "with 10,000 files open";
  // The pool's connections, and the socket to the daemon's holder.
  EXPECT_LE(sockets, 8 + 1) << "connections beyond the pool size";
  for (int fd : fds) close(fd);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
  Umount();
}

TEST_F(MountTest, SigtermLeavesNoMount) {
  CommandResult m = Mount(registry_->Ref("test/app", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  for (int i = 0; i < 200 && (kill(pid, 0) == 0 || IsMountPoint(mnt_)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(kill(pid, 0), 0) << "daemon still running\n" << DaemonLog();
  EXPECT_FALSE(IsMountPoint(mnt_));
}

TEST_F(MountTest, DeadDaemonMountIsClearedByUmount) {
  CommandResult m = Mount(registry_->Ref("test/app", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  ASSERT_GT(pid, 0);
  // The holder keeps the mount alive and starts a successor
  // (restart_test.cc): it goes first, so that the daemon dies for good.
  pid_t holder = -1;
  {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    char state;
    rest >> state >> holder;
  }
  ASSERT_GT(holder, 1);
  ASSERT_EQ(kill(holder, SIGKILL), 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  for (int i = 0; i < 200 && kill(pid, 0) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // A name never looked up goes to the (dead) daemon: the mount is stale.
  struct stat st;
  EXPECT_EQ(stat((mnt_ + "/never-looked-up").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOTCONN);
  Umount();
}

TEST_F(MountTest, BadInputFailsClearlyAndMountsNothing) {
  struct Case {
    std::string ref;
    std::vector<std::string> extra;
    std::string expect;
  };
  int dead_port = registry_->port();
  std::vector<Case> cases = {
      {"Foo", {}, "must be lowercase"},
      {"test/app:bad:tag", {}, "invalid reference"},
      {registry_->Ref("test/nope", "v1"), {}, "NotFound"},
      {registry_->Ref("test/app", "nope"), {}, "NotFound"},
      {"127.0.0.1:1/test/app:v1", {"--retry-timeout", "2"}, "cannot resolve"},
      {registry_->Ref("test/app", "v1"), {"--platform", "bogus"}, "platform"},
  };
  (void)dead_port;
  for (const Case& c : cases) {
    CommandResult m = Mount(c.ref, c.extra);
    EXPECT_NE(m.exit_code, 0) << c.ref;
    EXPECT_NE(m.output.find(c.expect), std::string::npos) << c.ref << ": " << m.output;
    EXPECT_FALSE(IsMountPoint(mnt_)) << c.ref;
    if (IsMountPoint(mnt_)) Umount();
  }
}

}  // namespace
}  // namespace regfs

namespace regfs {
namespace {

// `mount -t fuse.regfs` and an /etc/fstab line go through mount.fuse3, which
// runs `regfs REF DIR -o OPTS` found on root's PATH.
TEST_F(MountTest, MountHelperAndFstab) {
  if (geteuid() != 0) GTEST_SKIP() << "mount(8) with a FUSE helper needs root here";
  const std::string link = "/usr/local/bin/regfs";
  struct stat st;
  bool existed = lstat(link.c_str(), &st) == 0;
  if (!existed) {
    ASSERT_EQ(symlink(REGFS_BINARY, link.c_str()), 0) << strerror(errno);
  }
  struct RemoveLink {
    bool remove;
    std::string path;
    ~RemoveLink() {
      if (remove) unlink(path.c_str());
    }
  } remove_link{!existed, link};
  std::string opts = "tls-verify=false,cache-dir=" + cache_;
  CommandResult m = RunCommand({"mount", "-t", "fuse.regfs", registry_->Ref("test/app", "v1"),
                                mnt_, "-o", opts});
  EXPECT_EQ(m.exit_code, 0) << m.output;
  std::string manifest;
  EXPECT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &manifest));
  EXPECT_EQ(manifest, image_.manifest);
  CommandResult u = RunCommand({"umount", mnt_});
  EXPECT_EQ(u.exit_code, 0) << u.output;
  EXPECT_FALSE(IsMountPoint(mnt_));

  // The same through a temporary fstab (mount -T names the file).
  std::string fstab = dir_->Sub("fstab");
  FILE* f = fopen(fstab.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fprintf(f, "%s %s fuse.regfs ro,noauto,%s 0 0\n", registry_->Ref("test/app", "v1").c_str(),
          mnt_.c_str(), opts.c_str());
  fclose(f);
  m = RunCommand({"mount", "-T", fstab, mnt_});
  EXPECT_EQ(m.exit_code, 0) << m.output;
  EXPECT_TRUE(IsMountPoint(mnt_));
  u = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(u.exit_code, 0) << u.output;
}

}  // namespace
}  // namespace regfs

namespace regfs {
namespace {

TEST_F(MountTest, CacheStatsAndPrune) {
  CommandResult m = Mount(registry_->Ref("test/app", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  CommandResult sums = RunShell("cat '" + mnt_ + "'/blobs/* > /dev/null && ls '" + mnt_ +
                                "/rootfs' > /dev/null");
  ASSERT_EQ(sums.exit_code, 0) << sums.output;
  pid_t pid = DaemonPid();
  Umount();
  // The daemon records its run's hits when it closes the cache, after the
  // umount returned: wait (bounded) until it has exited.
  for (int i = 0; i < 500 && pid > 0; ++i) {
    std::string stat;
    bool zombie = ReadWholeFile("/proc/" + std::to_string(pid) + "/stat", &stat) &&
                  stat.find(") Z ") != std::string::npos;
    if (kill(pid, 0) != 0 || zombie) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto stats = [&] {
    CommandResult r = RunCommand({REGFS_BINARY, "cache", "stats", "--json", "--cache-dir", cache_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    return j.is_discarded() ? nlohmann::json::object() : j;
  };
  nlohmann::json before = stats();
  uint64_t blob_bytes = 0;
  for (const auto& l : image_.layers) blob_bytes += l.descriptor.size;
  // The three layer blobs, and the single-frame zstd layer's tar kept
  // decompressed (under its diff_id) for random access.
  EXPECT_GT(before.value("bytes", 0ull), blob_bytes) << before.dump();
  EXPECT_EQ(before.value("completeBlobs", 0), 4) << before.dump();
  EXPECT_EQ(before.value("layerIndexes", 0), 3) << before.dump();
  EXPECT_GT(before.value("lastRunHits", 0), 0) << before.dump();
  // --chunks-only: the bytes go, the layer indexes stay (a later mount lists
  // at once).
  CommandResult pc = RunCommand({REGFS_BINARY, "cache", "prune", "--chunks-only", "--max-size", "0",
                                 "--cache-dir", cache_});
  EXPECT_EQ(pc.exit_code, 0) << pc.output;
  nlohmann::json chunks_gone = stats();
  EXPECT_EQ(chunks_gone.value("bytes", 1ull), 0u) << chunks_gone.dump();
  EXPECT_EQ(chunks_gone.value("layerIndexes", 0), 3) << "indexes are kept: " << chunks_gone.dump();
  CommandResult p = RunCommand({REGFS_BINARY, "cache", "prune", "--max-size", "0", "--cache-dir",
                                cache_});
  EXPECT_EQ(p.exit_code, 0) << p.output;
  nlohmann::json after = stats();
  EXPECT_EQ(after.value("bytes", 1ull), 0u) << after.dump();
  // The cap counts everything regfs keeps: under a cap of 0 the layer
  // indexes go too (the least recently used first), not only the chunks.
  EXPECT_LT(after.value("layerIndexes", 0), before.value("layerIndexes", 0)) << after.dump();
  CommandResult bad = RunCommand({REGFS_BINARY, "cache", "prune", "--max-size", "lots",
                                  "--cache-dir", cache_});
  EXPECT_NE(bad.exit_code, 0);
}

}  // namespace
}  // namespace regfs
