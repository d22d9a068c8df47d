// The Debian package end to end: packaging/build-deb.sh builds it (lintian
// errors fail the build), it is installed with apt into a fresh Debian 12
// root (debootstrap, cached under /var/cache/regfs-test-root; apt's
// downloads are cached there too), and in a chroot: `regfs --version`, `man
// regfs` renders, the cache and store directories exist with owner root and
// mode 0700, `mount -t fuse.regfs` and an fstab line mount an image from the
// test registry (on the host's 127.0.0.1: the chroot shares the network),
// regfs-store.service's ExecStart run as systemd runs it (its
// EnvironmentFile, $NOTIFY_SOCKET) says READY=1 and serves the image, and
// `systemd-analyze verify` is clean on every unit, a SIGKILL of the store's
// daemon is a delay (its holder, the unit's main process, starts a
// successor), and after a SIGKILL of the whole unit its ExecStartPre clears
// the dead mount so that it starts again. The test runs in a mount namespace of its own, so that nothing it
// mounts outlives it.
//
// Time: building the package is a full build of regfs (minutes on 2 CPUs;
// ccache makes a rebuild fast); the root's debootstrap takes about 2.5
// minutes the first time, seconds later.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "reader/base/base64.h"
#include "tests/packaging/notify_socket.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

constexpr const char* kRootCache = "/var/cache/regfs-test-root";

bool Have(const std::string& tool) {
  return RunShell("command -v " + tool + " >/dev/null", 10).exit_code == 0;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

class PackageTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "installs a package into a chroot: needs root";
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    for (const char* tool : {"dpkg-buildpackage", "dh", "lintian", "debootstrap", "chroot"}) {
      if (!Have(tool)) GTEST_SKIP() << tool << " missing (packaging/install-deps.sh installs it)";
    }
    // Everything mounted from here on (the chroot's /proc, /dev, FUSE
    // mounts) lives in this process's mount namespace only.
    ASSERT_EQ(unshare(CLONE_NEWNS), 0) << std::strerror(errno);
    ASSERT_EQ(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0)
        << std::strerror(errno);
    FdCheckedTest::SetUp();
    registry_ = std::make_unique<TestRegistry>();
    ASSERT_OK(registry_->Start());
    ImageSpec spec;
    spec.layers.push_back({{TE::Dir("etc"), TE::File("etc/message", "from layer 0\n")},
                           Compression::kGzip});
    spec.layers.push_back({{TE::Dir("etc"), TE::File("etc/message", "from the package test\n")},
                           Compression::kZstd});
    image_ = BuildImage(spec);
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/pkg", "v1", image_));
    ref_ = registry_->Ref("test/pkg", "v1");
    dir_ = std::make_unique<TempDir>("regfs-package");
    root_ = dir_->Sub("root");
  }

  void TearDown() override {
    if (!dir_) return;
    if (store_pid_ > 0) {
      kill(store_pid_, SIGKILL);
      waitpid(store_pid_, nullptr, 0);
    }
    KillProcessesInRoot();
    UnmountUnder(root_);
    registry_.reset();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  // regfs daemons started in the chroot (by mount.fuse3) are not our
  // children: find them by their root directory.
  void KillProcessesInRoot() {
    DIR* d = opendir("/proc");
    if (!d) return;
    while (dirent* e = readdir(d)) {
      if (!std::isdigit(static_cast<unsigned char>(e->d_name[0]))) continue;
      char buf[4096];
      std::string link = std::string("/proc/") + e->d_name + "/root";
      ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
      if (n <= 0) continue;
      buf[n] = '\0';
      if (std::string(buf) == root_) kill(std::stoi(e->d_name), SIGKILL);
    }
    closedir(d);
  }

  // Every mount below `top`, innermost first (lazily: a dead FUSE daemon's
  // mount goes too).
  static void UnmountUnder(const std::string& top) {
    std::ifstream in("/proc/self/mountinfo");
    std::vector<std::string> points;
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string id, parent, devno, rootf, point;
      f >> id >> parent >> devno >> rootf >> point;
      if (point == top || point.rfind(top + "/", 0) == 0) points.push_back(point);
    }
    std::sort(points.rbegin(), points.rend());
    for (const std::string& p : points) umount2(p.c_str(), MNT_DETACH);
  }

  CommandResult InRoot(const std::string& script, int timeout_s = 120) {
    return RunCommand({"chroot", root_, "/bin/sh", "-c", script}, timeout_s);
  }

  void BindIntoRoot(const std::string& from, const std::string& to) {
    std::string target = root_ + to;
    mkdir(target.c_str(), 0755);
    ASSERT_EQ(mount(from.c_str(), target.c_str(), nullptr, MS_BIND | MS_REC, nullptr), 0)
        << from << " -> " << target << ": " << std::strerror(errno);
  }

  std::string ReadInRoot(const std::string& path) {
    std::string s;
    ReadWholeFile(root_ + path, &s);
    return s;
  }

  // The value of `key=` in a unit file's [Service] section.
  std::string UnitValue(const std::string& unit, const std::string& key) {
    std::istringstream in(ReadInRoot("/lib/systemd/system/" + unit));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
    }
    return "";
  }

  std::unique_ptr<TestRegistry> registry_;
  BuiltImage image_;
  std::string ref_;
  std::unique_ptr<TempDir> dir_;
  std::string root_;
  pid_t store_pid_ = -1;
};

