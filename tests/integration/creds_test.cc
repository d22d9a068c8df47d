// Credentials as the regfs binary takes them: --creds, --creds-file and
// $REGFS_CREDS reach the registry they are for and no other; a password
// given on the command line does not stay readable in /proc/PID/cmdline; and
// --retry-timeout bounds a registry that drips its answer. Runs the real
// binary against the in-process fault server (no FUSE needed: the daemon is
// observed while it resolves the image, before it mounts anything).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "fs/options.h"
#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "reader/http/registry_client.h"
#include "reader/image/reference.h"
#include "tests/support/fault_server.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"

namespace regfs::testing {
namespace {

using Clock = std::chrono::steady_clock;

// The parent pid of `p` from /proc/P/stat, or -1.
pid_t ParentOf(pid_t p) {
  std::ifstream in("/proc/" + std::to_string(p) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return -1;
  char state = 0;
  int ppid = -1;
  if (std::sscanf(stat.c_str() + paren + 1, " %c %d", &state, &ppid) != 2) return -1;
  return ppid;
}

// A child process and the daemon it forks (which starts a session of its
// own), always killed and reaped.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    pid_ = fork();
    if (pid_ == 0) {
      int devnull = open("/dev/null", O_RDWR);
      if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        dup2(devnull, STDERR_FILENO);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      // The daemon first, while it is still known as the child's child.
      for (pid_t p : Group()) {
        if (p != pid_) kill(p, SIGKILL);
      }
      kill(pid_, SIGKILL);
      int st = 0;
      while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
      }
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  // Itself and its children (the daemon it forked, if any).
  std::vector<pid_t> Group() const {
    std::vector<pid_t> out = {pid_};
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename().string();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      pid_t p = std::stoi(name);
      if (ParentOf(p) == pid_) out.push_back(p);
    }
    return out;
  }

