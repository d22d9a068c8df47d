// registries.conf mirrors for real: an upstream docker-registry and a second
// one in proxy mode (a pull-through cache, `proxy: remoteurl:`) as its
// mirror. `regfs mount`, `regfs inspect` and `regfs store` + podman read the
// same registries.conf: every blob request goes to the mirror (the
// upstream's access log shows only the mirror's own fetches), the bytes are
// right, reads continue from the upstream once the mirror is stopped, and
// short names resolve as `podman pull` resolves them.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "tests/integration/regfs_fixture.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

class MirrorTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs();
    if (IsSkipped() || HasFatalFailure()) return;
    ImageSpec spec;
    std::vector<TE> base = HostCatEntries();
    base.push_back(TE::File("etc/message", "through the mirror\n"));
    spec.layers.push_back({base, Compression::kGzip});
    spec.layers.push_back({SampleEntries("m"), Compression::kZstd});
    // A layer of several MiB, so that reads take several requests.
    spec.layers.push_back(
        {{TE::File("big/data", DeterministicBytes(3, 6 << 20))}, Compression::kNone});
    spec.cmd = {"/bin/cat", "/etc/message"};
    image_ = BuildImage(spec);
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("team/app", "v1", image_));
    TestRegistryOptions mo;
    mo.proxy_remote_url = registry_->Url();
    mirror_ = std::make_unique<TestRegistry>(mo);
    ASSERT_OK(mirror_->Start());
    conf_ = dir_->Sub("registries.conf");
    WriteConf(MirrorConf());
  }

  void TearDown() override {
    mirror_.reset();
    RegfsFixture::TearDown();
  }

  std::string MirrorConf() const {
    return "[[registry]]\nlocation = \"" + registry_->HostPort() +
           "\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"" + mirror_->HostPort() +
           "\"\ninsecure = true\n";
  }
  void WriteConf(const std::string& text) const { std::ofstream(conf_) << text; }

  std::string Ref() const { return registry_->Ref("team/app", "v1"); }

  // Upstream GETs of the repository that did not come from the mirror:
  // regfs's and podman's user agents ("regfs/", "containers/") are the
  // clients; the mirror fetches with its own.
  std::vector<std::string> UpstreamLinesFromClients() const {
    std::vector<std::string> out;
    std::ifstream in(registry_->access_log_path());
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("/v2/team/app/") == std::string::npos) continue;
      if (line.find("regfs/") != std::string::npos ||
          line.find("containers/") != std::string::npos) {
        out.push_back(line);
      }
    }
    return out;
  }
  int UpstreamBlobGets() const { return registry_->CountRequests("GET", "/v2/team/app/blobs/"); }
  int MirrorBlobGets() const { return mirror_->CountRequests("GET", "/v2/team/app/blobs/"); }

  // The config, and every layer blob under the mount, hashed in full.
  void CheckEveryBlob() {
    std::string config;
    ASSERT_TRUE(ReadWholeFile(mnt_ + "/config.json", &config));
    EXPECT_EQ(config, image_.config);
    std::vector<BlobDescriptor> blobs;
    for (const BuiltLayer& l : image_.layers) blobs.push_back(l.descriptor);
    for (const BlobDescriptor& b : blobs) {
      std::string bytes;
      ASSERT_TRUE(ReadWholeFile(mnt_ + "/blobs/" + b.digest, &bytes)) << b.digest << DaemonLog();
      EXPECT_EQ(Sha256Digest(bytes), b.digest);
    }
  }

  std::unique_ptr<TestRegistry> mirror_;
  BuiltImage image_;
  std::string conf_;
};

TEST_F(MirrorTest, MountReadsEveryBlobThroughTheMirror) {
  CommandResult m = Mount(Ref(), {"--registries-conf", conf_, "-vv"});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  CheckEveryBlob();
  std::string message;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/rootfs/etc/message", &message)) << DaemonLog();
  EXPECT_EQ(message, "through the mirror\n");
  nlohmann::json st = StatusJson();
  EXPECT_EQ(st.value("manifestEndpoint", ""), mirror_->HostPort()) << st.dump(2);
  for (const auto& l : st["layers"]) {
    EXPECT_EQ(l["servedBy"].size(), 1u) << l.dump();
    EXPECT_GT(l["servedBy"].value(mirror_->HostPort(), uint64_t{0}), 0u) << l.dump();
  }
  ASSERT_EQ(st["endpoints"].size(), 2u);
  EXPECT_TRUE(st["endpoints"][0]["mirror"].get<bool>());
  EXPECT_TRUE(st["endpoints"][0]["servedManifest"].get<bool>());
  EXPECT_EQ(st["endpoints"][1]["httpRequests"].get<uint64_t>(), 0u) << st.dump(2);
  Umount();
  EXPECT_GT(MirrorBlobGets(), 0);
  EXPECT_GT(UpstreamBlobGets(), 0) << "the mirror filled itself from the upstream";
  std::vector<std::string> direct = UpstreamLinesFromClients();
  EXPECT_TRUE(direct.empty()) << "upstream served clients directly:\n" << direct.front();
}

