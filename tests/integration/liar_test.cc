// A registry that lies (issue 15), end to end: the real `regfs inspect` and
// `regfs mount` against the in-process fault server, which serves a real
// image from memory and then lies about it per case: manifests and configs
// whose bytes do not hash to their digest, a Docker-Content-Digest that does
// not match, descriptor sizes that are wrong, absurd or negative, Content-
// Length and Content-Range that do not match what was asked, a 200 with the
// whole blob, more or fewer bytes than announced, bodies and header sections
// that never end, lying chunk sizes, a huge manifest, an index that names
// itself or another index, and redirect loops.
//
// What every case asserts: resolution lies end `inspect` and `mount` with a
// nonzero exit and a message naming the problem, and leave nothing mounted;
// data lies give EIO on read, and any byte handed out before the error is
// the true byte (compared with the image as built); every command ends
// within its watchdog (RunCommand kills it and the test fails); the daemon
// stays up and serves the other layer; the test process's fds and the
// connections to the server do not grow.
//
// REGFS_BINARY_OVERRIDE (env) replaces the regfs binary under test, so the
// same suite can be run against an older build.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "reader/base/digest.h"
#include "tests/support/fault_server.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"

namespace regfs::testing {
namespace {

constexpr char kRepo[] = "team/app";
constexpr char kTag[] = "1.0";
constexpr char kOciIndex[] = "application/vnd.oci.image.index.v1+json";
// Every command runs under this watchdog: a hang fails the test.
constexpr int kWatchdogS = 90;
// The per-request budget given to regfs, so lies that only time can end
// (a drip, a body that never ends) end well inside the watchdog.
constexpr char kRetryTimeout[] = "5";

std::string Binary() {
  const char* o = getenv("REGFS_BINARY_OVERRIDE");
  return o && *o ? o : REGFS_BINARY;
}

std::string ManifestPath(const std::string& ref) {
  return std::string("/v2/") + kRepo + "/manifests/" + ref;
}
std::string BlobPath(const std::string& digest) {
  return std::string("/v2/") + kRepo + "/blobs/" + digest;
}

// "bytes=a-b" of a request, or nullopt.
std::optional<std::pair<uint64_t, uint64_t>> RangeOf(const RecordedRequest& r) {
  std::string v = r.Header("range");
  unsigned long long a = 0, b = 0;
  if (std::sscanf(v.c_str(), "bytes=%llu-%llu", &a, &b) != 2) return std::nullopt;
  return std::make_pair(static_cast<uint64_t>(a), static_cast<uint64_t>(b));
}

std::string Bytes(uint64_t seed, size_t n) {
  std::string s(n, '\0');
  FillDeterministic(seed, 0, std::span(reinterpret_cast<uint8_t*>(s.data()), s.size()));
  return s;
}

class LiarTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    FdCheckedTest::SetUp();
    set_up_ = true;
    ASSERT_OK(server_.Start());
    dir_ = std::make_unique<TempDir>();
    mnt_ = dir_->Sub("mnt");
    cache_ = dir_->Sub("cache");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    // The image: layer 0 (the victim of data lies) holds 3 MiB of
    // incompressible bytes, so its blob spans several 1 MiB chunks; layer
    // 1 is small and is only ever served honestly.
    ImageSpec spec;
    LayerSpec victim;
    victim.entries = {TarEntry::File("big", Bytes(11, 3 << 20))};
    victim.compression = Compression::kGzip;
    LayerSpec good;
    good.entries = {TarEntry::File("etc/good", "good\n")};
    spec.layers = {victim, good};
    img_ = BuildImage(spec);
    victim_ = img_.layers[0].descriptor.digest;
    good_ = img_.layers[1].descriptor.digest;
  }

