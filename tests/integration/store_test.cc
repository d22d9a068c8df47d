// `regfs store` as podman's additional layer store: the protocol files for a
// test image, then real `podman pull` / `podman run` (runc, no network) on a
// private storage.conf whose additionallayerstores names the store. The pull
// must take every layer from the store (no layer blob GET at the registry),
// the container must see what a normal pull shows, `podman rmi` must release
// the layers, and repeated pulls must not grow the daemon's fds.
#include "fs/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "reader/base/base64.h"
#include "tests/integration/store_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/rich_entries.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"
#include "tests/support/tree_snapshot.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

int CountFds(int pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

TEST(StoreBase64, DecodesWhatPodmanEncodes) {
  for (std::string s : {"127.0.0.1:5000/a/b:tag", "docker.io/library/x:1", "a", "ab", "abc"}) {
    std::optional<std::string> back = Base64DecodeStrict(Base64Encode(s));
    ASSERT_TRUE(back.has_value()) << s;
    EXPECT_EQ(*back, s);
  }
  EXPECT_FALSE(Base64DecodeStrict("abc").has_value());
  EXPECT_FALSE(Base64DecodeStrict("a=bc").has_value());
  EXPECT_FALSE(Base64DecodeStrict("ab!c").has_value());
  EXPECT_FALSE(Base64DecodeStrict("").has_value());
}

class StoreTest : public StoreFixture {
 protected:
  void SetUp() override {
    SetUpStore("regfs-store");
    if (IsSkipped() || HasFatalFailure()) return;
    image_ = BuildImage(Spec());
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/app", "v1", image_));
    ref_ = registry_->Ref("test/app", "v1");
  }

  // Layer 0: the host's cat and what it links to, and a file later layers
  // change. Layer 1: every entry type (devices, setuid, xattrs, hard links).
  // Layer 2: a deletion, an opaque directory, a replaced file.
  static ImageSpec Spec() {
    std::vector<TE> base = HostCatEntries();
    base.push_back(TE::Dir("opq"));
    base.push_back(TE::File("etc/message", "from layer 0\n"));
    base.push_back(TE::File("etc/gone", "deleted by layer 2\n"));
    base.push_back(TE::File("opq/old", "hidden by the opaque dir\n"));
    std::vector<TE> top = {TE::Dir("etc"), TE::Dir("opq")};
    top.push_back(TE::Whiteout("etc/gone"));
    top.push_back(TE::OpaqueWhiteout("opq"));
    top.push_back(TE::File("opq/new", "after the opaque marker\n"));
    top.push_back(TE::File("etc/message", "from layer 2\n"));
    ImageSpec spec;
    spec.layers.push_back({base, Compression::kGzip});
    // RichEntries' hard links carry headers whose metadata differs from
    // their targets': podman applies the link header's to the shared inode,
    // and so must the store (the comparison with a normal pull checks it).
    spec.layers.push_back({RichEntries("store"), Compression::kZstd});
    spec.layers.push_back({top, Compression::kGzip});
    spec.cmd = {"/bin/cat", "/etc/message"};
    return spec;
  }

  // A private podman configuration under dir_/<root>, with or without the
  // store.
  void Configure(const std::string& root, bool with_store) {
    envs_[root] = std::make_unique<PodmanEnv>(dir_->Sub(root), with_store ? mnt_ : "");
  }

  CommandResult Podman(const std::string& root, const std::string& args) {
    return envs_.at(root)->Run(args, 180);
  }

  int LayerBlobGets() const {
    int n = 0;
    for (const BuiltLayer& l : image_.layers) {
      n += registry_->CountRequests("GET", "/blobs/" + l.descriptor.digest);
    }
    return n;
  }

  // Lists every layer's diff/, which waits for its index build to end.
  void ListEveryDiff() {
    for (const BuiltLayer& l : image_.layers) {
      std::string diff = mnt_ + "/" + Base64Encode(ref_) + "/" + l.descriptor.digest + "/diff";
      DIR* d = opendir(diff.c_str());
      ASSERT_NE(d, nullptr) << diff << StoreLog();
      while (readdir(d) != nullptr) {
      }
      closedir(d);
    }
  }

  nlohmann::json StoreStatus() {
    std::string s;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &s));
    return nlohmann::json::parse(s, nullptr, false);
  }

  BuiltImage image_;
  std::string ref_;
};