// The mirror is cold: its first answer for each layer is the whole blob
// (200), streamed from the upstream while it fills its own copy. regfs drops
// such answers at their headers and waits for the fill, so it takes from the
// mirror only the bytes it asked for, each once, from the mirror's storage
// (206); windowing the whole answers took what preceded each range too, and
// cost the upstream a fetch per request.
TEST_F(MirrorTest, MountWaitsForTheMirrorToFillInsteadOfStreamingThroughIt) {
  CommandResult m = Mount(Ref(), {"--registries-conf", conf_});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  CheckEveryBlob();
  nlohmann::json st = StatusJson();
  ASSERT_EQ(st["endpoints"].size(), 2u) << st.dump(2);
  const nlohmann::json& mirror = st["endpoints"][0];
  uint64_t asked = image_.manifest.size() + image_.config.size();
  for (const BuiltLayer& l : image_.layers) asked += l.descriptor.size;
  // The rootfs's small reads may fetch a chunk twice (a few KiB first); a
  // whole answer windowed would add the megabytes before a range.
  EXPECT_LE(mirror["httpBytes"].get<uint64_t>(), asked + (256 << 10)) << st.dump(2);
  EXPECT_GE(mirror["fillingAnswers"].get<uint64_t>(), 1u) << st.dump(2);
  EXPECT_GE(mirror["fillsWaited"].get<uint64_t>(), 1u) << st.dump(2);
  Umount();
  // The big layer came from the mirror's storage, by ranges.
  const std::string big = "/v2/team/app/blobs/" + image_.layers.back().descriptor.digest;
  int ranged = 0;
  for (const AccessLogEntry& e : mirror_->AccessLog()) {
    if (e.method == "GET" && e.path == big && e.status == 206) ++ranged;
  }
  EXPECT_GE(ranged, 1);
}

TEST_F(MirrorTest, ReadsContinueFromTheUpstreamWhenTheMirrorStops) {
  CommandResult m = Mount(Ref(), {"--registries-conf", conf_});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  // The mount resolved through the mirror; now it goes away.
  EXPECT_EQ(StatusJson().value("manifestEndpoint", ""), mirror_->HostPort());
  mirror_->Stop();
  CheckEveryBlob();
  std::string message;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/rootfs/etc/message", &message)) << DaemonLog();
  EXPECT_EQ(message, "through the mirror\n");
  nlohmann::json st = StatusJson();
  uint64_t from_upstream = 0;
  for (const auto& l : st["layers"]) {
    from_upstream += l["servedBy"].value(registry_->HostPort(), uint64_t{0});
  }
  EXPECT_GT(from_upstream, 0u) << st.dump(2);
  EXPECT_GE(st["endpoints"][0]["failures"].get<uint64_t>(), 1u) << st.dump(2);
  Umount();
  EXPECT_FALSE(UpstreamLinesFromClients().empty());
}