TEST_F(PackageTest, InstallsIntoAFreshDebianRootAndWorks) {
  // 1. The package.
  auto t = std::chrono::steady_clock::now();
  std::string out = dir_->Sub("out");
  CommandResult build =
      RunCommand({std::string(REGFS_SOURCE_DIR) + "/packaging/build-deb.sh", out}, 1500);
  ASSERT_EQ(build.exit_code, 0) << build.output;
  std::string deb = out + "/regfs_" REGFS_PROJECT_VERSION "_amd64.deb";
  struct stat st;
  ASSERT_EQ(stat(deb.c_str(), &st), 0) << build.output;
  std::printf("package built in %.1f s\n", SecondsSince(t));

  // 2. A fresh Debian 12 root, its /proc, /sys, /dev, DNS, apt's cache.
  t = std::chrono::steady_clock::now();
  CommandResult root = RunCommand(
      {std::string(REGFS_SOURCE_DIR) + "/tests/packaging/debian_root.sh", kRootCache, root_}, 900);
  ASSERT_EQ(root.exit_code, 0) << root.output;
  std::printf("%sroot ready in %.1f s\n", root.output.c_str(), SecondsSince(t));
  BindIntoRoot("/proc", "/proc");
  BindIntoRoot("/sys", "/sys");
  BindIntoRoot("/dev", "/dev");
  std::string archives = std::string(kRootCache) + "/apt-archives";
  RunCommand({"mkdir", "-p", archives + "/partial"});
  BindIntoRoot(archives, "/var/cache/apt/archives");
  ASSERT_EQ(RunCommand({"cp", "-L", "/etc/resolv.conf", root_ + "/etc/resolv.conf"}).exit_code, 0);
  ASSERT_EQ(RunCommand({"cp", deb, root_ + "/tmp/regfs.deb"}).exit_code, 0);

  // 3. apt installs it with what it depends on.
  t = std::chrono::steady_clock::now();
  CommandResult install = InRoot(
      "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
      "apt-get install -y -qq --no-install-recommends /tmp/regfs.deb 2>&1",
      900);
  ASSERT_EQ(install.exit_code, 0) << install.output;
  std::printf("apt-get install in %.1f s\n", SecondsSince(t));

  // 4. --version, the man page, the directories.
  CommandResult version = InRoot("regfs --version");
  EXPECT_EQ(version.exit_code, 0) << version.output;
  EXPECT_TRUE(std::regex_match(version.output,
                               std::regex("regfs " REGFS_PROJECT_VERSION R"( \(git \S+\)\n)")))
      << version.output;
  EXPECT_EQ(version.output.find("(git unknown)"), std::string::npos) << version.output;
  CommandResult man = InRoot("MANPAGER=cat MANWIDTH=80 man regfs 2>&1");
  EXPECT_EQ(man.exit_code, 0) << man.output;
  for (const char* want : {"REGFS(1)", "regfs store", "REGISTRY OPTIONS", "--allow-registry",
                           "fuse.regfs"}) {
    EXPECT_NE(man.output.find(want), std::string::npos) << want << " not in\n" << man.output;
  }
  for (const char* d : {"/var/cache/regfs", "/var/lib/regfs-store"}) {
    ASSERT_EQ(stat((root_ + d).c_str(), &st), 0) << d;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << d;
    EXPECT_EQ(st.st_mode & 07777, 0700u) << d;
    EXPECT_EQ(st.st_uid, 0u) << d;
    EXPECT_EQ(st.st_gid, 0u) << d;
  }
  CommandResult completion = InRoot("bash -n /usr/share/bash-completion/completions/regfs");
  EXPECT_EQ(completion.exit_code, 0) << completion.output;

  // 5. mount -t fuse.regfs (through mount.fuse3 from fuse3, a dependency).
  const std::string kExpected = "from the package test\n";
  CommandResult mt = InRoot("mkdir -p /mnt/t && mount -t fuse.regfs " + ref_ +
                            " /mnt/t -o tls-verify=false 2>&1");
  ASSERT_EQ(mt.exit_code, 0) << mt.output;
  EXPECT_EQ(ReadInRoot("/mnt/t/rootfs/etc/message"), kExpected);
  CommandResult inside = InRoot("cat /mnt/t/rootfs/etc/message");
  EXPECT_EQ(inside.output, kExpected);
  CommandResult um = InRoot("umount /mnt/t 2>&1");
  EXPECT_EQ(um.exit_code, 0) << um.output;

  // 6. An fstab line, mounted by its mountpoint.
  std::ofstream(root_ + "/etc/fstab", std::ios::app)
      << ref_ << " /mnt/f fuse.regfs ro,_netdev,nofail,x-systemd.mount-timeout=60,"
      << "tls-verify=false,allow_other 0 0\n";
  CommandResult mf = InRoot("mkdir -p /mnt/f && mount /mnt/f 2>&1");
  ASSERT_EQ(mf.exit_code, 0) << mf.output;
  EXPECT_EQ(ReadInRoot("/mnt/f/rootfs/etc/message"), kExpected);
  CommandResult findmnt = InRoot("grep ' /mnt/f ' /proc/self/mounts");
  EXPECT_NE(findmnt.output.find("fuse.regfs"), std::string::npos) << findmnt.output;
  um = InRoot("umount /mnt/f 2>&1");
  EXPECT_EQ(um.exit_code, 0) << um.output;

  // 7. systemd-analyze verify on every unit the package installs.
  ASSERT_EQ(RunCommand({"mkdir", "-p", root_ + "/etc/regfs/mounts"}).exit_code, 0);
  std::ofstream(root_ + "/etc/regfs/mounts/test.conf")
      << "REF=" << ref_ << "\nMOUNTPOINT=/mnt/t\nOPTIONS=--tls-verify=false\n";
  for (const char* unit : {"regfs-store.service", "regfs-mount@test.service"}) {
    CommandResult v = InRoot(std::string("systemd-analyze verify ") + unit + " 2>&1");
    EXPECT_EQ(v.exit_code, 0) << unit << ": " << v.output;
    EXPECT_EQ(v.output, "") << unit;
  }

  // 8. regfs-store.service's ExecStart as systemd runs it: the unit's
  // EnvironmentFile read, $REGFS_STORE_OPTIONS split into words, and
  // $NOTIFY_SOCKET for Type=notify.
  std::string exec_start = UnitValue("regfs-store.service", "ExecStart");
  ASSERT_NE(exec_start, "");
  EXPECT_EQ(UnitValue("regfs-store.service", "Type"), "notify");
  std::ofstream(root_ + "/etc/default/regfs-store")
      << "REGFS_STORE_OPTIONS=\"--tls-verify=false --allow-registry " << registry_->HostPort()
      << "\"\n";
  NotifySocket notify(root_ + "/run/regfs-notify.sock");
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  std::string script =
      "set -a; REGFS_STORE_OPTIONS=; . /etc/default/regfs-store; set +a; exec " + exec_start;
  const std::string log_path = dir_->Sub("store.log");  // no allocation after fork
  store_pid_ = fork();
  ASSERT_GE(store_pid_, 0);
  if (store_pid_ == 0) {
    int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    execl("/usr/sbin/chroot", "chroot", root_.c_str(), "/usr/bin/env",
          "NOTIFY_SOCKET=/run/regfs-notify.sock", "/bin/sh", "-c", script.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string log;
  std::string got = notify.WaitFor("READY=1");
  ReadWholeFile(log_path, &log);
  ASSERT_NE(got.find("READY=1"), std::string::npos) << got << log;
  std::string layer = "/var/lib/regfs-store/" + Base64Encode(ref_) + "/" +
                      image_.layers[1].descriptor.digest + "/diff/etc/message";
  EXPECT_EQ(ReadInRoot(layer), kExpected) << log;

  // 9. The daemon killed (SIGKILL, as the OOM killer does): ExecStart's
  // process holds the mount and starts a successor, which serves on.
  pid_t daemon = -1;
  {
    std::ifstream children("/proc/" + std::to_string(store_pid_) + "/task/" +
                           std::to_string(store_pid_) + "/children");
    children >> daemon;
  }
  ASSERT_GT(daemon, 0) << "no daemon under the unit's main process\n" << log;
  ASSERT_EQ(kill(daemon, SIGKILL), 0);
  EXPECT_EQ(ReadInRoot(layer), kExpected) << log;
  // The main process killed with its daemon (what systemd does to the
  // unit's processes once the main one died): the mount is left dead. The
  // unit's ExecStartPre clears it, and ExecStart serves again.
  kill(store_pid_, SIGKILL);
  waitpid(store_pid_, nullptr, 0);
  store_pid_ = -1;
  KillProcessesInRoot();
  std::string pre = UnitValue("regfs-store.service", "ExecStartPre");
  ASSERT_EQ(pre.rfind("-", 0), 0u) << pre;  // its failure (nothing mounted) is ignored
  CommandResult cleared = InRoot(pre.substr(1) + " 2>&1");
  EXPECT_EQ(cleared.exit_code, 0) << cleared.output;
  NotifySocket notify2(root_ + "/run/regfs-notify2.sock");
  ASSERT_TRUE(notify2.ok()) << std::strerror(errno);
  store_pid_ = fork();
  ASSERT_GE(store_pid_, 0);
  if (store_pid_ == 0) {
    int out_fd = open(log_path.c_str(), O_WRONLY | O_APPEND);
    dup2(out_fd, STDOUT_FILENO);
    dup2(out_fd, STDERR_FILENO);
    execl("/usr/sbin/chroot", "chroot", root_.c_str(), "/usr/bin/env",
          "NOTIFY_SOCKET=/run/regfs-notify2.sock", "/bin/sh", "-c", script.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  got = notify2.WaitFor("READY=1");
  ReadWholeFile(log_path, &log);
  ASSERT_NE(got.find("READY=1"), std::string::npos) << got << log;
  EXPECT_EQ(ReadInRoot(layer), kExpected) << log;
  um = InRoot("regfs umount /var/lib/regfs-store 2>&1");
  EXPECT_EQ(um.exit_code, 0) << um.output;
  int status = -1;
  for (int i = 0; i < 600 && store_pid_ > 0; ++i) {
    if (waitpid(store_pid_, &status, WNOHANG) == store_pid_) store_pid_ = -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(store_pid_, -1) << "the store did not exit after umount";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  got = notify2.WaitFor("STOPPING=1");
  EXPECT_NE(got.find("STOPPING=1"), std::string::npos) << got;
}

}  // namespace
}  // namespace regfs