TEST_F(StoreTest, ServesTheProtocolFiles) {
  StartStore();
  std::string image_dir = mnt_ + "/" + Base64Encode(ref_);
  struct stat st;
  // Unknown names: ENOENT, and the root lists nothing but .regfs.
  EXPECT_NE(lstat((mnt_ + "/" + Base64Encode("127.0.0.1:1/no/such:tag")).c_str(), &st), 0);
  EXPECT_NE(lstat((mnt_ + "/not-base64!").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  // The image's name is a link to the directory of all layers (one tree
  // per layer, however many images share it); containers/storage follows it.
  ASSERT_EQ(lstat(image_dir.c_str(), &st), 0) << StoreLog();
  ASSERT_TRUE(S_ISLNK(st.st_mode));
  ASSERT_EQ(stat(image_dir.c_str(), &st), 0) << StoreLog();
  ASSERT_TRUE(S_ISDIR(st.st_mode));
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    const BuiltLayer& l = image_.layers[i];
    std::string ld = image_dir + "/" + l.descriptor.digest;
    for (const char* f : {"diff", "info", "blob"}) {
      EXPECT_EQ(stat((ld + "/" + f).c_str(), &st), 0) << f;
    }
    EXPECT_NE(stat((ld + "/diff1").c_str(), &st), 0);
    EXPECT_EQ(errno, ENOENT);
    std::string info;
    ASSERT_TRUE(ReadWholeFile(ld + "/info", &info));
    auto j = nlohmann::json::parse(info, nullptr, false);
    ASSERT_TRUE(j.is_object()) << info;
    EXPECT_EQ(j["diff-digest"], l.diff_id);
    EXPECT_EQ(j["compressed-diff-digest"], l.descriptor.digest);
    EXPECT_EQ(j["compressed-size"], l.blob.size());
    EXPECT_EQ(j["compression"], l.compression == Compression::kZstd ? 4 : 2);
    std::string blob;
    ASSERT_TRUE(ReadWholeFile(ld + "/blob", &blob));
    EXPECT_TRUE(blob == l.blob) << "blob differs";
    // `use` is counted and answered ENOENT; so is rmdir of the layer dir.
    errno = 0;
    int fd = open((ld + "/use").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EXPECT_EQ(fd, -1);
    EXPECT_EQ(errno, ENOENT);
    if (fd >= 0) close(fd);
    EXPECT_NE(rmdir(ld.c_str()), 0);
    EXPECT_EQ(errno, ENOENT);
  }
  // The layer trees are in overlay form: whiteout as a 0:0 char device,
  // opaque directory with both xattrs (the user one not shown to root).
  std::string top = image_dir + "/" + image_.layers[2].descriptor.digest + "/diff";
  ASSERT_EQ(lstat((top + "/etc/gone").c_str(), &st), 0) << StoreLog();
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  char v[8];
  EXPECT_EQ(lgetxattr((top + "/opq").c_str(), "trusted.overlay.opaque", v, sizeof v), 1);
  EXPECT_EQ(lgetxattr((top + "/opq").c_str(), "user.overlay.opaque", v, sizeof v), -1);
  EXPECT_EQ(GetxattrAs(65534, top + "/opq", "user.overlay.opaque"), 1);
  std::string msg;
  ASSERT_TRUE(ReadWholeFile(top + "/etc/message", &msg));
  EXPECT_EQ(msg, "from layer 2\n");
  nlohmann::json s = StoreStatus();
  EXPECT_EQ(s["uses"], image_.layers.size()) << s.dump();
  EXPECT_EQ(s["releases"], image_.layers.size()) << s.dump();
  EXPECT_EQ(s["images"], 1) << s.dump();
}

// podman reads each layer's info during `podman pull`. By default that
// fetches nothing; with --index-on-pull it starts the layers' index builds.
TEST_F(StoreTest, ReadingInfoStartsIndexBuildsOnlyWithIndexOnPull) {
  for (bool on_pull : {false, true}) {
    SCOPED_TRACE(on_pull ? "--index-on-pull" : "default");
    if (on_pull) {
      ASSERT_EQ(RunCommand({REGFS_BINARY, "umount", mnt_}).exit_code, 0);
      StartStore({"--index-on-pull"});
    } else {
      StartStore();
    }
    const int gets_before = LayerBlobGets();
    const std::string image_dir = mnt_ + "/" + Base64Encode(ref_);
    for (const BuiltLayer& l : image_.layers) {
      std::string info;
      ASSERT_TRUE(ReadWholeFile(image_dir + "/" + l.descriptor.digest + "/info", &info))
          << StoreLog();
    }
    nlohmann::json s = StoreStatus();
    if (!on_pull) {
      for (const nlohmann::json& l : s["layers"]) EXPECT_FALSE(l["queued"].get<bool>()) << s.dump();
      EXPECT_EQ(s["indexedLayers"].get<int>(), 0) << s.dump();
      EXPECT_EQ(LayerBlobGets(), gets_before);
      continue;
    }
    // Without anything looking into diff/, every layer gets indexed.
    // Bounded wait: 600 x 50 ms.
    for (int i = 0; i < 600 && s["indexedLayers"].get<int>() < static_cast<int>(image_.layers.size());
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      s = StoreStatus();
    }
    EXPECT_EQ(s["indexedLayers"].get<int>(), static_cast<int>(image_.layers.size())) << s.dump();
    for (const nlohmann::json& l : s["layers"]) EXPECT_TRUE(l["queued"].get<bool>()) << s.dump();
    EXPECT_GT(LayerBlobGets(), gets_before);
  }
}

TEST_F(StoreTest, PodmanPullsFromTheStoreAndRuns) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  StartStore();
  Configure("lazy", true);
  CommandResult pull = Podman("lazy", "--log-level=debug pull --tls-verify=false " + ref_);
  ASSERT_EQ(pull.exit_code, 0) << pull.output << StoreLog();
  // Every layer came from the store: podman says so, the registry agrees.
  for (const BuiltLayer& l : image_.layers) {
    EXPECT_NE(pull.output.find("Skipping blob " + l.descriptor.digest + " (already present)"),
              std::string::npos)
        << l.descriptor.digest << "\n"
        << pull.output;
  }
  EXPECT_EQ(LayerBlobGets(), 0) << pull.output;
  // Nor did the store fetch anything during the pull (no --index-on-pull).
  nlohmann::json after_pull = StoreStatus();
  ASSERT_EQ(after_pull["layers"].size(), image_.layers.size()) << after_pull.dump();
  for (const nlohmann::json& l : after_pull["layers"]) {
    EXPECT_FALSE(l["queued"].get<bool>()) << after_pull.dump();
  }

  CommandResult run = Podman("lazy", "run --rm --runtime /usr/sbin/runc --network none " + ref_ +
                                         " cat /etc/message /opq/new");
  ASSERT_EQ(run.exit_code, 0) << run.output << StoreLog();
  EXPECT_EQ(run.output, "from layer 2\nafter the opaque marker\n");
  // Deleted and opaque-hidden files are gone; setuid and devices show.
  CommandResult gone =
      Podman("lazy", "run --rm --runtime /usr/sbin/runc --network none " + ref_ + " cat /etc/gone");
  EXPECT_NE(gone.exit_code, 0) << gone.output;
  CommandResult hidden =
      Podman("lazy", "run --rm --runtime /usr/sbin/runc --network none " + ref_ + " cat /opq/old");
  EXPECT_NE(hidden.exit_code, 0) << hidden.output;
  ListEveryDiff();
  nlohmann::json s = StoreStatus();
  EXPECT_GE(s["uses"].get<int>(), static_cast<int>(image_.layers.size())) << s.dump();
  EXPECT_EQ(s["indexedLayers"].get<int>(), static_cast<int>(image_.layers.size())) << s.dump();

  CommandResult rmi = Podman("lazy", "rmi " + ref_);
  ASSERT_EQ(rmi.exit_code, 0) << rmi.output;
  s = StoreStatus();
  EXPECT_GE(s["releases"].get<int>(), static_cast<int>(image_.layers.size())) << s.dump();
}

TEST_F(StoreTest, ContainerSeesWhatANormalPullShows) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  StartStore();
  std::map<std::string, TreeSnapshot> snaps;
  for (bool lazy : {true, false}) {
    std::string root = lazy ? "lazy" : "plain";
    Configure(root, lazy);
    CommandResult pull = Podman(root, "pull --tls-verify=false " + ref_);
    ASSERT_EQ(pull.exit_code, 0) << pull.output;
    CommandResult create = Podman(root, "create --runtime /usr/sbin/runc --network none " + ref_);
    ASSERT_EQ(create.exit_code, 0) << create.output;
    std::string id = create.output.substr(0, create.output.find('\n'));
    CommandResult mount = Podman(root, "mount " + id);
    ASSERT_EQ(mount.exit_code, 0) << mount.output;
    std::string merged = mount.output.substr(0, mount.output.find('\n'));
    SnapshotOptions so;
    so.ignore_xattr_prefixes = {"security.selinux"};
    snaps[root] = SnapshotTree(merged, so);
    snaps[root].erase("");
    EXPECT_GT(snaps[root].size(), 20u);
    CommandResult um = Podman(root, "umount " + id);
    EXPECT_EQ(um.exit_code, 0) << um.output;
  }
  EXPECT_EQ(DiffSnapshots(snaps["plain"], snaps["lazy"]), "") << StoreLog();
}

