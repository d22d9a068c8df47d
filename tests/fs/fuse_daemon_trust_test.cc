// FuseOptions::trusted_uids: a caller outside the list must not make the
// content do work (a layer store resolves references and indexes layers over
// the network, with its own credentials). Mounts a FuseDaemon for real over a
// content that counts its calls, and acts as other users from forked
// children. The tree's modes let everyone through the kernel's
// default_permissions, so what is refused is refused by the daemon.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <thread>

#include "fs/fuse_daemon.h"
#include "fs/tree.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::FuseUnavailableReason;
using testing::TempDir;

constexpr uid_t kNobody = 65534;
constexpr uid_t kOwnUser = 4321;  // stands for a non-root daemon's own user

// Counts every call a caller can cause. A miss of "known" adds it; Populate
// fills the pending directory with "x".
class CountingContent : public FsContent {
 public:
  explicit CountingContent(Tree* tree) : tree_(tree) {}
  Result<size_t> Read(const Node&, uint64_t, std::span<uint8_t>) override { return size_t{0}; }
  Result<std::string> Generate(const Node&) override { return std::string(); }
  Status Populate(uint32_t) override {
    ++populates;
    Ino pending = *tree_->Lookup(kRootIno, "pending");
    tree_->AddDir(pending, "x", 0755);
    tree_->ClearPending(pending);
    return Status::Ok();
  }
  Status LookupMiss(Ino parent, std::string_view name, bool*) override {
    ++misses;
    if (parent != kRootIno || name != "known") return Status::NotFound("no such entry");
    tree_->AddDir(kRootIno, "known", 0755);
    return Status::Ok();
  }
  int CreateErrno(Ino, std::string_view) override {
    ++creates;
    return ENOENT;
  }
  int RmdirErrno(Ino, std::string_view) override {
    ++rmdirs;
    return ENOENT;
  }

  std::atomic<int> populates{0}, misses{0}, creates{0}, rmdirs{0};

 private:
  Tree* tree_;
};

// Runs `fn` (system calls only: the child of a threaded process) in a child
// with uid and gid `uid`; returns what fn returned, or -errno of the set*id.
template <typename F>
long AsUser(uid_t uid, F fn) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -errno;
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(fds[0]);
    close(fds[1]);
    return -e;
  }
  if (pid == 0) {
    long r = (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0) ? -errno : fn();
    ssize_t w = write(fds[1], &r, sizeof r);
    _exit(w == static_cast<ssize_t>(sizeof r) ? 0 : 1);
  }
  close(fds[1]);
  long r = -EIO;
  ssize_t n;
  do {
    n = read(fds[0], &r, sizeof r);
  } while (n < 0 && errno == EINTR);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return -EIO;
  }
  return r;
}

long Stat(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? 0 : -errno;
}

// getdents64 on the directory: 0 when the listing could be read.
long List(const char* path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  char buf[4096];
  long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
  long r = n < 0 ? -errno : 0;
  close(fd);
  return r;
}

long Create(const char* path) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  close(fd);
  return 0;
}

long Rmdir(const char* path) { return rmdir(path) == 0 ? 0 : -errno; }

class FuseDaemonTrustTest : public testing::FdCheckedTest {
 protected:
  void SetUp() override {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    if (geteuid() != 0) GTEST_SKIP() << "acting as other users needs root";
    FdCheckedTest::SetUp();
    tree_.Update(kRootIno, [](Node& n) { n.attr.mode = S_IFDIR | 0755; });
    Ino pending = tree_.AddDir(kRootIno, "pending", 0755);
    tree_.SetPending(pending, 1);
    Ino w = tree_.AddDir(kRootIno, "w", 0777);  // writable: create/rmdir reach the daemon
    tree_.AddDir(w, "sub", 0777);
    dir_ = std::make_unique<TempDir>();
    ASSERT_EQ(chmod(dir_->path().c_str(), 0755), 0);  // other users reach the mount
    mnt_ = dir_->Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }

  void Mount(std::vector<uid_t> trusted) {
    FuseOptions fo;
    fo.mountpoint = mnt_;
    fo.mount_opts = {"allow_other"};
    fo.read_only = false;  // so that create and rmdir reach the daemon
    fo.trusted_uids = std::move(trusted);
    daemon_ = std::make_unique<FuseDaemon>(&tree_, &content_, fo);
    ASSERT_OK(daemon_->Mount());
    loop_ = std::thread([this] { loop_status_ = daemon_->Loop(false); });
  }