TEST_F(MirrorTest, BlockedRegistryIsRefusedClearly) {
  WriteConf("[[registry]]\nlocation = \"" + registry_->HostPort() + "\"\nblocked = true\n");
  CommandResult r = RunCommand(
      {REGFS_BINARY, "inspect", "--tls-verify=false", "--registries-conf", conf_, Ref()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is blocked in " + conf_), std::string::npos) << r.output;
  CommandResult m = Mount(Ref(), {"--registries-conf", conf_});
  EXPECT_NE(m.exit_code, 0);
  EXPECT_NE(m.output.find("blocked"), std::string::npos) << m.output;
  EXPECT_FALSE(IsMountPoint(mnt_));
  EXPECT_EQ(registry_->CountRequests("GET", "/v2/team/"), 0);
  // A bad registries.conf is an error too, not a silent default.
  WriteConf("[[registry]]\nlocation = \"https://x.example\"\n");
  r = RunCommand({REGFS_BINARY, "inspect", "--registries-conf", conf_, Ref()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("URI schemes are not supported"), std::string::npos) << r.output;
}

TEST_F(MirrorTest, StoreAndPodmanPullAndRunThroughTheMirror) {
  if (!HavePodman()) GTEST_SKIP() << "podman or runc missing: this test needs both";
  if (geteuid() != 0) GTEST_SKIP() << "the store serves root's overlayfs: needs root";
  CommandResult s =
      RunCommand({REGFS_BINARY, "store", "--tls-verify=false", "--cache-dir", cache_, "--log-file",
                  dir_->Sub("store.log"), "--registries-conf", conf_, mnt_});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  {
    PodmanEnv podman(dir_->Sub("podman"), mnt_);
    std::ofstream(podman.dir() + "/registries.conf") << MirrorConf();
    CommandResult pull = podman.Run("pull -q " + Ref());
    ASSERT_EQ(pull.exit_code, 0) << pull.output;
    CommandResult run = podman.Run("run --rm --runtime /usr/sbin/runc " + Ref());
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("through the mirror"), std::string::npos) << run.output;
    std::string status;
    ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
    nlohmann::json st = nlohmann::json::parse(status);
    uint64_t from_mirror = 0;
    for (const auto& l : st["layers"]) {
      EXPECT_EQ(l["servedBy"].value(registry_->HostPort(), uint64_t{0}), 0u) << l.dump();
      from_mirror += l["servedBy"].value(mirror_->HostPort(), uint64_t{0});
    }
    EXPECT_GT(from_mirror, 0u) << status;
  }
  CommandResult u = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(u.exit_code, 0) << u.output;
  std::vector<std::string> direct = UpstreamLinesFromClients();
  EXPECT_TRUE(direct.empty()) << "upstream served clients directly:\n" << direct.front();
  EXPECT_GT(MirrorBlobGets(), 0);
}

// What `podman pull NAME` + `podman image inspect` make of a name, against
// what `regfs inspect --json NAME` says: "name digest", or "error".
class ShortNameTest : public MirrorTest {
 protected:
  std::string Podman(const std::string& conf_text, const std::string& name) {
    PodmanEnv podman(dir_->Sub("podman"), "");
    std::ofstream(podman.dir() + "/registries.conf") << conf_text;
    CommandResult pull = podman.Run("pull -q --tls-verify=false " + ShellQuote(name));
    if (pull.exit_code != 0) return "error";
    CommandResult in = podman.Run("image inspect --format '{{index .RepoTags 0}} {{.Digest}}' " +
                                  ShellQuote(name));
    if (in.exit_code != 0) return "error: inspect: " + in.output;
    std::string out = in.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  }
  std::string Regfs(const std::string& conf_text, const std::string& name) {
    WriteConf(conf_text);
    CommandResult r = RunCommand({REGFS_BINARY, "inspect", "--json", "--tls-verify=false",
                                  "--registries-conf", conf_, name});
    if (r.exit_code != 0) return "error";
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    if (j.is_discarded()) return "error: not json: " + r.output;
    return j.value("name", "") + " " + j.value("digest", "");
  }
};

TEST_F(ShortNameTest, ShortNamesResolveAsPodmanPullResolvesThem) {
  if (!HavePodman()) GTEST_SKIP() << "podman missing: this test compares with podman";
  const std::string up = registry_->HostPort();
  const std::string dead = "127.0.0.1:1";  // nothing listens there
  const std::string digest = image_.manifest_descriptor.digest;
  struct Case {
    std::string what, conf, name, expect;
  } cases[] = {
      {"one search registry", "unqualified-search-registries = [\"" + up + "\"]\n", "team/app:v1",
       up + "/team/app:v1 " + digest},
      {"alias, tag carried over",
       "unqualified-search-registries = [\"" + dead + "\"]\n[aliases]\n\"myapp\" = \"" + up +
           "/team/app\"\n",
       "myapp:v1", up + "/team/app:v1 " + digest},
      {"permissive: the first candidate that resolves",
       "unqualified-search-registries = [\"" + dead + "\", \"" + up +
           "\"]\nshort-name-mode = \"permissive\"\n",
       "team/app:v1", up + "/team/app:v1 " + digest},
      {"enforcing with two candidates and no TTY",
       "unqualified-search-registries = [\"" + dead + "\", \"" + up +
           "\"]\nshort-name-mode = \"enforcing\"\n",
       "team/app:v1", "error"},
      {"fully qualified names are left alone",
       "unqualified-search-registries = [\"" + dead + "\"]\n", Ref(),
       up + "/team/app:v1 " + digest},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string podman = Podman(c.conf, c.name);
    EXPECT_EQ(podman, c.expect) << "podman itself";
    EXPECT_EQ(Regfs(c.conf, c.name), podman);
  }
  // And a mount of a short name mounts what podman pulls.
  WriteConf("unqualified-search-registries = [\"" + up + "\"]\n");
  CommandResult m = Mount("team/app:v1", {"--registries-conf", conf_});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::string manifest;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &manifest));
  EXPECT_EQ(Sha256Digest(manifest), digest);
  EXPECT_EQ(StatusJson().value("image", ""), up + "/team/app:v1");
  Umount();
}

}  // namespace
}  // namespace regfs
