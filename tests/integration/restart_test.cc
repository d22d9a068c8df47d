// Restarts without breaking readers (issue 17): a process reads files
// through `regfs mount` in a loop, with open fds and its cwd on the mount,
// while the daemon is SIGKILLed three times; the holder starts a successor
// that takes the session over. Every read must return the right bytes (a
// delay is allowed, and printed); no ENOTCONN, no stale mount.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "reader/base/unique_fd.h"
#include "tests/integration/regfs_fixture.h"
#include "tests/support/fault_server.h"
#include "tests/support/image_builder.h"
#include "tests/support/restart_reader.h"

namespace regfs::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string Pseudorandom(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class RestartTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs("mounting");
    if (IsSkipped() || HasFatalFailure()) return;
    for (int i = 0; i < 3; ++i) {
      std::string big = Pseudorandom((3u << 20) + 12345u * i, 100 + i);
      std::string small = "small file of layer " + std::to_string(i) + "\n";
      bigs_.push_back(big);
      smalls_.push_back(small);
      LayerSpec l;
      l.entries = {TarEntry::Dir("d"), TarEntry::File("d/big" + std::to_string(i), big),
                   TarEntry::File("d/small", small)};
      l.compression = Compression::kGzip;
      spec_.layers.push_back(std::move(l));
    }
    image_ = BuildImage(spec_);
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/restart", "v1", image_));
  }

  ImageSpec spec_;
  BuiltImage image_;
  std::vector<std::string> bigs_, smalls_;
};

// The reader: only system calls and memcmp after the fork (the test
// process has threads). Checks, each iteration, with the page cache of
// its files dropped so that the reads reach the daemon:
//   1 pread of an fd opened before the kills (layers/0/d/big0)
//   2 pread of an fd in rootfs/ (rootfs/d/big2)
//   3 pread of a blob (blobs/<layer 1>)
//   4 open + read of "big1" relative to the cwd (layers/1/d), closed again
//   5 open + read of an absolute path (layers/2/d/small)
//   6 fstat of fd 1: the same inode number as before
//   7 read of status.json through a handle opened before the kills
struct ReaderPlan {
  std::string cwd, big0, rootfs_big2, blob1, small2, status;
  const std::string* want_big0;
  const std::string* want_big1;
  const std::string* want_big2;
  const std::string* want_blob1;
  const std::string* want_small2;
};