  void TearDown() override {
    if (!dir_) return;  // skipped
    if (daemon_) {
      daemon_->Exit();
      loop_.join();
      EXPECT_OK(loop_status_);
      EXPECT_FALSE(testing::IsMountPoint(mnt_));
      daemon_.reset();
    }
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  std::string P(const std::string& rel) const { return mnt_ + "/" + rel; }

  Tree tree_;
  CountingContent content_{&tree_};
  std::unique_ptr<TempDir> dir_;
  std::string mnt_;
  std::unique_ptr<FuseDaemon> daemon_;
  std::thread loop_;
  Status loop_status_;
};

TEST_F(FuseDaemonTrustTest, UntrustedMissIsEnoentWithoutAskingAndIsNotRemembered) {
  Mount({0});
  const std::string known = P("known");
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(known.c_str()); }), -ENOENT);
  EXPECT_EQ(content_.misses.load(), 0);
  // Twice: a cached negative entry would not even reach the daemon, but
  // must not hide the name from root either (checked next).
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(known.c_str()); }), -ENOENT);
  EXPECT_EQ(content_.misses.load(), 0);
  EXPECT_EQ(Stat(known.c_str()), 0) << "root's lookup after nobody's must reach the content";
  EXPECT_EQ(content_.misses.load(), 1);
  // Once it exists, it is an ordinary entry: mode bits decide.
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(known.c_str()); }), 0);
}

TEST_F(FuseDaemonTrustTest, UntrustedCallerCannotPopulate) {
  Mount({0});
  const std::string pending = P("pending");
  const std::string x = P("pending/x");
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(pending.c_str()); }), 0) << "the dir itself shows";
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(x.c_str()); }), -EACCES);
  EXPECT_EQ(AsUser(kNobody, [&] { return List(pending.c_str()); }), -EACCES);
  EXPECT_EQ(content_.populates.load(), 0);
  EXPECT_EQ(Stat(x.c_str()), 0);
  EXPECT_EQ(content_.populates.load(), 1);
  // Filled: nothing more to do, so everyone may look.
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(x.c_str()); }), 0);
  EXPECT_EQ(AsUser(kNobody, [&] { return List(pending.c_str()); }), 0);
  EXPECT_EQ(content_.populates.load(), 1);
}

TEST_F(FuseDaemonTrustTest, UntrustedCreateAndRmdirAreRefused) {
  Mount({0});
  const std::string use = P("w/use");
  const std::string sub = P("w/sub");
  EXPECT_EQ(AsUser(kNobody, [&] { return Create(use.c_str()); }), -EACCES);
  EXPECT_EQ(AsUser(kNobody, [&] { return Rmdir(sub.c_str()); }), -EACCES);
  EXPECT_EQ(content_.creates.load(), 0);
  EXPECT_EQ(content_.rmdirs.load(), 0);
  EXPECT_EQ(Create(use.c_str()), -ENOENT);
  EXPECT_EQ(Rmdir(sub.c_str()), -ENOENT);
  EXPECT_EQ(content_.creates.load(), 1);
  EXPECT_EQ(content_.rmdirs.load(), 1);
}

TEST_F(FuseDaemonTrustTest, EveryListedUidIsTrusted) {
  Mount({0, kOwnUser});
  const std::string known = P("known");
  const std::string x = P("pending/x");
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(known.c_str()); }), -ENOENT);
  EXPECT_EQ(content_.misses.load(), 0);
  EXPECT_EQ(AsUser(kOwnUser, [&] { return Stat(known.c_str()); }), 0);
  EXPECT_EQ(AsUser(kOwnUser, [&] { return Stat(x.c_str()); }), 0);
  EXPECT_EQ(content_.misses.load(), 1);
  EXPECT_EQ(content_.populates.load(), 1);
}

TEST_F(FuseDaemonTrustTest, EmptyListTrustsEveryone) {
  Mount({});
  const std::string known = P("known");
  const std::string x = P("pending/x");
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(known.c_str()); }), 0);
  EXPECT_EQ(AsUser(kNobody, [&] { return Stat(x.c_str()); }), 0);
  EXPECT_EQ(content_.misses.load(), 1);
  EXPECT_EQ(content_.populates.load(), 1);
}

}  // namespace
}  // namespace regfs