  void TearDown() override {
    if (!set_up_) return;
    if (InMountTable()) {
      RunCommand({Binary(), "umount", mnt_}, 60);
      if (InMountTable()) RunCommand({"fusermount3", "-u", "-z", mnt_}, 60);
      ADD_FAILURE() << "test left " << mnt_ << " mounted";
    }
    // Every connection the commands opened is closed once they are gone.
    int open = -1;
    for (int i = 0; i < 500 && (open = server_.open_connections()) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(open, 0) << "connections left open at the lying registry";
    server_.Stop();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  bool InMountTable() const {
    std::string mounts;
    ReadWholeFile("/proc/self/mounts", &mounts);
    return mounts.find(" " + mnt_ + " ") != std::string::npos;
  }

  // Serves `manifest` (bytes) at the tag and at its digest, with
  // Docker-Content-Digest as distribution sends it.
  void ServeManifest(const std::string& ref, const std::string& bytes,
                     const std::string& media_type) {
    server_.AddResource(ManifestPath(ref), bytes, media_type,
                        {{"Docker-Content-Digest", Sha256Digest(bytes)}});
  }
  // The honest image under kRepo:kTag (and by digest), config and blobs.
  void ServeImage(const BuiltImage& img) {
    ServeManifest(kTag, img.manifest, img.manifest_descriptor.media_type);
    ServeManifest(img.manifest_descriptor.digest, img.manifest, img.manifest_descriptor.media_type);
    server_.AddResource(BlobPath(img.config_descriptor.digest), img.config);
    for (const BuiltLayer& l : img.layers) server_.AddResource(BlobPath(l.descriptor.digest), l.blob);
  }
  // An image whose manifest is `manifest` (JSON), served under kTag with
  // the honest image's config and blobs.
  void ServeManifestJson(const nlohmann::json& manifest) {
    ServeImage(img_);
    ServeManifest(kTag, manifest.dump(), img_.manifest_descriptor.media_type);
  }
  nlohmann::json ManifestJson() const { return nlohmann::json::parse(img_.manifest); }

  std::string Ref(const std::string& tag_or_digest = kTag) const {
    bool digest = tag_or_digest.rfind("sha256:", 0) == 0;
    return server_.host_port() + "/" + kRepo + (digest ? "@" : ":") + tag_or_digest;
  }

  CommandResult Inspect(const std::string& ref) {
    return RunCommand({Binary(), "inspect", "--tls-verify=false", "--retry-timeout", kRetryTimeout,
                       ref},
                      kWatchdogS);
  }
  CommandResult Mount(const std::string& ref) {
    return RunCommand({Binary(), "mount", "--tls-verify=false", "--retry-timeout", kRetryTimeout,
                       "--cache-dir", cache_, "--log-file", dir_->Sub("daemon.log"), ref, mnt_},
                      kWatchdogS);
  }
  void Umount() {
    CommandResult r = RunCommand({Binary(), "umount", mnt_}, 60);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_FALSE(InMountTable());
  }
  std::string DaemonLog() const {
    std::string s;
    ReadWholeFile(dir_->Sub("daemon.log"), &s);
    return s;
  }
  pid_t DaemonPid() const {
    std::string s;
    if (!ReadWholeFile(mnt_ + "/.regfs/status.json", &s)) return -1;
    auto j = nlohmann::json::parse(s, nullptr, false);
    return j.is_object() ? j.value("pid", -1) : -1;
  }

  // A resolution lie: inspect and mount both fail, in time, saying
  // `expect` (a piece of the message), and nothing is mounted.
  void ExpectRefused(const std::string& ref, const std::vector<std::string>& expect) {
    for (bool mount : {false, true}) {
      SCOPED_TRACE(mount ? "mount" : "inspect");
      auto start = std::chrono::steady_clock::now();
      CommandResult r = mount ? Mount(ref) : Inspect(ref);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::string first_line = r.output.substr(0, r.output.find('\n'));
      std::printf("[ refused ] %s exit %d after %.1f s: %s\n", mount ? "mount" : "inspect",
                  r.exit_code, s, first_line.c_str());
      EXPECT_FALSE(r.timed_out) << "watchdog: did not end within " << kWatchdogS << " s";
      EXPECT_NE(r.exit_code, 0) << r.output;
      bool named = false;
      for (const std::string& e : expect) named = named || r.output.find(e) != std::string::npos;
      EXPECT_TRUE(named) << "expected one of {" << ::testing::PrintToString(expect) << "} in:\n"
                         << r.output;
      EXPECT_FALSE(InMountTable());
    }
  }

  struct Read {
    CommandResult cmd;
    std::string got;
  };
  // Reads [offset, offset + len) of `path` with dd in a child under the
  // watchdog; `got` is what dd wrote before it stopped.
  Read ReadRange(const std::string& path, uint64_t offset, uint64_t len) {
    std::string out = dir_->Sub("read.out");
    unlink(out.c_str());
    Read r;
    r.cmd = RunCommand({"dd", "if=" + path, "of=" + out, "bs=128K", "iflag=skip_bytes,count_bytes",
                        "skip=" + std::to_string(offset), "count=" + std::to_string(len),
                        "status=none"},
                       kWatchdogS);
    ReadWholeFile(out, &r.got);
    unlink(out.c_str());
    return r;
  }
  // Never wrong bytes: what was read is the truth's bytes at `offset`; and
  // either all of them arrived, or the read failed with EIO (when
  // `must_fail`, only the latter).
  // `prefix_checked` false: bytes before the EIO are not compared (see
  // DataLie::bytes_only).
  void ExpectTrueOrEio(const Read& r, const std::string& truth, uint64_t offset, uint64_t len,
                       bool must_fail, bool prefix_checked = true) {
    EXPECT_FALSE(r.cmd.timed_out) << "watchdog: read did not end within " << kWatchdogS << " s";
    ASSERT_LE(r.got.size(), len);
    const std::string expect = offset < truth.size() ? truth.substr(offset, r.got.size()) : "";
    EXPECT_TRUE(r.got == expect || (!prefix_checked && r.cmd.exit_code != 0))
        << "wrong bytes: " << r.got.size() << " bytes read at " << offset
        << " differ from the blob's";
    if (r.cmd.exit_code == 0) {
      EXPECT_FALSE(must_fail) << "the read succeeded though every answer was a lie";
      EXPECT_EQ(r.got.size(), offset < truth.size() ? std::min<uint64_t>(len, truth.size() - offset) : 0);
    } else {
      EXPECT_NE(r.cmd.output.find("Input/output error"), std::string::npos) << r.cmd.output;
    }
  }

  // The daemon runs, answers status.json, and serves the honest layer.
  void ExpectAliveAndServing(pid_t pid) {
    ASSERT_GT(pid, 0);
    EXPECT_EQ(kill(pid, 0), 0) << "daemon " << pid << " is gone\n" << DaemonLog();
    std::string s;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &s)) << DaemonLog();
    Read good = ReadRange(mnt_ + "/blobs/" + good_, 0, img_.layers[1].blob.size());
    EXPECT_EQ(good.cmd.exit_code, 0) << good.cmd.output;
    EXPECT_TRUE(good.got == img_.layers[1].blob) << "the honest layer's blob reads wrong";
    CommandResult cat = RunCommand({"cat", mnt_ + "/layers/1/etc/good"}, kWatchdogS);
    EXPECT_EQ(cat.exit_code, 0) << cat.output;
    EXPECT_EQ(cat.output, "good\n");
  }