[[noreturn]] void RunReader(const ReaderPlan& p, ReaderShared* sh) {
  if (chdir(p.cwd.c_str()) != 0) {
    sh->Fail(100, errno);
    _exit(1);
  }
  int fa = open(p.big0.c_str(), O_RDONLY | O_CLOEXEC);
  int fr = open(p.rootfs_big2.c_str(), O_RDONLY | O_CLOEXEC);
  int fb = open(p.blob1.c_str(), O_RDONLY | O_CLOEXEC);
  int fs = open(p.status.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st0;
  if (fa < 0 || fr < 0 || fb < 0 || fs < 0 || fstat(fa, &st0) != 0) {
    sh->Fail(101, errno);
    _exit(1);
  }
  static char buf[256 << 10];
  RunIterations(sh, [&](uint64_t i) {
    CheckPreadAt(sh, 1, fa, *p.want_big0, i, buf);
    CheckPreadAt(sh, 2, fr, *p.want_big2, i, buf);
    CheckPreadAt(sh, 3, fb, *p.want_blob1, i, buf);
    CheckOpenAndRead(sh, 4, "big1", *p.want_big1, buf, sizeof buf);
    CheckOpenAndRead(sh, 5, p.small2.c_str(), *p.want_small2, buf, sizeof buf);
    struct stat st;
    if (fstat(fa, &st) != 0) {
      sh->Fail(6, errno);
    } else if (st.st_ino != st0.st_ino) {
      sh->Fail(6, 0);
    }
    ssize_t n = pread(fs, buf, sizeof buf, 0);
    if (n <= 0 || buf[0] != '{') sh->Fail(7, n < 0 ? errno : 0);
  });
  close(fa);
  close(fr);
  close(fb);
  close(fs);
  _exit(0);
}

TEST_F(RestartTest, ReadersSeeADelayNotAnErrorAcrossThreeSigkills) {
  CommandResult m = Mount(registry_->Ref("test/restart", "v1"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t daemon = DaemonPid();
  ASSERT_GT(daemon, 0);
  pid_t holder = ParentOf(daemon);
  ASSERT_GT(holder, 1);
  EXPECT_EQ(Comm(holder), "regfs-holder");
  {
    std::ifstream status("/proc/" + std::to_string(holder) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmRSS:", 0) == 0) std::printf("holder %s\n", line.c_str());
    }
  }

  ReaderPlan plan;
  plan.cwd = mnt_ + "/layers/1/d";
  plan.big0 = mnt_ + "/layers/0/d/big0";
  plan.rootfs_big2 = mnt_ + "/rootfs/d/big2";
  plan.blob1 = mnt_ + "/blobs/" + image_.layers[1].descriptor.digest;
  plan.small2 = mnt_ + "/layers/2/d/small";
  plan.status = mnt_ + "/.regfs/status.json";
  plan.want_big0 = &bigs_[0];
  plan.want_big1 = &bigs_[1];
  plan.want_big2 = &bigs_[2];
  plan.want_blob1 = &image_.layers[1].blob;
  plan.want_small2 = &smalls_[2];

  ReaderProcess reader;
  ASSERT_TRUE(reader.mapped());
  ReaderShared* sh = reader.shared();
  ASSERT_TRUE(reader.Start([&plan](ReaderShared* shared) { RunReader(plan, shared); }));
  EXPECT_TRUE(reader.WaitIterations(20, 60)) << "the reader does not progress";

  std::vector<double> gaps;
  for (int round = 0; round < 3 && sh->errors.load() == 0; ++round) {
    pid_t old = ChildOf(holder);
    ASSERT_GT(old, 0) << "no daemon under the holder\n" << DaemonLog();
    // The reader goes on once a successor serves: the gap is until its next
    // completed iteration after the kill.
    double gap = KillAndWaitForProgress(
        old, [sh] { return sh->iterations.load(); }, [sh] { return sh->errors.load() != 0; });
    ASSERT_GE(gap, 0) << "no reads after kill " << round + 1 << "\n" << DaemonLog();
    pid_t successor = ChildOf(holder);
    EXPECT_GT(successor, 0);
    EXPECT_NE(successor, old);
    gaps.push_back(gap);
    std::printf("restart %d: daemon %d killed, successor %d, reader resumed after %.3f s\n",
                round + 1, old, successor, gap);
    EXPECT_TRUE(reader.WaitIterations(20, 60));
  }
  int st = 0;
  ASSERT_TRUE(reader.Stop(&st));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  reader.PrintFigures();
  EXPECT_EQ(sh->errors.load(), 0u) << reader.FirstFailure() << "\n" << DaemonLog();
  EXPECT_EQ(gaps.size(), 3u);

  // No stale mount: a name never looked up is answered, not ENOTCONN.
  struct stat s;
  EXPECT_EQ(stat((mnt_ + "/never-looked-up").c_str(), &s), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_TRUE(IsMountPoint(mnt_));
  pid_t last = ChildOf(holder);
  Umount();
  // The last daemon and the holder end with the mount (bounded wait).
  for (int i = 0; i < 400 && (kill(holder, 0) == 0 || kill(last, 0) == 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_NE(kill(holder, 0), 0) << "holder still running";
  EXPECT_NE(kill(last, 0), 0) << "daemon still running";
}

// The daemon killed before anything looked at the mount: the kernel has
// not fetched the root's attributes yet, so a stat() of the mountpoint is
// a request only a daemon can answer. The successor must not make that
// request itself before it serves (it would wait for itself forever).
TEST_F(RestartTest, ASuccessorTakesOverAMountNobodyLookedAt) {
  CommandResult m = Mount(registry_->Ref("test/restart", "v1"), {"-v"});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  // The mount is ready before the kernel's INIT is read: until the daemon
  // gave the holder the session (its log says so), a kill ends the mount.
  pid_t daemon = KillTheDaemonOnceHeld(mnt_, [this] { return DaemonLog(); });
  ASSERT_GT(daemon, 0);
  std::atomic<int> err{0};
  bool answered = AnsweredWithin30s(mnt_, [&] {
    struct stat st;
    if (stat(mnt_.c_str(), &st) != 0) err = errno;
  });
  EXPECT_TRUE(answered) << "the mountpoint's stat() was not answered in 30 s\n" << DaemonLog();
  EXPECT_EQ(err.load(), 0) << std::strerror(err.load());
  if (answered) {
    std::string manifest;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &manifest));
    EXPECT_EQ(manifest, image_.manifest);
  }
  Umount();
}

// The daemon killed as soon as the mount is ready, before it read the
// kernel's INIT request: the holder has the session from the mount on, and
// the successor reads INIT itself.
TEST_F(RestartTest, ADaemonKilledBeforeItReadTheKernelsInit) {
  setenv("REGFS_TEST_DIE_BEFORE_LOOP", "1", 1);
  CommandResult m = Mount(registry_->Ref("test/restart", "v1"));
  unsetenv("REGFS_TEST_DIE_BEFORE_LOOP");
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::atomic<int> err{0};
  bool answered = AnsweredWithin30s(mnt_, [&] {
    std::string manifest;
    if (!ReadWholeFile(mnt_ + "/manifest.json", &manifest)) err = errno ? errno : -1;
    if (manifest != image_.manifest && err.load() == 0) err = -1;
  });
  EXPECT_TRUE(answered) << "not answered in 30 s\n" << DaemonLog();
  EXPECT_EQ(err.load(), 0) << std::strerror(err.load()) << "\n" << DaemonLog();
  EXPECT_NE(DaemonLog().find("died of signal 9"), std::string::npos) << DaemonLog();
  Umount();
}

// `regfs mount -f` (a terminal's, or a systemd unit's, main process) holds
// the session itself: its daemon is its child.
TEST_F(RestartTest, InTheForegroundTheProcessItselfHolds) {
  std::vector<std::string> argv = {REGFS_BINARY, "mount",   "-f",   "--tls-verify=false",
                                   "--cache-dir", cache_,   "--log-file", dir_->Sub("daemon.log"),
                                   registry_->Ref("test/restart", "v1"), mnt_};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t fg = fork();
  ASSERT_GE(fg, 0);
  if (fg == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 1);
    dup2(null, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  struct Reap {
    pid_t pid;
    ~Reap() {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } reap{fg};
  for (int i = 0; i < 3000 && !IsMountPoint(mnt_); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(IsMountPoint(mnt_)) << DaemonLog();
  EXPECT_EQ(Comm(fg), "regfs-holder");
  UniqueFd file(open((mnt_ + "/layers/0/d/big0").c_str(), O_RDONLY | O_CLOEXEC));
  const int fd = file.get();
  ASSERT_GE(fd, 0) << std::strerror(errno);
  std::string buf(bigs_[0].size(), '\0');
  EXPECT_EQ(pread(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
  EXPECT_EQ(buf, bigs_[0]);
  pid_t daemon = ChildOf(fg);
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(kill(daemon, SIGKILL), 0);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  std::string again(bigs_[0].size(), '\0');
  ssize_t n = pread(fd, again.data(), again.size(), 0);
  EXPECT_EQ(n, static_cast<ssize_t>(again.size())) << std::strerror(errno) << "\n" << DaemonLog();
  EXPECT_EQ(again, bigs_[0]);
  file.Reset();
  EXPECT_NE(ChildOf(fg), daemon);
  Umount();
  // The holder ends with its daemon (bounded wait).
  int st = -1;
  for (int i = 0; i < 1500 && waitpid(fg, &st, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(st)) reap.pid = -1;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
}

// A read the daemon had taken from the kernel when it was killed. The image
// is served by a fault server that stalls the layer blob, so the read is in
// the daemon's hands (waiting for the registry) at the kill.
class InFlightTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs("mounting");
    if (IsSkipped() || HasFatalFailure()) return;
    ImageSpec spec;
    LayerSpec l;
    l.entries = {TarEntry::File("f", Pseudorandom(1 << 20, 7))};
    spec.layers.push_back(std::move(l));
    image_ = BuildImage(spec);
    layer_path_ = "/v2/test/stall/blobs/" + image_.layers[0].descriptor.digest;
    server_.AddResource("/v2/test/stall/manifests/v1", image_.manifest,
                        image_.manifest_descriptor.media_type);
    server_.AddResource("/v2/test/stall/blobs/" + image_.config_descriptor.digest, image_.config);
    server_.AddResource(layer_path_, image_.layers[0].blob);
    server_.SetFaultPicker([this](const RecordedRequest& r) {
      Fault f;
      if (stall_.load() && r.path == layer_path_) {
        f.kind = FaultKind::kStall;
        f.stall = std::chrono::milliseconds(60000);
        ++stalled_;
      }
      return f;
    });
    ASSERT_OK(server_.Start());
  }

  void TearDown() override {
    server_.Stop();
    RegfsFixture::TearDown();
  }

  // Mounts, starts a reader of the blob's first 64 KiB, and kills the
  // daemon while the reader's request waits for the stalled registry.
  // Returns the holder's pid.
  pid_t MountReadAndKill() {
    CommandResult m = Mount(server_.host_port() + "/test/stall:v1");
    EXPECT_EQ(m.exit_code, 0) << m.output;
    if (m.exit_code != 0) return -1;
    pid_t daemon = DaemonPid();
    pid_t holder = ParentOf(daemon);
    EXPECT_EQ(Comm(holder), "regfs-holder");
    std::string path = mnt_ + "/blobs/" + image_.layers[0].descriptor.digest;
    reader_ = std::thread([this, path] {
      int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        read_errno_ = errno;
      } else {
        std::string buf(64 << 10, '\0');
        ssize_t n = pread(fd, buf.data(), buf.size(), 0);
        if (n < 0) read_errno_ = errno;
        buf.resize(n < 0 ? 0 : static_cast<size_t>(n));
        read_bytes_ = buf;
        close(fd);
      }
      read_done_ = true;
    });
    // Bounded waits: the registry stalls a request, then a moment for the
    // reader's read to reach the daemon.
    for (int i = 0; i < 1000 && stalled_.load() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GT(stalled_.load(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_FALSE(read_done_.load()) << "the read was not held up";
    stall_ = false;
    killed_at_ = Clock::now();
    EXPECT_EQ(kill(daemon, SIGKILL), 0);
    // The successor (bounded wait).
    for (int i = 0; i < 1000 && (ChildOf(holder) <= 0 || ChildOf(holder) == daemon); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_NE(ChildOf(holder), daemon);
    return holder;
  }

  bool WaitRead(double limit_s) {
    auto deadline = Clock::now() + std::chrono::duration<double>(limit_s);
    while (!read_done_.load() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return read_done_.load();
  }

  FaultServer server_;
  BuiltImage image_;
  std::string layer_path_;
  std::atomic<bool> stall_{true};
  std::atomic<int> stalled_{0};
  std::thread reader_;
  std::atomic<bool> read_done_{false};
  std::atomic<int> read_errno_{0};
  std::string read_bytes_;
  Clock::time_point killed_at_;
};

TEST_F(InFlightTest, TheSuccessorAnswersTheReadTheDeadDaemonHad) {
  pid_t holder = MountReadAndKill();
  ASSERT_GT(holder, 0);
  // The kernel resends it (FUSE_NOTIFY_RESEND) to the successor.
  bool done = WaitRead(60);
  double waited = std::chrono::duration<double>(Clock::now() - killed_at_).count();
  if (!done) {
    // Unblock the reader: with no descriptor left the kernel aborts the mount.
    kill(holder, SIGKILL);
    kill(ChildOf(holder), SIGKILL);
    WaitRead(60);
  }
  reader_.join();
  ASSERT_TRUE(done) << DaemonLog();
  std::printf("the read in flight at the kill was answered %.3f s after it\n", waited);
  EXPECT_EQ(read_errno_.load(), 0) << std::strerror(read_errno_.load());
  EXPECT_EQ(read_bytes_, image_.layers[0].blob.substr(0, 64 << 10));
  Umount();
}

// The limit without FUSE_NOTIFY_RESEND (Linux < 6.9, or switched off here):
// the kernel keeps a request the dead daemon had read on its processing
// list; nobody answers it, so its caller waits until the connection ends
// (ENOTCONN then), while every other request goes to the successor.
TEST_F(InFlightTest, WithoutResendTheReadWaitsUntilTheMountEnds) {
  setenv("REGFS_TAKEOVER_NO_RESEND", "1", 1);
  pid_t holder = MountReadAndKill();
  unsetenv("REGFS_TAKEOVER_NO_RESEND");
  ASSERT_GT(holder, 0);
  // Bounded look: the successor serves new requests...
  std::string manifest;
  EXPECT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &manifest));
  EXPECT_EQ(manifest, image_.manifest);
  // ...but the read it never saw is still waiting 3 s later.
  EXPECT_FALSE(WaitRead(3)) << "the lost read was answered";
  // With the last descriptor closed, the kernel aborts the connection.
  pid_t successor = ChildOf(holder);
  kill(holder, SIGKILL);
  kill(successor, SIGKILL);
  EXPECT_TRUE(WaitRead(60));
  reader_.join();
  std::printf("without resend: the lost read ended with %s when the mount was aborted\n",
              std::strerror(read_errno_.load()));
  EXPECT_EQ(read_errno_.load(), ENOTCONN);
  Umount();
}

}  // namespace
}  // namespace regfs::testing
