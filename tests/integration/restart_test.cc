// Restarts without breaking readers (issue 17): a process reads files
// through `regfs mount` in a loop, with open fds and its cwd on the mount,
// while the daemon is SIGKILLed three times; the holder starts a successor
// that takes the session over. Every read must return the right bytes (a
// delay is allowed, and printed); no ENOTCONN, no stale mount.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <thread>

#include "reader/base/unique_fd.h"
#include "tests/integration/regfs_fixture.h"
#include "tests/support/fault_server.h"
#include "tests/support/image_builder.h"

namespace regfs::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string Pseudorandom(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// What the reader process reports, in memory shared with the test.
struct Shared {
  std::atomic<uint64_t> iterations{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> first_errno{0};
  std::atomic<int> first_check{0};
  std::atomic<uint64_t> max_iteration_ns{0};
  std::atomic<bool> stop{false};
};

pid_t ParentOf(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(line.substr(close + 2));
  char state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

// The holder's current daemon: its one child.
pid_t ChildOf(pid_t holder) {
  std::ifstream f("/proc/" + std::to_string(holder) + "/task/" + std::to_string(holder) +
                  "/children");
  pid_t p = -1;
  f >> p;
  return p;
}

std::string Comm(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string s;
  std::getline(f, s);
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

[[noreturn]] void RunReader(const ReaderPlan& p, Shared* sh) {
  auto fail = [sh](int check, int err) {
    if (sh->errors.fetch_add(1) == 0) {
      sh->first_errno = err;
      sh->first_check = check;
    }
  };
  if (chdir(p.cwd.c_str()) != 0) {
    fail(100, errno);
    _exit(1);
  }
  int fa = open(p.big0.c_str(), O_RDONLY | O_CLOEXEC);
  int fr = open(p.rootfs_big2.c_str(), O_RDONLY | O_CLOEXEC);
  int fb = open(p.blob1.c_str(), O_RDONLY | O_CLOEXEC);
  int fs = open(p.status.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st0;
  if (fa < 0 || fr < 0 || fb < 0 || fs < 0 || fstat(fa, &st0) != 0) {
    fail(101, errno);
    _exit(1);
  }
  static char buf[256 << 10];
  auto check_pread = [&](int check, int fd, const std::string& want, uint64_t i) {
    size_t len = 64 << 10;
    size_t off = static_cast<size_t>((i * 97 * 1024) % (want.size() - len));
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ssize_t n = pread(fd, buf, len, static_cast<off_t>(off));
    if (n != static_cast<ssize_t>(len)) {
      fail(check, n < 0 ? errno : 0);
    } else if (std::memcmp(buf, want.data() + off, len) != 0) {
      fail(check, 0);
    }
  };
  auto check_open = [&](int check, const char* path, const std::string& want) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fail(check, errno);
      return;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    size_t len = std::min(want.size(), sizeof buf);
    ssize_t n = pread(fd, buf, len, 0);
    if (n != static_cast<ssize_t>(len)) {
      fail(check, n < 0 ? errno : 0);
    } else if (std::memcmp(buf, want.data(), len) != 0) {
      fail(check, 0);
    }
    close(fd);
  };
  for (uint64_t i = 0; !sh->stop.load(); ++i) {
    auto t0 = Clock::now();
    check_pread(1, fa, *p.want_big0, i);
    check_pread(2, fr, *p.want_big2, i);
    check_pread(3, fb, *p.want_blob1, i);
    check_open(4, "big1", *p.want_big1);
    check_open(5, p.small2.c_str(), *p.want_small2);
    struct stat st;
    if (fstat(fa, &st) != 0) {
      fail(6, errno);
    } else if (st.st_ino != st0.st_ino) {
      fail(6, 0);
    }
    ssize_t n = pread(fs, buf, sizeof buf, 0);
    if (n <= 0 || buf[0] != '{') fail(7, n < 0 ? errno : 0);
    uint64_t ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (ns > sh->max_iteration_ns.load()) sh->max_iteration_ns = ns;
    sh->iterations.fetch_add(1);
  }
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

  void* mem = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  Shared* sh = new (mem) Shared();
  pid_t reader = fork();
  ASSERT_GE(reader, 0);
  if (reader == 0) RunReader(plan, sh);
  // On a failed assertion the reader must not keep the mount busy.
  struct Reap {
    pid_t pid;
    ~Reap() {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } reap{reader};

  // Waits (bounded) until the reader has done `n` more iterations.
  auto wait_iterations = [&](uint64_t n, double limit_s) {
    uint64_t target = sh->iterations.load() + n;
    auto deadline = Clock::now() + std::chrono::duration<double>(limit_s);
    while (sh->iterations.load() < target && Clock::now() < deadline &&
           sh->errors.load() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return sh->iterations.load() >= target;
  };
  EXPECT_TRUE(wait_iterations(20, 60)) << "the reader does not progress";

  std::vector<double> gaps;
  for (int round = 0; round < 3 && sh->errors.load() == 0; ++round) {
    pid_t old = ChildOf(holder);
    ASSERT_GT(old, 0) << "no daemon under the holder\n" << DaemonLog();
    auto t0 = Clock::now();
    ASSERT_EQ(kill(old, SIGKILL), 0);
    // The reader goes on once a successor serves: the gap is until its next
    // completed iteration after the kill.
    uint64_t at_kill = sh->iterations.load();
    auto deadline = t0 + std::chrono::seconds(60);
    while (sh->iterations.load() <= at_kill + 1 && Clock::now() < deadline &&
           sh->errors.load() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    double gap = std::chrono::duration<double>(Clock::now() - t0).count();
    ASSERT_GT(sh->iterations.load(), at_kill + 1)
        << "no reads after kill " << round + 1 << "\n" << DaemonLog();
    pid_t successor = ChildOf(holder);
    EXPECT_GT(successor, 0);
    EXPECT_NE(successor, old);
    gaps.push_back(gap);
    std::printf("restart %d: daemon %d killed, successor %d, reader resumed after %.3f s\n",
                round + 1, old, successor, gap);
    EXPECT_TRUE(wait_iterations(20, 60));
  }
  sh->stop = true;
  int st = 0;
  ASSERT_EQ(waitpid(reader, &st, 0), reader);
  reap.pid = -1;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  std::printf("reader: %llu iterations, longest %.3f s, errors %llu\n",
              static_cast<unsigned long long>(sh->iterations.load()),
              static_cast<double>(sh->max_iteration_ns.load()) / 1e9,
              static_cast<unsigned long long>(sh->errors.load()));
  EXPECT_EQ(sh->errors.load(), 0u) << "first failed check " << sh->first_check.load() << ": "
                                   << std::strerror(sh->first_errno.load()) << "\n"
                                   << DaemonLog();
  EXPECT_EQ(gaps.size(), 3u);
  sh->~Shared();
  munmap(mem, sizeof(Shared));

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

// The holder of the mount on `mnt`: a "regfs-holder" whose command line
// names it. -1 if none.
pid_t HolderOf(const std::string& mnt) {
  DIR* d = opendir("/proc");
  if (!d) return -1;
  pid_t found = -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t pid = std::atoi(e->d_name);
    if (Comm(pid) != "regfs-holder") continue;
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (cmdline.find(std::string(1, '\0') + mnt + std::string(1, '\0')) != std::string::npos) {
      found = pid;
    }
  }
  closedir(d);
  return found;
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
  // Bounded wait: 30 s.
  for (int i = 0; i < 3000 && DaemonLog().find("the holder keeps the session") == std::string::npos;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_NE(DaemonLog().find("the holder keeps the session"), std::string::npos) << DaemonLog();
  pid_t holder = HolderOf(mnt_);
  ASSERT_GT(holder, 0);
  pid_t daemon = ChildOf(holder);
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(kill(daemon, SIGKILL), 0);
  std::atomic<bool> done{false};
  std::atomic<int> err{0};
  std::thread looker([&] {
    struct stat st;
    if (stat(mnt_.c_str(), &st) != 0) err = errno;
    done = true;
  });
  // Bounded wait: 30 s.
  for (int i = 0; i < 3000 && !done.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool answered = done.load();
  if (!answered) {
    // Unblock it: with no descriptor left the kernel aborts the mount.
    pid_t successor = ChildOf(holder);
    kill(holder, SIGKILL);
    if (successor > 0) kill(successor, SIGKILL);
  }
  looker.join();
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
  std::atomic<bool> done{false};
  std::atomic<int> err{0};
  std::thread looker([&] {
    std::string manifest;
    if (!ReadWholeFile(mnt_ + "/manifest.json", &manifest)) err = errno ? errno : -1;
    if (manifest != image_.manifest && err.load() == 0) err = -1;
    done = true;
  });
  // Bounded wait: 30 s.
  for (int i = 0; i < 3000 && !done.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool answered = done.load();
  pid_t holder = HolderOf(mnt_);
  if (!answered && holder > 0) {
    pid_t successor = ChildOf(holder);
    kill(holder, SIGKILL);
    if (successor > 0) kill(successor, SIGKILL);
  }
  looker.join();
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