  bool set_up_ = false;
  FaultServer server_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_, cache_;
  BuiltImage img_;
  std::string victim_, good_;
};

// ---------------------------------------------------------------------------
// Resolution: inspect and mount

TEST_F(LiarTest, HonestImageInspectsAndMounts) {
  // The control: the same server and image without a lie work, so every
  // failure below is the lie's.
  ServeImage(img_);
  CommandResult r = Inspect(Ref());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  CommandResult m = Mount(Ref());
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  Read whole = ReadRange(mnt_ + "/blobs/" + victim_, 0, img_.layers[0].blob.size());
  EXPECT_EQ(whole.cmd.exit_code, 0) << whole.cmd.output;
  EXPECT_TRUE(whole.got == img_.layers[0].blob);
  ExpectAliveAndServing(pid);
  Umount();
}

TEST_F(LiarTest, ManifestByDigestThatDoesNotHashToIt) {
  ServeImage(img_);
  std::string lie = img_.manifest + " ";
  server_.AddResource(ManifestPath(img_.manifest_descriptor.digest), lie,
                      img_.manifest_descriptor.media_type);
  ExpectRefused(Ref(img_.manifest_descriptor.digest), {"hashes to"});
}

TEST_F(LiarTest, TagWithADockerContentDigestThatDoesNotMatch) {
  ServeImage(img_);
  server_.AddResource(ManifestPath(kTag), img_.manifest, img_.manifest_descriptor.media_type,
                      {{"Docker-Content-Digest", Sha256Digest("another manifest")}});
  ExpectRefused(Ref(), {"Docker-Content-Digest"});
}

