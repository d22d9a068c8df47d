// `regfs store` runs as root and resolves references with the machine's
// credentials; it must not be usable against its host by other local users.
// These tests run the real binary against a real registry and check that
//  - user nobody can neither make the store resolve a reference (no registry
//    request follows) nor see what root resolved, and root still can;
//  - the mount is nosuid,nodev: a setuid-root program executed from it by
//    nobody runs with nobody's euid, a device node in a layer does not open;
//  - containers are unaffected (overlayfs checks setuid and devices on its
//    own mount): a setuid-root program in the image, run by a container as
//    user 65534, gets euid 0 and opens the image's device node, exactly as
//    after a normal pull.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "reader/base/base64.h"
#include "tests/integration/store_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

// Prints its effective uid, then tries to open and read each argument.
constexpr const char* kProbeSource = R"(
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char** argv) {
  printf("euid=%d", (int)geteuid());
  for (int i = 1; i < argc; ++i) {
    int fd = open(argv[i], O_RDONLY);
    if (fd < 0) {
      printf(" open:%s", strerror(errno));
      continue;
    }
    char b[4];
    printf(" read:%d", (int)read(fd, b, sizeof b));
    close(fd);
  }
  printf("\n");
  return 0;
}
)";

// `setpriv` to user and group nobody, no supplementary groups, then ARGS.
std::string AsNobody(const std::string& args) {
  return "setpriv --reuid=65534 --regid=65534 --clear-groups " + args;
}

class StoreSecurityTest : public StoreFixture {
 protected:
  void SetUp() override {
    if (RunShell("command -v cc && command -v setpriv").exit_code != 0) {
      GTEST_SKIP() << "cc or setpriv missing";
    }
    SetUpStore("regfs-store-sec");
    if (IsSkipped() || HasFatalFailure()) return;
    // Other users reach the mountpoint, so that what refuses them is the store.
    ASSERT_EQ(chmod(dir_->path().c_str(), 0755), 0);
    std::ofstream(dir_->Sub("probe.c")) << kProbeSource;
    CommandResult cc =
        RunCommand({"cc", "-static", "-O2", "-o", dir_->Sub("probe"), dir_->Sub("probe.c")});
    ASSERT_EQ(cc.exit_code, 0) << cc.output;
    ImageSpec spec;
    spec.layers.push_back(
        {{TE::Dir("bin"), TE::File("bin/probe", ReadHostFile(dir_->Sub("probe")), 04755),
          TE::Dir("probe"), TE::CharDev("probe/zero", 1, 5, 0666)},
         Compression::kGzip});
    spec.cmd = {"/bin/probe"};
    image_ = BuildImage(spec);
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/sec", "v1", image_));
    ref_ = registry_->Ref("test/sec", "v1");
    image_dir_ = mnt_ + "/" + Base64Encode(ref_);
    diff_ = image_dir_ + "/" + image_.layers[0].descriptor.digest + "/diff";
  }

  nlohmann::json StoreStatus() {
    std::string s;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &s));
    return nlohmann::json::parse(s, nullptr, false);
  }

  BuiltImage image_;
  std::string ref_, image_dir_, diff_;
};

TEST_F(StoreSecurityTest, NobodyCannotMakeTheStoreResolveOrSeeImages) {
  StartStore();
  const int requests_before = registry_->CountRequests();
  CommandResult stat_nobody = RunShell(AsNobody("stat " + ShellQuote(image_dir_)));
  EXPECT_NE(stat_nobody.exit_code, 0) << stat_nobody.output;
  // Nor from inside the mount: nobody's working directory is the store root.
  CommandResult from_inside = RunShell("cd " + ShellQuote(mnt_) + " && " +
                                       AsNobody("stat " + ShellQuote(Base64Encode(ref_))));
  EXPECT_NE(from_inside.exit_code, 0) << from_inside.output;
  CommandResult list_nobody = RunShell(AsNobody("ls -a " + ShellQuote(mnt_)));
  EXPECT_NE(list_nobody.exit_code, 0) << list_nobody.output;
  EXPECT_EQ(StoreStatus()["images"], 0) << StoreLog();
  EXPECT_EQ(registry_->CountRequests(), requests_before);

  // Root's lookup of the same name is not answered from a remembered miss.
  struct stat st;
  ASSERT_EQ(stat(image_dir_.c_str(), &st), 0) << StoreLog();
  EXPECT_EQ(StoreStatus()["images"], 1);
  EXPECT_GT(registry_->CountRequests("GET", "/manifests/"), 0);

  // What root resolved stays out of nobody's reach, and nobody's attempts
  // fetch nothing.
  const int requests_after_root = registry_->CountRequests();
  const std::string blob = image_dir_ + "/" + image_.layers[0].descriptor.digest + "/blob";
  CommandResult cat_blob = RunShell(AsNobody("cat " + ShellQuote(blob) + " >/dev/null"));
  EXPECT_NE(cat_blob.exit_code, 0) << cat_blob.output;
  CommandResult stat_diff = RunShell(AsNobody("stat " + ShellQuote(diff_ + "/bin/probe")));
  EXPECT_NE(stat_diff.exit_code, 0) << stat_diff.output;
  CommandResult status_nobody =
      RunShell(AsNobody("cat " + ShellQuote(mnt_ + "/.regfs/status.json")));
  EXPECT_NE(status_nobody.exit_code, 0) << status_nobody.output;
  EXPECT_EQ(registry_->CountRequests(), requests_after_root);
  EXPECT_EQ(StoreStatus()["indexedLayers"], 0);
}