TEST_F(StoreTest, RepeatedPullsDoNotGrowFds) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  StartStore();
  Configure("lazy", true);
  int pid = StoreStatus()["pid"].get<int>();
  int first = -1;
  int gets_after_first = -1;
  constexpr int kRounds = 6;
  for (int round = 0; round < kRounds; ++round) {
    CommandResult pull = Podman("lazy", "pull --tls-verify=false " + ref_);
    ASSERT_EQ(pull.exit_code, 0) << pull.output;
    CommandResult run = Podman(
        "lazy", "run --rm --runtime /usr/sbin/runc --network none " + ref_ + " cat /etc/message");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_EQ(run.output, "from layer 2\n");
    CommandResult rmi = Podman("lazy", "rmi " + ref_);
    ASSERT_EQ(rmi.exit_code, 0) << rmi.output;
    int fds = CountFds(pid);
    ASSERT_GT(fds, 0);
    if (round == 0) {
      ListEveryDiff();  // the background index builds are over
      gets_after_first = LayerBlobGets();
    }
    if (round == 1) first = fds;  // after the first round's connections settle
    if (round > 1) {
      EXPECT_LE(fds, first + 2) << "round " << round;
    }
  }
  EXPECT_EQ(LayerBlobGets(), gets_after_first) << "later rounds are served from the cache";
}