TEST_F(LiarTest, ConfigThatDoesNotMatchItsDigest) {
  ServeImage(img_);
  std::string lie = img_.config;
  lie[lie.size() / 2] = lie[lie.size() / 2] == 'a' ? 'b' : 'a';  // same length
  server_.AddResource(BlobPath(img_.config_descriptor.digest), lie);
  ExpectRefused(Ref(), {"hashes to"});
}

TEST_F(LiarTest, ConfigLongerThanItsDescriptor) {
  ServeImage(img_);
  server_.AddResource(BlobPath(img_.config_descriptor.digest), img_.config + "    ");
  ExpectRefused(Ref(), {"exceeds", "longer than", "descriptor says"});
}

TEST_F(LiarTest, ConfigContentLengthDiffersFromTheDescriptor) {
  ServeImage(img_);
  const std::string path = BlobPath(img_.config_descriptor.digest);
  // Fewer bytes announced and sent (a clean close after them): the body is
  // whole as far as HTTP goes, but not the blob.
  server_.SetLiar([path](const RecordedRequest& q, LieResponse& a) {
    if (q.path == path && a.status == 200) a.body.resize(a.body.size() / 2);
  });
  ExpectRefused(Ref(), {"descriptor says", "short body"});
}

TEST_F(LiarTest, ConfigWithFewerDiffIdsThanLayers) {
  // Honestly hashed, but it names a DiffID for the first layer only: the
  // second could not be checked against one.
  nlohmann::json config = nlohmann::json::parse(img_.config);
  config["rootfs"]["diff_ids"] = {img_.layers[0].diff_id};
  std::string config_bytes = config.dump();
  nlohmann::json m = ManifestJson();
  m["config"]["digest"] = Sha256Digest(config_bytes);
  m["config"]["size"] = config_bytes.size();
  ServeManifestJson(m);
  server_.AddResource(BlobPath(Sha256Digest(config_bytes)), config_bytes);
  ExpectRefused(Ref(), {"diff_ids"});
}

TEST_F(LiarTest, HugeManifestIsRefusedByTheCap) {
  // 5 MiB of valid JSON, over the 4 MiB cap; once with its length
  // announced, once chunked (the cap must hold while the body streams).
  nlohmann::json m = ManifestJson();
  m["annotations"] = {{"pad", std::string(5 << 20, 'p')}};
  ServeManifestJson(m);
  ExpectRefused(Ref(), {"exceeds"});
  server_.SetLiar([](const RecordedRequest& q, LieResponse& a) {
    if (q.path.find("/manifests/") != std::string::npos) a.chunked = true;
  });
  ExpectRefused(Ref(), {"exceeds"});
}

TEST_F(LiarTest, ManifestWithOneHundredThousandLayers) {
  nlohmann::json m = ManifestJson();
  nlohmann::json layer = m["layers"][1];
  m["layers"] = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) m["layers"].push_back(layer);
  ServeManifestJson(m);
  ExpectRefused(Ref(), {"exceeds", "layers"});
}

