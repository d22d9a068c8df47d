// regfs under systemd, without systemd: the daemon run in the foreground as
// a Type=notify unit runs it ($NOTIFY_SOCKET, $JOURNAL_STREAM) must send
// READY=1 once the mount is live and STOPPING=1 when it ends, report a
// startup failure in STATUS= and on stderr, and log to the journal stream
// without timestamps of its own (with syslog priority prefixes).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/packaging/notify_socket.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"
#include "tests/support/run_command.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT

class SystemdTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    if (geteuid() != 0) GTEST_SKIP() << "the store mounts with allow_other: needs root";
    FdCheckedTest::SetUp();
    dir_ = std::make_unique<TempDir>("regfs-systemd");
    mnt_ = dir_->Sub("store");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }
  void TearDown() override {
    if (!dir_) return;
    if (IsMountPoint(mnt_)) RunCommand({REGFS_BINARY, "umount", mnt_});
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  // Starts `regfs store -f -v MOUNTPOINT` as systemd starts a unit's
  // ExecStart: $NOTIFY_SOCKET set, stderr a stream whose dev:ino is in
  // $JOURNAL_STREAM (or, with `journal_stream_matches` false, another file's).
  void Start(const std::string& notify_path, bool journal_stream_matches,
             const std::string& mountpoint, const std::vector<std::string>& mount_ref = {}) {
    int err = open(dir_->Sub("stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(err, 0);
    int other = open(dir_->Sub("other").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(other, 0);
    struct stat st;
    ASSERT_EQ(fstat(journal_stream_matches ? err : other, &st), 0);
    close(other);
    std::string journal = "JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" +
                          std::to_string(st.st_ino);
    std::string notify = "NOTIFY_SOCKET=" + notify_path;
    std::string cache = dir_->Sub("cache");
    // Built before the fork: the child only calls async-signal-safe functions.
    std::vector<const char*> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", journal.c_str(),
                                    notify.c_str(), nullptr};
    // `regfs store -f -v ...`, or with mount_ref {REF, flags...} `regfs mount
    // -f -v ... REF MOUNTPOINT`.
    std::vector<const char*> argv = {REGFS_BINARY, mount_ref.empty() ? "store" : "mount", "-f",
                                     "-v", "--cache-dir", cache.c_str()};
    for (size_t i = 1; i < mount_ref.size(); ++i) argv.push_back(mount_ref[i].c_str());
    if (!mount_ref.empty()) argv.push_back(mount_ref[0].c_str());
    argv.push_back(mountpoint.c_str());
    argv.push_back(nullptr);
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      dup2(err, STDERR_FILENO);
      int null = open("/dev/null", O_RDWR);
      dup2(null, STDIN_FILENO);
      dup2(null, STDOUT_FILENO);
      execve(REGFS_BINARY, const_cast<char**>(argv.data()), const_cast<char**>(env.data()));
      _exit(127);
    }
    close(err);
  }

  // The daemon's exit status, waiting up to a deadline (-1: still running).
  int Reap(int deadline_s = 60) {
    for (int i = 0; i < deadline_s * 10; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }

  std::string Stderr() {
    std::string s;
    ReadWholeFile(dir_->Sub("stderr"), &s);
    return s;
  }

  std::unique_ptr<TempDir> dir_;
  std::string mnt_;
  pid_t pid_ = -1;
};

TEST_F(SystemdTest, ReadyWhenMountedStoppingAtTheEndJournalLinesWithoutTimestamps) {
  NotifySocket notify(dir_->Sub("notify"));
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  Start(dir_->Sub("notify"), true, mnt_);
  std::string got = notify.WaitFor("READY=1");
  ASSERT_NE(got.find("READY=1"), std::string::npos) << got << Stderr();
  EXPECT_TRUE(IsMountPoint(mnt_)) << "READY=1 before the mount was live";
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  ASSERT_EQ(um.exit_code, 0) << um.output;
  EXPECT_EQ(Reap(), 0) << Stderr();
  got = notify.WaitFor("STOPPING=1");
  EXPECT_NE(got.find("STOPPING=1"), std::string::npos) << got;
  std::string err = Stderr();
  // -v: the info line saying the store is mounted, as the journal wants it.
  EXPECT_TRUE(std::regex_search(err, std::regex(R"((^|\n)<6>info: layer store mounted on )")))
      << err;
  EXPECT_FALSE(std::regex_search(err, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d)"))) << err;
}

TEST_F(SystemdTest, StartupFailureIsStatusAndStderrNotReady) {
  NotifySocket notify(dir_->Sub("notify"));
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  Start(dir_->Sub("notify"), true, dir_->Sub("no-such-dir"));
  EXPECT_EQ(Reap(), 1) << Stderr();
  std::string got = notify.WaitFor("STOPPING=1");
  EXPECT_EQ(got.find("READY=1"), std::string::npos) << got;
  EXPECT_NE(got.find("STATUS=mountpoint " + dir_->Sub("no-such-dir")), std::string::npos) << got;
  EXPECT_NE(Stderr().find("regfs: mountpoint " + dir_->Sub("no-such-dir")), std::string::npos)
      << Stderr();
}

// $JOURNAL_STREAM inherited from elsewhere (stderr is not that stream):
// plain lines with our timestamps, as outside systemd.
TEST_F(SystemdTest, JournalStreamOfAnotherFileKeepsTimestamps) {
  NotifySocket notify(dir_->Sub("notify"));
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  Start(dir_->Sub("notify"), false, mnt_);
  std::string got = notify.WaitFor("READY=1");
  ASSERT_NE(got.find("READY=1"), std::string::npos) << got << Stderr();
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  ASSERT_EQ(um.exit_code, 0) << um.output;
  EXPECT_EQ(Reap(), 0) << Stderr();
  EXPECT_TRUE(std::regex_search(
      Stderr(), std::regex(R"(regfs \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ info: layer store mounted)")))
      << Stderr();
}

// `regfs mount -f` holds its session: the daemon that says READY=1 is a
// child of the process systemd started (the units say NotifyAccess=all).
TEST_F(SystemdTest, HeldMountInTheForegroundIsReadyAndStops) {
  auto registry = std::make_unique<TestRegistry>();
  ASSERT_OK(registry->Start());
  ImageSpec spec;
  spec.layers.push_back({{TarEntry::Dir("etc"), TarEntry::File("etc/message", "held\n")},
                         Compression::kGzip});
  BuiltImage image = BuildImage(spec);
  ImagePusher pusher(*registry);
  ASSERT_OK(pusher.PushImage("test/held", "v1", image));
  NotifySocket notify(dir_->Sub("notify"));
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  Start(dir_->Sub("notify"), true, mnt_, {registry->Ref("test/held", "v1"), "--tls-verify=false"});
  std::string got = notify.WaitFor("READY=1");
  ASSERT_NE(got.find("READY=1"), std::string::npos) << got << Stderr();
  std::string msg;
  EXPECT_TRUE(ReadWholeFile(mnt_ + "/rootfs/etc/message", &msg)) << Stderr();
  EXPECT_EQ(msg, "held\n");
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  ASSERT_EQ(um.exit_code, 0) << um.output;
  EXPECT_EQ(Reap(), 0) << Stderr();
  got = notify.WaitFor("STOPPING=1");
  EXPECT_NE(got.find("STOPPING=1"), std::string::npos) << got;
  registry.reset();
}

}  // namespace
}  // namespace regfs