// Boot with the registry unreachable: the store starts, and an image it
// resolved before (the resolution and the layers' indexes and chunks are in
// the cache) is served from the cache; an image it never saw is ENOENT
// (podman then pulls normally) until the registry is back, and that ENOENT
// is not cached.
TEST_F(StoreTest, StartsOfflineAndServesWhatTheCacheHolds) {
  ImageSpec other_spec;
  other_spec.layers.push_back({{TE::Dir("only"), TE::File("only/here", "other image\n")},
                               Compression::kGzip});
  BuiltImage other = BuildImage(other_spec);
  ImagePusher pusher(*registry_);
  ASSERT_OK(pusher.PushImage("test/other", "v1", other));
  std::string other_ref = registry_->Ref("test/other", "v1");
  const std::vector<std::string> kShortRetries = {"--retry-timeout", "3"};
  StartStore(kShortRetries);
  ListEveryDiff();  // indexes every layer: indexes and chunks go to the cache
  std::string image_dir = mnt_ + "/" + Base64Encode(ref_);
  std::string top = image_dir + "/" + image_.layers[2].descriptor.digest + "/diff";
  std::string msg;
  ASSERT_TRUE(ReadWholeFile(top + "/etc/message", &msg)) << StoreLog();
  EXPECT_EQ(msg, "from layer 2\n");
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  ASSERT_EQ(um.exit_code, 0) << um.output;

  registry_->Stop();
  StartStore(kShortRetries);
  struct stat st;
  ASSERT_EQ(stat(image_dir.c_str(), &st), 0) << "an image seen before, offline" << StoreLog();
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  msg.clear();
  ASSERT_TRUE(ReadWholeFile(top + "/etc/message", &msg)) << StoreLog();
  EXPECT_EQ(msg, "from layer 2\n");
  std::string base = image_dir + "/" + image_.layers[0].descriptor.digest + "/diff";
  ASSERT_EQ(stat((base + "/etc/gone").c_str(), &st), 0) << StoreLog();
  std::string other_dir = mnt_ + "/" + Base64Encode(other_ref);
  errno = 0;
  EXPECT_NE(stat(other_dir.c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);

  ASSERT_OK(registry_->Restart());
  ASSERT_EQ(stat(other_dir.c_str(), &st), 0) << "the registry is back" << StoreLog();
  std::string here;
  ASSERT_TRUE(ReadWholeFile(other_dir + "/" + other.layers[0].descriptor.digest + "/diff/only/here",
                            &here))
      << StoreLog();
  EXPECT_EQ(here, "other image\n");
}

}  // namespace
}  // namespace regfs