TEST_F(LiarTest, ManifestWithAsManyLayersAsFitUnderTheCap) {
  // 40,000 layers (the same small blob each time, descriptors without a
  // media type) fit in 3.5 MB of manifest; the config names their DiffIDs.
  constexpr int kLayers = 40000;
  nlohmann::json config = nlohmann::json::parse(img_.config);
  config["rootfs"]["diff_ids"] = nlohmann::json::array();
  nlohmann::json m = ManifestJson();
  nlohmann::json layer = {{"digest", good_}, {"size", img_.layers[1].blob.size()}};
  m["layers"] = nlohmann::json::array();
  for (int i = 0; i < kLayers; ++i) {
    m["layers"].push_back(layer);
    config["rootfs"]["diff_ids"].push_back(img_.layers[1].diff_id);
  }
  std::string config_bytes = config.dump();
  m["config"]["digest"] = Sha256Digest(config_bytes);
  m["config"]["size"] = config_bytes.size();
  ASSERT_LT(m.dump().size(), 4u << 20);
  ServeManifestJson(m);
  server_.AddResource(BlobPath(Sha256Digest(config_bytes)), config_bytes);
  // Not a lie the registry can be caught in: the image is served, in time,
  // and the daemon stays up and bounded.
  auto start = std::chrono::steady_clock::now();
  auto secs = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  CommandResult r = Inspect(Ref());
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.output.substr(0, 2000);
  std::printf("[ layers ] inspect of %d layers: exit %d after %.1f s\n", kLayers, r.exit_code,
              secs());
  start = std::chrono::steady_clock::now();
  CommandResult mnt = Mount(Ref());
  EXPECT_FALSE(mnt.timed_out);
  ASSERT_EQ(mnt.exit_code, 0) << mnt.output;
  std::printf("[ layers ] mount: exit %d after %.1f s\n", mnt.exit_code, secs());
  pid_t pid = DaemonPid();
  start = std::chrono::steady_clock::now();
  CommandResult ls = RunCommand({"ls", mnt_ + "/rootfs/etc"}, kWatchdogS);
  EXPECT_FALSE(ls.timed_out);
  EXPECT_EQ(ls.output, "good\n");
  CommandResult last = RunCommand({"cat", mnt_ + "/layers/" + std::to_string(kLayers - 1) +
                                              "/etc/good"}, kWatchdogS);
  EXPECT_EQ(last.output, "good\n");
  std::string status;
  ReadWholeFile("/proc/" + std::to_string(pid) + "/status", &status);
  size_t at = status.find("VmRSS:");
  long rss_kib = at == std::string::npos ? -1 : std::strtol(status.c_str() + at + 6, nullptr, 10);
  std::printf("[ layers ] ls rootfs/etc and the top layer's file: %.1f s; daemon VmRSS %ld KiB\n",
              secs(), rss_kib);
  // Measured: 83 MiB (about 2 KiB per layer on top of the daemon's ~15
  // MiB); the bound leaves room, and fails anything that grows per byte
  // of the blobs or per layer pair.
  EXPECT_LT(rss_kib, 256 * 1024);
  EXPECT_EQ(kill(pid, 0), 0);
  Umount();
}