 private:
  pid_t pid_ = -1;
};

std::string ReadCmdline(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string Basic(const std::string& user, const std::string& pass) {
  return "Basic " + Base64Encode(user + ":" + pass);
}

class CredsTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    ASSERT_OK(a_.Start());
    ASSERT_OK(b_.Start());
    dir_ = std::make_unique<TempDir>();
    mnt_ = dir_->Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  }
  void TearDown() override {
    for (FaultServer* s : {&a_, &b_}) {
      int open = -1;
      for (int i = 0; i < 300 && (open = s->open_connections()) != 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_EQ(open, 0) << "connections left open at " << s->host_port();
      s->Stop();
    }
    dir_.reset();
    FdCheckedTest::TearDown();
  }
  std::string ManifestPath() const { return "/v2/team/app/manifests/1.0"; }
  // Serves an image on a_ whose one layer (sample entries and a file "big")
  // drips at 2 KB/s; the manifest and config come at once.
  BuiltImage ServeDrippingImage(const std::string& big, Compression compression) {
    ImageSpec spec;
    LayerSpec layer;
    layer.entries = SampleEntries("drip");
    layer.entries.push_back(TarEntry::File("big", big));
    layer.compression = compression;
    spec.layers.push_back(layer);
    BuiltImage img = BuildImage(spec);
    a_.AddResource(ManifestPath(), img.manifest, img.manifest_descriptor.media_type);
    a_.AddResource("/v2/team/app/blobs/" + img.config_descriptor.digest, img.config);
    const std::string layer_path = "/v2/team/app/blobs/" + img.layers[0].descriptor.digest;
    a_.AddResource(layer_path, img.layers[0].blob);
    Fault drip;
    drip.kind = FaultKind::kDrip;
    drip.drip_bytes_per_s = 2048;
    a_.AddFault(layer_path, drip, 100000);
    return img;
  }
  std::string RefOn(const FaultServer& s) const { return s.host_port() + "/team/app:1.0"; }
  // Every Authorization header `s` received.
  static std::vector<std::string> AuthSeen(const FaultServer& s) {
    std::vector<std::string> out;
    for (const auto& r : s.requests()) out.push_back(r.Header("authorization"));
    return out;
  }

  FaultServer a_, b_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_;
};

// Makes `s` answer the manifest at a byte a second: a daemon that asks for
// it stays busy resolving while the test looks at it.
void DripManifest(FaultServer& s, const std::string& path) {
  Fault drip;
  drip.kind = FaultKind::kDrip;
  drip.drip_bytes_per_s = 1;
  s.AddResource(path, std::string(4096, ' '));
  s.AddFault(path, drip, 1000);
}

TEST_F(CredsTest, PasswordLeavesTheCommandLine) {
  for (bool foreground : {true, false}) {
    SCOPED_TRACE(foreground ? "-f" : "daemon");
    DripManifest(a_, ManifestPath());
    std::vector<std::string> argv = {REGFS_BINARY,       "mount",      "--tls-verify=false",
                                     "--retry-timeout",  "60",         "--cache-dir",
                                     dir_->Sub("cache"), "--log-file", dir_->Sub("log")};
    // Both spellings: "--creds VALUE" and "--creds=VALUE".
    if (foreground) {
      argv.insert(argv.end(), {"-f", "--creds", "someone:SECRETPASS"});
    } else {
      argv.push_back("--creds=someone:SECRETPASS");
    }
    argv.push_back(RefOn(a_));
    argv.push_back(mnt_);
    const int before = a_.RequestCount(ManifestPath());
    Child child(argv);
    ASSERT_GT(child.pid(), 0);
    // Once the manifest is asked for, the arguments were parsed long ago.
    bool asked = false;
    for (int i = 0; i < 1000 && !asked; ++i) {
      asked = a_.RequestCount(ManifestPath()) > before;
      if (!asked) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(asked);
    std::vector<pid_t> group = child.Group();
    EXPECT_GE(group.size(), foreground ? 1u : 2u);  // without -f: the daemon too
    for (pid_t p : group) {
      std::string cmdline = ReadCmdline(p);
      EXPECT_NE(cmdline.find("someone"), std::string::npos) << "not regfs's command line?";
      EXPECT_EQ(cmdline.find("SECRETPASS"), std::string::npos) << p;
      EXPECT_NE(cmdline.find(RefOn(a_)), std::string::npos);  // the rest is intact
    }
  }
}

TEST_F(CredsTest, EnvironmentAndFileCredentialsReachTheRegistry) {
  a_.RequireBasic("envuser", "envpass");
  CommandResult r = RunCommand({"env", "REGFS_CREDS=envuser:envpass", REGFS_BINARY, "inspect",
                                "--tls-verify=false", "--retry-timeout", "5", RefOn(a_)});
  EXPECT_NE(r.exit_code, 0);  // no such image; what matters is what was sent
  std::vector<std::string> seen = AuthSeen(a_);
  EXPECT_NE(std::find(seen.begin(), seen.end(), Basic("envuser", "envpass")), seen.end())
      << r.output;

  b_.RequireBasic("fileuser", "filepass");
  const std::string file = dir_->Sub("creds");
  {
    std::ofstream out(file);
    out << "# for the test\n"
        << a_.host_port() << "=other:pw\n"
        << b_.host_port() << "=fileuser:filepass\n";
  }
  r = RunCommand({REGFS_BINARY, "inspect", "--tls-verify=false", "--retry-timeout", "5",
                  "--creds-file", file, RefOn(b_)});
  EXPECT_NE(r.exit_code, 0);
  seen = AuthSeen(b_);
  EXPECT_NE(std::find(seen.begin(), seen.end(), Basic("fileuser", "filepass")), seen.end())
      << r.output;
  for (const std::string& h : seen) EXPECT_NE(h, Basic("other", "pw"));
}

TEST_F(CredsTest, CredsForOneRegistryNeverReachAnother) {
  // inspect B with credentials given for A only: B sees no Authorization.
  b_.RequireBasic("bob", "bobpass");
  CommandResult r = RunCommand({REGFS_BINARY, "inspect", "--tls-verify=false", "--retry-timeout",
                                "5", "--creds", a_.host_port() + "=alice:alicepass", RefOn(b_)});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_GE(b_.total_requests(), 1u);
  for (const std::string& h : AuthSeen(b_)) EXPECT_EQ(h, "") << r.output;
}

TEST_F(CredsTest, StoreRefusesCredsWithoutRegistry) {
  // A store that (wrongly) starts serves in the foreground until killed.
  CommandResult r = RunCommand({REGFS_BINARY, "store", "--tls-verify=false", "--creds",
                                "alice:alicepass", "--cache-dir", dir_->Sub("cache"), "-f", mnt_},
                               /*timeout_s=*/30);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("HOST=USER:PASSWORD"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("alicepass"), std::string::npos) << r.output;
  EXPECT_FALSE(IsMountPoint(mnt_));
  if (IsMountPoint(mnt_)) RunCommand({"fusermount3", "-u", "-z", mnt_});
}

TEST_F(CredsTest, StoreGivesEachRegistryItsOwnCredentials) {
  // What the store does per image it resolves: MakeClientOptions for that
  // image's registry, a client, a read.
  const std::string blob = "blob bytes for the store test";
  const std::string digest = Sha256Digest(blob);
  a_.RequireBasic("alice", "alicepass");
  b_.RequireBasic("bob", "bobpass");
  FaultServer c;  // a third registry, no credentials for it
  ASSERT_OK(c.Start());
  for (FaultServer* s : {&a_, &b_, &c}) s->AddResource("/v2/team/app/blobs/" + digest, blob);
  CommonOptions common;
  common.tls_verify = false;
  common.retry_timeout_s = 5;
  common.creds = {a_.host_port() + "=alice:alicepass", b_.host_port() + "=bob:bobpass"};
  for (FaultServer* s : {&a_, &b_, &c}) {
    SCOPED_TRACE(s->host_port());
    Result<Reference> ref = ParseReference(RefOn(*s));
    ASSERT_OK(ref);
    Result<RegistryClientOptions> o = MakeClientOptions(common, ref->registry);
    ASSERT_OK(o);
    o->credentials.use_env = false;
    Result<std::unique_ptr<RegistryClient>> client = RegistryClient::Create(*ref, *o);
    ASSERT_OK(client);
    std::string got(blob.size(), '\0');
    Status st = (*client)->ReadAt(BlobDescriptor{"", digest, blob.size()}, 0,
                                  {reinterpret_cast<uint8_t*>(got.data()), got.size()});
    if (s == &c) {
      EXPECT_OK(st);
    } else {
      ASSERT_OK(st);
      EXPECT_EQ(got, blob);
    }
  }
  for (const std::string& h : AuthSeen(a_)) EXPECT_NE(h, Basic("bob", "bobpass"));
  for (const std::string& h : AuthSeen(b_)) EXPECT_NE(h, Basic("alice", "alicepass"));
  for (const std::string& h : AuthSeen(c)) EXPECT_EQ(h, "");
  int open = -1;
  for (int i = 0; i < 300 && (open = c.open_connections()) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(open, 0);
  c.Stop();
}

TEST_F(CredsTest, RetryTimeoutBoundsADrippedManifest) {
  Fault drip;
  drip.kind = FaultKind::kDrip;
  drip.drip_bytes_per_s = 2048;
  a_.AddResource(ManifestPath(), std::string(256 * 1024, ' '));  // 128 s at 2 KB/s
  a_.AddFault(ManifestPath(), drip, 1000);
  auto start = Clock::now();
  CommandResult r = RunCommand(
      {REGFS_BINARY, "inspect", "--tls-verify=false", "--retry-timeout", "3", RefOn(a_)}, 120);
  auto took = Clock::now() - start;
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_FALSE(r.timed_out);
  EXPECT_LT(took, std::chrono::seconds(30)) << r.output;
}

TEST_F(CredsTest, RetryTimeoutBoundsADrippedLayerReadInAMount) {
  std::string why = FuseUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
  // An image whose layer blob drips at 2 KB/s (the manifest and config come
  // at once): a read of the blob through the mount ends with an error when
  // --retry-timeout ends, instead of holding the reader for minutes.
  BuiltImage img = ServeDrippingImage(std::string(512 * 1024, 'x'), Compression::kNone);
  CommandResult m = RunCommand(
      {REGFS_BINARY, "mount", "--tls-verify=false", "--retry-timeout", "3", "--cache-dir",
       dir_->Sub("cache"), "--log-file", dir_->Sub("log"), RefOn(a_), mnt_},
      60);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  auto start = Clock::now();
  CommandResult r = RunCommand({"dd", "if=" + mnt_ + "/blobs/" + img.layers[0].descriptor.digest,
                                "of=/dev/null", "bs=256k", "count=1"},
                               120);
  auto took = Clock::now() - start;
  CommandResult u = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(u.exit_code, 0) << u.output;
  EXPECT_NE(r.exit_code, 0) << r.output;  // EIO, not 256 KiB after two minutes
  EXPECT_FALSE(r.timed_out);
  EXPECT_LT(took, std::chrono::seconds(30)) << r.output;
  if (IsMountPoint(mnt_)) RunCommand({"fusermount3", "-u", "-z", mnt_});
}

// Issue 15: index builds stop when the mount goes away. The layer drips, so
// its index build (started in the background at mount, and asked for by a
// lookup on a FUSE thread) is in a transfer that --retry-timeout 60 would
// let run for a minute; `regfs umount` must end it, and the daemon exit,
// at once. Before the session-end hook the daemon outlived the umount until
// the transfer's budget ran out.
TEST_F(CredsTest, UmountStopsAnIndexBuildInProgress) {
  std::string why = FuseUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
  // Incompressible, so that the gzip blob takes minutes at 2 KB/s.
  std::string noise(512 * 1024, '\0');
  FillDeterministic(7, 0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(noise.data()), noise.size()));
  BuiltImage img = ServeDrippingImage(noise, Compression::kGzip);
  CommandResult m = RunCommand(
      {REGFS_BINARY, "mount", "--tls-verify=false", "--retry-timeout", "60", "--cache-dir",
       dir_->Sub("cache"), "--log-file", dir_->Sub("log"), RefOn(a_), mnt_},
      60);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  size_t at = status.find("\"pid\": ");
  ASSERT_NE(at, std::string::npos) << status;
  pid_t pid = std::stoi(status.substr(at + 7));
  // A lookup inside the layer waits for its index, on a FUSE thread.
  pid_t looker = fork();
  ASSERT_GE(looker, 0);
  if (looker == 0) {
    struct stat st;
    _exit(stat((mnt_ + "/layers/0/big").c_str(), &st) == 0 ? 0 : 1);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto start = Clock::now();
  CommandResult u = RunCommand({REGFS_BINARY, "umount", mnt_}, 60);
  std::printf("umount took %.2f s\n",
              std::chrono::duration<double>(Clock::now() - start).count());
  if (u.exit_code != 0) u = RunCommand({"fusermount3", "-u", "-z", mnt_}, 60);
  EXPECT_EQ(u.exit_code, 0) << u.output;
  bool gone = false;
  while (Clock::now() - start < std::chrono::seconds(30)) {
    // Gone, or exited and waiting to be reaped by whoever inherited it.
    std::string stat;
    bool zombie = ReadWholeFile("/proc/" + std::to_string(pid) + "/stat", &stat) &&
                  stat.find(") Z ") != std::string::npos;
    if (kill(pid, 0) != 0 || zombie) {
      gone = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("daemon exited %.2f s after umount was called\n", secs);
  std::string log;
  ReadWholeFile(dir_->Sub("log"), &log);
  EXPECT_TRUE(gone) << "the daemon outlived the umount by 30 s; its log:\n" << log;
  // Well under the transfer's 60 s budget; loose only for a loaded machine.
  EXPECT_LT(secs, 15.0);
  int st = 0;
  waitpid(looker, &st, 0);
  EXPECT_NE(WEXITSTATUS(st), 0);  // the lookup failed; it did not see the file
  if (!gone) kill(pid, SIGKILL);
  if (IsMountPoint(mnt_)) RunCommand({"fusermount3", "-u", "-z", mnt_});
}

}  // namespace
}  // namespace regfs::testing
