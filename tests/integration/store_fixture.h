// The fixture the `regfs store` tests share: a real docker-registry, a temp
// dir with the store's mountpoint ("store"), its cache and its log, podman
// environments on the store, and the regfs binary (REGFS_BINARY) run as a
// user would. Checks fds; a store a test leaves mounted is unmounted.
#ifndef REGFS_TESTS_INTEGRATION_STORE_FIXTURE_H_
#define REGFS_TESTS_INTEGRATION_STORE_FIXTURE_H_

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {

class StoreFixture : public FdCheckedTest {
 protected:
  // Skips (with the reason) without FUSE, or without root; else starts the
  // registry and makes the temp dir (named after `dir_name`) with the
  // mountpoint. Callers return when IsSkipped() or on failure.
  void SetUpStore(const std::string& dir_name) {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    if (geteuid() != 0) GTEST_SKIP() << "the store serves root's overlayfs: needs root";
    FdCheckedTest::SetUp();
    set_up_ = true;
    registry_ = std::make_unique<TestRegistry>();
    ASSERT_OK(registry_->Start());
    dir_ = std::make_unique<TempDir>(dir_name);
    mnt_ = dir_->Sub("store");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }

  void TearDown() override {
    if (!set_up_) return;
    envs_.clear();  // podman lets go of the store before it is unmounted
    if (IsMountPoint(mnt_)) {
      CommandResult r = RunCommand({REGFS_BINARY, "umount", mnt_});
      EXPECT_EQ(r.exit_code, 0) << r.output;
    }
    registry_.reset();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  // Starts `regfs store` on mnt_, with `extra` arguments. `look`: check
  // that the mountpoint is one (a stat() that makes the kernel fetch the
  // root's attributes).
  void StartStore(const std::vector<std::string>& extra = {}, bool look = true) {
    std::vector<std::string> args = {
        REGFS_BINARY,       "store",      "--tls-verify=false",  "--cache-dir",
        dir_->Sub("cache"), "--log-file", dir_->Sub("store.log")};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(mnt_);
    CommandResult r = RunCommand(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    if (look) {
      ASSERT_TRUE(IsMountPoint(mnt_));
    }
  }

  std::string StoreLog() {
    std::string s;
    ReadWholeFile(dir_->Sub("store.log"), &s);
    return s;
  }

  bool set_up_ = false;
  std::unique_ptr<TestRegistry> registry_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_;
  std::map<std::string, std::unique_ptr<PodmanEnv>> envs_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_INTEGRATION_STORE_FIXTURE_H_