TEST_F(LiarTest, NegativeAndAbsurdDescriptorSizes) {
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> expect;
  };
  std::vector<Case> cases = {
      {"negative layer size", [](nlohmann::json& m) { m["layers"][0]["size"] = -1; },
       {"negative size"}},
      {"negative config size", [](nlohmann::json& m) { m["config"]["size"] = -5; },
       {"negative size"}},
      {"fractional size", [](nlohmann::json& m) { m["layers"][0]["size"] = 1.5; }, {"size"}},
      {"size as a string", [](nlohmann::json& m) { m["layers"][0]["size"] = "12"; }, {"size"}},
      {"size beyond 64 bits",
       [](nlohmann::json& m) { m["layers"][0]["size"] = 1e30; }, {"size"}},
      {"absurd config size",
       [](nlohmann::json& m) { m["config"]["size"] = 18446744073709551615ull; },
       {"limit", "size"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    nlohmann::json m = ManifestJson();
    c.edit(m);
    ServeManifestJson(m);
    ExpectRefused(Ref(), c.expect);
  }
}

TEST_F(LiarTest, IndexThatNamesItself) {
  // The tag is an index whose entry names a digest; at that digest the
  // registry serves the index again (which cannot hash to it).
  ServeImage(img_);
  nlohmann::json index = {
      {"schemaVersion", 2},
      {"mediaType", kOciIndex},
      {"manifests",
       {{{"mediaType", img_.manifest_descriptor.media_type},
         {"digest", img_.manifest_descriptor.digest},
         {"size", img_.manifest_descriptor.size},
         {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}}}}};
  std::string bytes = index.dump();
  ServeManifest(kTag, bytes, kOciIndex);
  ServeManifest(img_.manifest_descriptor.digest, bytes, kOciIndex);
  ExpectRefused(Ref(), {"hashes to"});
}

TEST_F(LiarTest, DeepChainOfIndexes) {
  // The tag is an index whose entry claims to be a manifest but is another
  // index, and so on 20 deep (each link honestly hashed) down to the image.
  ServeImage(img_);
  BlobDescriptor next = img_.manifest_descriptor;
  std::string bytes;
  for (int depth = 0; depth < 20; ++depth) {
    nlohmann::json index = {{"schemaVersion", 2},
                            {"mediaType", kOciIndex},
                            {"manifests",
                             {{{"mediaType", img_.manifest_descriptor.media_type},
                               {"digest", next.digest},
                               {"size", next.size},
                               {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}}}}};
    bytes = index.dump();
    next = BlobDescriptor{kOciIndex, Sha256Digest(bytes), bytes.size()};
    ServeManifest(next.digest, bytes, kOciIndex);
  }
  ServeManifest(kTag, bytes, kOciIndex);
  ExpectRefused(Ref(), {"index", "disagrees"});
}

TEST_F(LiarTest, ManifestRedirectLoop) {
  ServeImage(img_);
  Fault loop;
  loop.kind = FaultKind::kRedirectLoop;
  server_.AddFault(ManifestPath(kTag), loop, 1000000);
  ExpectRefused(Ref(), {"redirects"});
}

TEST_F(LiarTest, ManifestBodyThatNeverEnds) {
  // A manifest whose body goes on for ever: fast (the cap ends it) and at
  // 4 KB/s, above the low-speed limit (only the retry budget ends it).
  ServeImage(img_);
  for (int rate : {0, 4096}) {
    SCOPED_TRACE(rate ? "slow" : "fast");
    server_.SetLiar([rate](const RecordedRequest& q, LieResponse& a) {
      if (q.path.find("/manifests/") == std::string::npos) return;
      a.close_delimited = true;
      a.endless = true;
      a.endless_bytes_per_s = rate;
    });
    ExpectRefused(Ref(), {"exceeds", "retry budget", "timed out", "Timeout", "deadline"});
  }
}

TEST_F(LiarTest, ManifestHeadersThatNeverEnd) {
  ServeImage(img_);
  server_.SetLiar([](const RecordedRequest& q, LieResponse& a) {
    if (q.path.find("/manifests/") == std::string::npos) return;
    a.endless_headers = true;
    a.endless_bytes_per_s = 4096;
  });
  ExpectRefused(Ref(), {"headers too large", "retry budget", "timed out", "Timeout"});
}

// ---------------------------------------------------------------------------
// Data path: the mount resolves honestly, then the victim layer's blob lies.

struct DataLie {
  const char* name;
  // Rewrites answers for the victim blob (`q.path` is checked by the
  // caller); `blob` is its true bytes.
  std::function<void(const std::string& blob, const RecordedRequest&, LieResponse&)> lie;
  // Every answer for the victim is wrong: reads must fail (EIO). Else a
  // read may also succeed, with the true bytes.
  bool must_fail = true;
  // The manifest's size for the victim: real size + this delta.
  int64_t size_delta = 0;
  // The lie is in the bytes alone, under honest headers: only the blob's
  // digest can tell, so (as the README says) blobs/ promises only that a
  // read reaching the blob's end fails; bytes before that, and a random
  // read inside the blob, are not checked. The layer's files still are.
  bool bytes_only = false;
};

void PrintTo(const DataLie& d, std::ostream* os) { *os << d.name; }

class DataLieTest : public LiarTest, public ::testing::WithParamInterface<DataLie> {};

TEST_P(DataLieTest, ReadsGiveTrueBytesOrEio) {
  const DataLie& c = GetParam();
  const std::string truth = img_.layers[0].blob;
  if (c.size_delta != 0) {
    nlohmann::json m = ManifestJson();
    m["layers"][0]["size"] = static_cast<uint64_t>(static_cast<int64_t>(truth.size()) + c.size_delta);
    ServeManifestJson(m);
  } else {
    ServeImage(img_);
  }
  const std::string victim_path = BlobPath(victim_);
  auto lie = c.lie;
  server_.SetLiar([victim_path, lie, truth](const RecordedRequest& q, LieResponse& a) {
    if (lie && q.path == victim_path) lie(truth, q, a);
  });
  CommandResult m = Mount(Ref());
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  const std::string path = mnt_ + "/blobs/" + victim_;
  // The file's size is the descriptor's, lie or not.
  const uint64_t size = truth.size() + c.size_delta;
  // The whole blob in order, one small read in the middle of a chunk, and
  // the last bytes; twice, so a second look at a bad blob is checked too.
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, size},
                            {(1 << 20) + 1000, 4096},
                            {size - 100, 100}}) {
      if (c.bytes_only && off != 0 && off + len != size) continue;
      SCOPED_TRACE("read " + std::to_string(off) + "+" + std::to_string(len));
      ExpectTrueOrEio(ReadRange(path, off, len), truth, off, len, c.must_fail, !c.bytes_only);
    }
    // The victim's layer tree: EIO or its true content, never a wrong byte.
    Read big = ReadRange(mnt_ + "/layers/0/big", 0, 3 << 20);
    ExpectTrueOrEio(big, Bytes(11, 3 << 20), 0, 3 << 20, c.must_fail);
    EXPECT_LE(server_.open_connections(), 9) << "connections grow";
  }
  // The daemon says why, naming the blob (a line an operator can find).
  std::string log = DaemonLog(), line;
  for (size_t at = log.find(victim_); at != std::string::npos; at = log.find(victim_, at + 1)) {
    size_t from = log.rfind('\n', at);
    from = from == std::string::npos ? 0 : from + 1;
    std::string l = log.substr(from, log.find('\n', at) - from);
    if (l.find("W ") != std::string::npos || l.find("E ") != std::string::npos ||
        l.find("rror") != std::string::npos || l.find(": ") != std::string::npos) {
      line = l;
      break;
    }
  }
  std::printf("[ daemon log ] %s\n", line.substr(0, 400).c_str());
  if (c.must_fail) {
    EXPECT_FALSE(line.empty()) << "no log line names " << victim_ << ":\n" << log;
  }
  ExpectAliveAndServing(pid);
  Umount();
}

