// The fixture every integration test shares: a real docker-registry, a temp
// dir with a mountpoint and a cache, and the regfs binary (REGFS_BINARY) run
// as a user would. Checks fds, and that no test leaves a mount behind.
#ifndef REGFS_TESTS_INTEGRATION_REGFS_FIXTURE_H_
#define REGFS_TESTS_INTEGRATION_REGFS_FIXTURE_H_

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {

class RegfsFixture : public FdCheckedTest {
 protected:
  // Skips (with the reason) without FUSE, or without root when `root_for`
  // names what needs it. Callers return when IsSkipped() or on failure.
  void SetUpRegfs(const char* root_for = nullptr,
                  TestRegistryOptions registry_options = TestRegistryOptions()) {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    if (root_for && geteuid() != 0) GTEST_SKIP() << root_for << " needs root";
    FdCheckedTest::SetUp();
    set_up_ = true;
    registry_ = std::make_unique<TestRegistry>(registry_options);
    ASSERT_OK(registry_->Start());
    dir_ = std::make_unique<TempDir>();
    mnt_ = dir_->Sub("mnt");
    cache_ = dir_->Sub("cache");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }

  void TearDown() override {
    if (!set_up_) return;
    if (IsMountPoint(mnt_)) {
      RunCommand({REGFS_BINARY, "umount", mnt_});
      ADD_FAILURE() << "test left " << mnt_ << " mounted";
    }
    registry_.reset();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  CommandResult Mount(const std::string& ref, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {REGFS_BINARY,  "mount", "--tls-verify=false", "--cache-dir",
                                     cache_,        "--log-file", dir_->Sub("daemon.log")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(ref);
    argv.push_back(mnt_);
    return RunCommand(argv);
  }

  void Umount() {
    CommandResult r = RunCommand({REGFS_BINARY, "umount", mnt_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_FALSE(IsMountPoint(mnt_));
  }

  nlohmann::json StatusJson() {
    std::string s;
    if (!ReadWholeFile(mnt_ + "/.regfs/status.json", &s)) return nlohmann::json::object();
    auto j = nlohmann::json::parse(s, nullptr, false);
    return j.is_discarded() ? nlohmann::json::object() : j;
  }

  pid_t DaemonPid() { return StatusJson().value("pid", -1); }

  std::string DaemonLog() {
    std::string s;
    ReadWholeFile(dir_->Sub("daemon.log"), &s);
    return s;
  }

  bool set_up_ = false;
  std::unique_ptr<TestRegistry> registry_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_, cache_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_INTEGRATION_REGFS_FIXTURE_H_