TEST_F(StoreSecurityTest, MountIsNosuidNodev) {
  StartStore();
  struct statvfs sv;
  ASSERT_EQ(statvfs(mnt_.c_str(), &sv), 0);
  EXPECT_NE(sv.f_flag & ST_NOSUID, 0u);
  EXPECT_NE(sv.f_flag & ST_NODEV, 0u);
  struct stat st;
  ASSERT_EQ(stat((diff_ + "/bin/probe").c_str(), &st), 0) << StoreLog();
  ASSERT_EQ(st.st_mode & 07777, 04755u);
  ASSERT_EQ(st.st_uid, 0u);
  // nobody starts inside the layer (root enters it first), so only nosuid
  // stands between the setuid-root program and euid 0.
  CommandResult probe = RunShell("cd " + ShellQuote(diff_ + "/bin") + " && " + AsNobody("./probe"));
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_EQ(probe.output, "euid=65534\n");
  // A device node in a layer does not open through the store, even for root.
  ASSERT_EQ(lstat((diff_ + "/probe/zero").c_str(), &st), 0);
  ASSERT_TRUE(S_ISCHR(st.st_mode));
  errno = 0;
  int fd = open((diff_ + "/probe/zero").c_str(), O_RDONLY | O_CLOEXEC);
  int err = errno;
  if (fd >= 0) close(fd);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(err, EACCES);
}

// The user's -o cannot turn setuid or devices back on.
TEST_F(StoreSecurityTest, UserOptionsDoNotUndoNosuidNodev) {
  StartStore({"-o", "suid,dev"});
  struct statvfs sv;
  ASSERT_EQ(statvfs(mnt_.c_str(), &sv), 0);
  EXPECT_NE(sv.f_flag & ST_NOSUID, 0u);
  EXPECT_NE(sv.f_flag & ST_NODEV, 0u);
}

// What the store is for still works: a container started through it as user
// 65534 runs the image's setuid-root program with euid 0 and reads the
// image's /dev/zero copy, as after a normal pull.
TEST_F(StoreSecurityTest, ContainersKeepSetuidAndDevices) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  StartStore();
  std::map<std::string, std::string> outputs;
  for (bool lazy : {true, false}) {
    std::string root = lazy ? "lazy" : "plain";
    envs_[root] = std::make_unique<PodmanEnv>(dir_->Sub(root), lazy ? mnt_ : "");
    CommandResult pull = envs_[root]->Run("pull --tls-verify=false " + ref_, 180);
    ASSERT_EQ(pull.exit_code, 0) << pull.output << StoreLog();
    CommandResult run =
        envs_[root]->Run("run --rm --runtime /usr/sbin/runc --network none --user 65534 " + ref_ +
                             " /bin/probe /probe/zero",
                         180);
    ASSERT_EQ(run.exit_code, 0) << run.output << StoreLog();
    outputs[root] = run.output;
  }
  EXPECT_EQ(outputs["plain"], "euid=0 read:4\n");
  EXPECT_EQ(outputs["lazy"], outputs["plain"]);
  // The lazy container really ran from the store.
  nlohmann::json s = StoreStatus();
  EXPECT_EQ(s["images"], 1) << s.dump();
  EXPECT_EQ(s["indexedLayers"], 1) << s.dump();
}

// --allow-registry: a reference to another registry is ENOENT and makes no
// request; one to a listed registry resolves.
TEST_F(StoreSecurityTest, AllowRegistryLimitsWhatResolves) {
  StartStore({"--allow-registry", "127.0.0.1:1"});
  const int before = registry_->CountRequests();
  struct stat st;
  errno = 0;
  EXPECT_NE(stat(image_dir_.c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(StoreStatus()["images"], 0) << StoreLog();
  EXPECT_EQ(registry_->CountRequests(), before);
  ASSERT_EQ(RunCommand({REGFS_BINARY, "umount", mnt_}).exit_code, 0);
  StartStore({"--allow-registry", "localhost:1", "--allow-registry", registry_->HostPort()});
  EXPECT_EQ(stat(image_dir_.c_str(), &st), 0) << StoreLog();
  EXPECT_EQ(StoreStatus()["images"], 1);
}

}  // namespace
}  // namespace regfs