// The bytes of [a, b] shifted by `by` within `blob`, and a Content-Range
// that says so: true bytes, but not the ones asked for. A range of the whole
// blob cannot shift: its Content-Range names another total instead.
void ShiftRange(const std::string& blob, const RecordedRequest& q, LieResponse& a, uint64_t by) {
  auto r = RangeOf(q);
  if (!r || a.status != 206) return;
  const uint64_t len = r->second - r->first + 1;
  uint64_t first = r->first, total = blob.size();
  if (len == blob.size()) {
    total += by;
  } else {
    first = r->first + by <= blob.size() - len ? r->first + by : (r->first >= by ? r->first - by : 0);
  }
  a.body = blob.substr(first, len);
  for (auto& [k, v] : a.headers) {
    if (k == "Content-Range") {
      v = "bytes " + std::to_string(first) + "-" + std::to_string(first + len - 1) + "/" +
          std::to_string(total);
    }
  }
}

std::vector<DataLie> DataLies() {
  return {
      {"honest", nullptr, /*must_fail=*/false},
      {"SizeBiggerThanTheBlob", nullptr, true, 1000},
      {"SizeTwiceTheBlob", nullptr, true, 3 << 20},
      {"SizeSmallerThanTheBlob", nullptr, true, -1000},
      {"ContentRangeOfAnotherOffset",
       [](const std::string& blob, const RecordedRequest& q, LieResponse& a) { ShiftRange(blob, q, a, 4096); }},
      {"HonestHeadersWrongBytes",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206 || a.status == 200) a.body[a.body.size() / 2] ^= 0x5a;
       },
       /*must_fail=*/true, 0, /*bytes_only=*/true},
      {"TwoHundredWithTheWholeBlob",
       [](const std::string& blob, const RecordedRequest& q, LieResponse& a) {
         if (!RangeOf(q) || a.status != 206) return;
         a.status = 200;
         a.body = blob;
         std::erase_if(a.headers, [](const auto& h) { return h.first == "Content-Range"; });
       },
       /*must_fail=*/false},
      {"MoreBytesThanAskedAndAnnounced",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206) a.body += std::string(1000, 'M');
       }},
      {"MoreBytesThanAnnounced",
       // Content-Length right, then 1000 stray bytes on the connection: the
       // next answer on it must not be read from them.
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.content_length = a.body.size();
         a.body += "HTTP/1.1 206 Partial Content\r\n" + std::string(1000, 'M');
       },
       /*must_fail=*/false},
      {"FewerBytesAnnouncedAndSent",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206) a.body.resize(a.body.size() / 2);
       },
       /*must_fail=*/false},  // each answer is the range's true first half: resumed
      {"FewerBytesSentThenACleanClose",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206) a.send_at_most = a.body.size() / 2;
       },
       /*must_fail=*/false},
      {"EveryAnswerCutAfterOneByte",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206) a.send_at_most = 1;
       },
       /*must_fail=*/false},
      {"BodyThatNeverEnds",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.close_delimited = true;
         a.endless = true;
       }},
      {"BodyThatNeverEndsSlowly",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.body.clear();
         a.close_delimited = true;
         a.endless = true;
         a.endless_bytes_per_s = 4096;
       }},
      {"BodyDripsForEver",
       // Content-Length and Content-Range right, the true bytes at 4 KB/s
       // (above the low-speed limit): only the retry budget ends it.
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status == 206) a.body_bytes_per_s = 4096;
       },
       /*must_fail=*/false},
      {"ChunkedBodyThatNeverEnds",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.chunked = true;
         a.endless = true;
       }},
      {"ChunkSizeLargerThanSent",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.chunked = true;
         a.first_chunk_size = "ffffffff";
         a.close = true;
       }},
      {"ChunkSizeBeyond64Bits",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         if (a.status != 206) return;
         a.chunked = true;
         a.first_chunk_size = "1ffffffffffffffff";
       }},
      {"HeadersThatNeverEnd",
       [](const std::string& /*blob*/, const RecordedRequest& /*q*/, LieResponse& a) {
         a.endless_headers = true;
         a.endless_bytes_per_s = 4096;
       }},
      {"RedirectLoop",
       [](const std::string& /*blob*/, const RecordedRequest& q, LieResponse& a) {
         a.status = 307;
         a.headers = {{"Location", q.target}};
         a.body.clear();
       }},
  };
}

INSTANTIATE_TEST_SUITE_P(Lies, DataLieTest, ::testing::ValuesIn(DataLies()),
                         [](const ::testing::TestParamInfo<DataLie>& i) {
                           return std::string(i.param.name);
                         });

}  // namespace
}  // namespace regfs::testing