namespace regfs {
namespace {

// --idle-timeout: what nothing uses is released, what the kernel holds (an
// open file, a cwd, a running container's lowerdir) is not, and a released
// layer looked up again is served from the cache without the registry.
class StoreIdleTest : public StoreTest {
 protected:
  void TearDown() override {
    if (child_ > 0) {
      kill(child_, SIGKILL);
      waitpid(child_, nullptr, 0);
    }
    StoreTest::TearDown();
  }
  std::string Diff(size_t i) const {
    return mnt_ + "/" + Base64Encode(ref_) + "/" + image_.layers[i].descriptor.digest + "/diff";
  }
  bool Live(const nlohmann::json& s, size_t i) const {
    for (const nlohmann::json& l : s["layers"]) {
      if (l["digest"] == image_.layers[i].descriptor.digest) return l["live"].get<bool>();
    }
    return false;
  }
  // Polls status.json (bounded: 60 s) until `done` holds; returns the last.
  nlohmann::json WaitStatus(const std::function<bool(const nlohmann::json&)>& done) {
    nlohmann::json s;
    for (int i = 0; i < 600; ++i) {
      s = StoreStatus();
      if (done(s)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return s;
  }
  // A process whose cwd is `dir`, until the test ends.
  // Returns once the child is in `dir`.
  void HoldCwd(const std::string& dir) {
    int ready[2];
    ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
    child_ = fork();
    ASSERT_GE(child_, 0);
    if (child_ == 0) {
      if (chdir(dir.c_str()) != 0) _exit(1);
      (void)!write(ready[1], "c", 1);
      for (;;) pause();
    }
    close(ready[1]);
    char c;
    ssize_t n = read(ready[0], &c, 1);
    close(ready[0]);
    ASSERT_EQ(n, 1) << "the child could not enter " << dir;
  }
  pid_t child_ = -1;
};

TEST_F(StoreIdleTest, IdleLayersAreReleasedAndHeldOnesAreNot) {
  // 2 s: the snapshot of all three layers below must come within one idle
  // period of the listing, also on a loaded machine.
  StartStore({"--idle-timeout", "2"});
  // Layer 2: an open file. Layer 1: a process's cwd. Layer 0: nothing. Held
  // before anything else, so that they are never idle (a layer released
  // between its first lookup and the open would be counted released twice).
  int fd = open((Diff(2) + "/etc/message").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << StoreLog();
  HoldCwd(Diff(1) + "/usr/share");
  ListEveryDiff();
  std::string msg;
  ASSERT_TRUE(ReadWholeFile(Diff(2) + "/etc/message", &msg)) << StoreLog();
  EXPECT_EQ(msg, "from layer 2\n");
  nlohmann::json full = StoreStatus();
  ASSERT_EQ(full["liveLayers"], 3) << full.dump();
  // Layer 0 goes (after the kernel was asked to drop its entries).
  nlohmann::json s = WaitStatus([&](const nlohmann::json& j) { return !Live(j, 0); });
  ASSERT_FALSE(Live(s, 0)) << s.dump() << StoreLog();
  // Several idle periods later the held ones are still there.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  s = StoreStatus();
  EXPECT_TRUE(Live(s, 1)) << s.dump();
  EXPECT_TRUE(Live(s, 2)) << s.dump();
  EXPECT_EQ(s["liveLayerHandles"], 2) << s.dump();
  EXPECT_LT(s["treeNodes"].get<uint64_t>(), full["treeNodes"].get<uint64_t>()) << s.dump();
  char buf[64];
  ssize_t n = pread(fd, buf, sizeof buf, 0);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "from layer 2\n");
  close(fd);
  kill(child_, SIGKILL);
  waitpid(child_, nullptr, 0);
  child_ = -1;
  // Nothing holds anything now: everything goes, registry clients included.
  // (Handles and clients go a moment after the layers leave the tree.)
  s = WaitStatus([](const nlohmann::json& j) {
    return j["liveLayers"] == 0 && j["liveLayerHandles"] == 0 && j["registryClients"] == 0;
  });
  EXPECT_EQ(s["liveLayers"], 0) << s.dump() << StoreLog();
  EXPECT_EQ(s["liveLayerHandles"], 0) << s.dump();
  EXPECT_EQ(s["registryClients"], 0) << s.dump();
  EXPECT_EQ(s["releasedLayers"], 3) << s.dump();

  // The image looked up again: made from the cache, same bytes, and not a
  // request to the registry (its access log; lines may lag a little).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int requests = registry_->CountRequests();
  ASSERT_TRUE(ReadWholeFile(Diff(2) + "/etc/message", &msg)) << StoreLog();
  EXPECT_EQ(msg, "from layer 2\n");
  std::string rich = Diff(1) + "/usr/bin";
  struct stat st;
  ASSERT_EQ(lstat(rich.c_str(), &st), 0) << StoreLog();
  std::string base;
  ASSERT_TRUE(ReadWholeFile(Diff(0) + "/opq/old", &base)) << StoreLog();
  EXPECT_EQ(base, "hidden by the opaque dir\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(registry_->CountRequests(), requests);
  s = StoreStatus();
  EXPECT_EQ(s["liveLayers"], 3) << s.dump();
}

TEST_F(StoreIdleTest, ARunningContainersLayersAreNotReleased) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  StartStore({"--idle-timeout", "1"});
  Configure("lazy", true);
  CommandResult pull = Podman("lazy", "pull --tls-verify=false " + ref_);
  ASSERT_EQ(pull.exit_code, 0) << pull.output;
  CommandResult run = Podman("lazy", "run -d -i --name idle --runtime /usr/sbin/runc --network none " +
                                         ref_ + " /bin/cat");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // A lowerdir of the container's overlay: its layers' diff/ are held for as
  // long as it runs (cat waits on its stdin), through many idle periods.
  std::this_thread::sleep_for(std::chrono::seconds(5));
  nlohmann::json s = StoreStatus();
  EXPECT_EQ(s["liveLayers"], 3) << s.dump() << StoreLog();
  CommandResult exec = Podman("lazy", "exec idle /bin/cat /etc/message /opq/new");
  EXPECT_EQ(exec.exit_code, 0) << exec.output;
  EXPECT_EQ(exec.output, "from layer 2\nafter the opaque marker\n");
  CommandResult rm = Podman("lazy", "rm -f -t 0 idle");
  EXPECT_EQ(rm.exit_code, 0) << rm.output;
  // Once the container is gone, its layers go too.
  s = WaitStatus([](const nlohmann::json& j) { return j["liveLayers"] == 0; });
  EXPECT_EQ(s["liveLayers"], 0) << s.dump() << StoreLog();
  // And a new container of the image runs from the store again.
  CommandResult again = Podman(
      "lazy", "run --rm --runtime /usr/sbin/runc --network none " + ref_ + " cat /etc/message");
  EXPECT_EQ(again.exit_code, 0) << again.output << StoreLog();
  EXPECT_EQ(again.output, "from layer 2\n");
}

}  // namespace
}  // namespace regfs
