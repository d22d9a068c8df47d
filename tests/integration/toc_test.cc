// Lazy TOC layers end to end (issue 16), on images converted by the real
// tools (tests/support/toc_images.h): eStargz and zstd:chunked from
// ctr-remote, zstd:chunked from containers/storage 1.43 (skopeo, as podman
// 4.3.1 writes it). For each format:
//   - layers/<N> equals bsdtar's extraction of the same blob, minus the TOC
//     entry and the landmark files;
//   - rootfs/ equals `umoci unpack` of the original gzip image;
//   - a cold `cat rootfs/etc/os-release` fetches <= 5% of the image's bytes,
//     and no layer blob is fetched in full (registry access log);
//   - a chunk altered in the registry's storage gives EIO and a log line
//     naming the layer, never its bytes.
// And `regfs store` + podman 4.3.1 runs the eStargz image lazily with the
// container tree of a normal pull of the original image.
// Also a record of what the tools write (annotations, footers, TOC digests),
// which the format module relies on.
//
// Run them alone: ctest -R 'Toc(Mount|Store)Test' (or integration_tests
// --gtest_filter='Tools/TocMountTest.*:TocStoreTest.*').
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"
#include "tests/support/toc_images.h"
#include "tests/support/tree_snapshot.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using nlohmann::json;

// Layer 1's data: enough that a TOC, a footer and one small file are a few
// percent of the image (~24 MiB compressed in all).
constexpr uint64_t kBulkMib = 32;
// The entries eStargz adds to a layer, which stargz-snapshotter hides.
const std::set<std::string> kTocEntries = {"stargz.index.json", ".prefetch.landmark",
                                           ".no.prefetch.landmark"};

// eStargz's TOC gives modtimes in whole seconds, rounded (RFC 3339 without
// a fraction: 20.999999999 s is "21"); containers/storage's keeps the
// nanoseconds. A tree built from the TOC shows what it says, so mtimes are
// compared to within a second and everything else exactly. Clears the
// mtimes of both snapshots and returns the paths whose mtimes differ by a
// second or more.
std::string MtimesApart(TreeSnapshot& want, TreeSnapshot& got) {
  std::string out;
  for (auto& [path, w] : want) {
    auto it = got.find(path);
    if (it == got.end()) continue;
    int64_t d = w.mtime_ns - it->second.mtime_ns;
    if (d <= -1000000000 || d >= 1000000000) {
      out += path + ": mtime_ns " + std::to_string(w.mtime_ns) + " vs " +
             std::to_string(it->second.mtime_ns) + "\n";
    }
  }
  for (auto* t : {&want, &got}) {
    for (auto& [path, st] : *t) st.mtime_ns = 0;
  }
  return out;
}

// The base image in the registry as toc/base:gzip, and its conversion by
// one tool as toc/<tool>:v1. Needs root (bsdtar and umoci keeping owners and
// devices, the store's overlayfs) and FUSE.
class TocFixture : public FdCheckedTest {
 protected:
  void SetUpImages(TocTool tool) {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    if (geteuid() != 0) GTEST_SKIP() << "bsdtar/umoci keeping owners and devices need root";
    // The converters are test dependencies (packaging/install-deps.sh):
    // missing, the test fails rather than passing unseen.
    std::string missing = TocToolsMissing();
    ASSERT_EQ(missing, "") << "missing tools";
    FdCheckedTest::SetUp();
    set_up_ = true;
    registry_ = std::make_unique<TestRegistry>();
    ASSERT_OK(registry_->Start());
    dir_ = std::make_unique<TempDir>("regfs-toc");
    mnt_ = dir_->Sub("mnt");
    cache_ = dir_->Sub("cache");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    original_ = BuildImage(TocBaseImageSpec(kBulkMib));
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("toc/base", "gzip", original_));
    std::unique_ptr<PrivateContainerd> ctd;
    if (tool != TocTool::kPodmanZstdChunked) {
      ctd = std::make_unique<PrivateContainerd>();
      ASSERT_OK(ctd->Start());
    }
    repo_ = "toc/" + TocToolName(tool);
    Result<TocImage> img =
        ConvertImage(tool, *registry_, ctd.get(), dir_->path(), "toc/base", "gzip", repo_, "v1");
    if (ctd) ctd->Stop();  // not needed any more: no process left running
    ASSERT_OK(img.status());
    image_ = std::move(img).value();
    ASSERT_EQ(image_.layers.size(), original_.layers.size()) << image_.manifest;
    // What the conversion and FetchTocImage took of each blob: not the mount's.
    for (const TocLayer& l : image_.layers)
      served_before_[l.digest] = BlobBytesServed(*registry_, l.digest);
    // REGFS_TOCIMG_DUMP=DIR keeps the converted blobs for the format module's
    // own tests (see /tmp/tocimg/README).
    if (const char* dump = std::getenv("REGFS_TOCIMG_DUMP"); dump && *dump) {
      EXPECT_OK(DumpTocImage(image_, dump));
    }
  }

  void TearDown() override {
    if (!set_up_) return;
    envs_.clear();  // podman lets go of the store before it is unmounted
    if (IsMountPoint(mnt_)) {
      RunCommand({REGFS_BINARY, "umount", mnt_});
      ADD_FAILURE() << "test left " << mnt_ << " mounted";
    }
    registry_.reset();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  std::string Ref() const { return registry_->Ref(repo_, "v1"); }

  CommandResult Mount(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {REGFS_BINARY,           "mount", "--tls-verify=false",
                                     "--cache-dir",          cache_,  "--log-file",
                                     dir_->Sub("daemon.log")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(Ref());
    argv.push_back(mnt_);
    return RunCommand(argv);
  }

  void Umount() {
    CommandResult r = RunCommand({REGFS_BINARY, "umount", mnt_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_FALSE(IsMountPoint(mnt_));
  }

  std::string DaemonLog() {
    std::string s;
    ReadWholeFile(dir_->Sub("daemon.log"), &s);
    return s;
  }

  std::string StatusText() {
    std::string s;
    ReadWholeFile(mnt_ + "/.regfs/status.json", &s);
    return s;
  }

  // Bytes the registry served of each converted layer, and whether any
  // layer went out whole.
  std::string FullLayerFetches() {
    std::string out;
    for (size_t i = 0; i < image_.layers.size(); ++i) {
      uint64_t served = BlobBytesServed(*registry_, image_.layers[i].digest) -
                        served_before_[image_.layers[i].digest];
      // A layer no bigger than the tail regfs reads for its footer (64 KiB,
      // TocLimits::tail_read) is whole in that one read: that is listing
      // it from its TOC, not a pass over it.
      if (served >= image_.layers[i].size && image_.layers[i].size > (64u << 10)) {
        out += "layer " + std::to_string(i) + " (" + image_.layers[i].digest + ", " +
               std::to_string(image_.layers[i].size) + " bytes): " + std::to_string(served) +
               " bytes served\n";
      }
    }
    return out;
  }

  bool set_up_ = false;
  std::unique_ptr<TestRegistry> registry_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_, cache_, repo_;
  BuiltImage original_;
  TocImage image_;
  std::map<std::string, std::unique_ptr<PodmanEnv>> envs_;
  std::map<std::string, uint64_t> served_before_;  // digest -> bytes served before the test
};

class TocMountTest : public TocFixture, public ::testing::WithParamInterface<TocTool> {
 protected:
  void SetUp() override { SetUpImages(GetParam()); }
};

std::string ParamName(const ::testing::TestParamInfo<TocTool>& info) {
  return TocToolName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Tools, TocMountTest, ::testing::ValuesIn(kAllTocTools), ParamName);

// What the Debian 12 tools write, which the format module reads: every
// layer is a TOC layer with the old (io.containers.*) annotation generation,
// the footer the format description gives, and a TOC whose digest is the
// annotation's.
TEST_P(TocMountTest, ToolsWriteWhatTheFormatModuleReads) {
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    const TocLayer& l = image_.layers[i];
    Result<TocFooter> f = ParseTocFooter(l.blob);
    ASSERT_OK(f.status());
    Result<std::string> toc = ExtractTocJson(l);
    ASSERT_OK(toc.status());
    json j = json::parse(*toc, nullptr, false);
    ASSERT_TRUE(j.is_object() && j["entries"].is_array()) << toc->substr(0, 200);
    EXPECT_EQ(l.annotations.count(kZstdChunkedManifestChecksumNew), 0u);
    EXPECT_EQ(l.annotations.count(kZstdChunkedManifestPositionNew), 0u);
    std::printf(
        "[ %s layer %zu ] %s, %llu bytes; footer %s (%zu bytes), TOC at %llu, "
        "%zu TOC entries; annotations:",
        TocToolName(GetParam()).c_str(), i, l.media_type.c_str(), (unsigned long long)l.size,
        f->kind.c_str(), f->size, (unsigned long long)f->toc_offset, j["entries"].size());
    for (const auto& [k, v] : l.annotations) std::printf(" %s=%s", k.c_str(), v.c_str());
    std::printf("\n");
    switch (GetParam()) {
      case TocTool::kEstargz:
        EXPECT_EQ(l.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        EXPECT_EQ(f->kind, "estargz");
        EXPECT_EQ(f->size, 51u);
        // The TOC digest is the sha256 of the TOC JSON.
        EXPECT_EQ(l.annotations.at(kStargzTocDigest), Sha256Digest(*toc));
        EXPECT_EQ(l.annotations.count(kEstargzUncompressedSize), 1u);
        break;
      case TocTool::kStargzZstdChunked:
        EXPECT_EQ(l.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        EXPECT_EQ(f->kind, "zstd:chunked");
        EXPECT_EQ(f->size, 48u);
        EXPECT_EQ(l.annotations.at(kStargzTocDigest), Sha256Digest(*toc));
        EXPECT_EQ(l.annotations.at(kZstdChunkedManifestChecksum),
                  Sha256Digest(l.blob.substr(f->toc_offset, f->toc_length)));
        EXPECT_EQ(l.annotations.at(kZstdChunkedManifestPosition),
                  std::to_string(f->toc_offset) + ":" + std::to_string(f->toc_length) + ":" +
                      std::to_string(f->toc_uncompressed_length) + ":1");
        break;
      case TocTool::kPodmanZstdChunked:
        EXPECT_EQ(l.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        EXPECT_EQ(f->kind, "zstd:chunked");
        EXPECT_EQ(f->size, 48u);
        EXPECT_EQ(l.annotations.count(kStargzTocDigest), 0u);
        // The checksum is of the compressed manifest frame.
        EXPECT_EQ(l.annotations.at(kZstdChunkedManifestChecksum),
                  Sha256Digest(l.blob.substr(f->toc_offset, f->toc_length)));
        EXPECT_EQ(l.annotations.at(kZstdChunkedManifestPosition),
                  std::to_string(f->toc_offset) + ":" + std::to_string(f->toc_length) + ":" +
                      std::to_string(f->toc_uncompressed_length) + ":1");
        break;
    }
  }
}

TEST_P(TocMountTest, LayersEqualBsdtarMinusTocEntries) {
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    std::string blob = dir_->Sub("blob" + std::to_string(i));
    std::ofstream(blob, std::ios::binary) << image_.layers[i].blob;
    std::string out = dir_->Sub("x" + std::to_string(i));
    ASSERT_EQ(mkdir(out.c_str(), 0755), 0);
    CommandResult x =
        RunCommand({"bsdtar", "-x", "-p", "--xattrs", "--numeric-owner", "-f", blob, "-C", out});
    ASSERT_EQ(x.exit_code, 0) << x.output;
    SnapshotOptions so;
    so.ignore_paths = kTocEntries;
    TreeSnapshot want = SnapshotTree(out, so);
    TreeSnapshot got = SnapshotTree(mnt_ + "/layers/" + std::to_string(i), so);
    want.erase("");
    got.erase("");
    ASSERT_GT(want.size(), i == 2 ? 3u : 20u);
    EXPECT_EQ(MtimesApart(want, got), "");
    EXPECT_EQ(DiffSnapshots(want, got), "") << DaemonLog();
    // Hidden, not merely ignored: the view has no TOC or landmark entry.
    for (const std::string& p : kTocEntries) {
      struct stat st;
      EXPECT_NE(lstat((mnt_ + "/layers/" + std::to_string(i) + "/" + p).c_str(), &st), 0) << p;
    }
  }
  Umount();
}

TEST_P(TocMountTest, RootfsEqualsUmociUnpackOfTheOriginal) {
  std::string layout = dir_->Sub("oci");
  CommandResult c =
      RunCommand({"skopeo", "copy", "--quiet", "--src-tls-verify=false",
                  "docker://" + registry_->Ref("toc/base", "gzip"), "oci:" + layout + ":v1"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  std::string bundle = dir_->Sub("bundle");
  c = RunCommand({"umoci", "unpack", "--image", layout + ":v1", bundle});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  SnapshotOptions so;
  so.ignore_paths = kTocEntries;
  TreeSnapshot want = SnapshotTree(bundle + "/rootfs", so);
  TreeSnapshot got = SnapshotTree(mnt_ + "/rootfs", so);
  want.erase("");
  got.erase("");
  ASSERT_GT(want.size(), 100u);
  EXPECT_EQ(MtimesApart(want, got), "");
  EXPECT_EQ(DiffSnapshots(want, got), "") << DaemonLog();
  // Hidden, not merely left out of the comparison.
  for (const std::string& p : kTocEntries) {
    struct stat st;
    EXPECT_NE(lstat((mnt_ + "/rootfs/" + p).c_str(), &st), 0) << p;
  }
  EXPECT_EQ(got.count("etc/empty"), 0u);
  EXPECT_EQ(got.count("tmp/fifo"), 0u);
  EXPECT_EQ(got.count("tmp/new"), 1u);
  Umount();
}

// Cold (empty cache, never indexed): the first read of one small file costs
// the footers and TOCs and that file's chunk, not the layers.
TEST_P(TocMountTest, ColdFirstReadFetchesAFewPercent) {
  const uint64_t before = BlobBytesServed(*registry_);
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::string os;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/rootfs/etc/os-release", &os)) << DaemonLog();
  EXPECT_EQ(os, TocBaseOsRelease());
  const uint64_t fetched = BlobBytesServed(*registry_) - before;
  const uint64_t image_bytes = image_.BlobBytes();
  std::printf("[ %s ] cold cat rootfs/etc/os-release: %llu of %llu blob bytes (%.2f%%)\n",
              TocToolName(GetParam()).c_str(), (unsigned long long)fetched,
              (unsigned long long)image_bytes, 100.0 * fetched / image_bytes);
  EXPECT_LE(fetched * 20, image_bytes)
      << fetched << " of " << image_bytes << " bytes fetched (> 5%)\n"
      << StatusText() << "\n"
      << DaemonLog();
  // Nor does listing every layer fetch any layer whole (as an index pass
  // over the blob would): the trees come from the TOCs.
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    SnapshotOptions names_only;
    names_only.content = false;
    names_only.xattrs = false;
    EXPECT_GT(SnapshotTree(mnt_ + "/layers/" + std::to_string(i), names_only).size(), 1u);
  }
  EXPECT_EQ(FullLayerFetches(), "") << StatusText();
  Umount();
  EXPECT_EQ(FullLayerFetches(), "");
}

// A chunk whose bytes changed in the registry: the read fails with EIO and
// the log names the layer; the file's bytes are never served.
TEST_P(TocMountTest, AlteredChunkGivesEio) {
  // A file of at least 256 KiB in layer 1 (the data).
  Result<std::string> toc = ExtractTocJson(image_.layers[1]);
  ASSERT_OK(toc.status());
  json j = json::parse(*toc);
  std::string path;
  for (const json& e : j["entries"]) {
    std::string name = e.value("name", "");
    if (e.value("type", "") == "reg" && e.value("size", uint64_t{0}) >= (256u << 10)) {
      path = name.starts_with("./") ? name.substr(2) : name;
      break;
    }
  }
  ASSERT_NE(path, "");
  Result<BlobRange> range = FirstChunkRange(image_.layers[1], path);
  ASSERT_OK(range.status());
  ASSERT_GT(range->length, 1024u);
  // 64 bytes in the middle of the chunk's compressed bytes.
  const uint64_t at = range->offset + range->length / 2;
  ASSERT_OK(FlipStoredBlobBytes(*registry_, image_.layers[1].digest, at, 64));
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  for (std::string view : {"rootfs/", "layers/1/"}) {
    SCOPED_TRACE(view + path);
    int fd = open((mnt_ + "/" + view + path).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {  // the tree comes from the TOC: opening needs no data chunk
      ADD_FAILURE() << "open: " << strerror(errno) << "\n" << DaemonLog();
      continue;
    }
    std::string buf(256 << 10, '\0');
    errno = 0;
    ssize_t n = read(fd, buf.data(), buf.size());
    int err = errno;
    close(fd);
    EXPECT_EQ(n, -1) << "read " << n << " bytes of an altered chunk";
    EXPECT_EQ(err, EIO) << strerror(err);
  }
  EXPECT_NE(DaemonLog().find(image_.layers[1].digest), std::string::npos) << DaemonLog();
  Umount();
}

// `regfs store` with podman 4.3.1 (lookups by compressed digest): the eStargz
// image runs without its layers being downloaded, and the container sees
// what a normal pull of the original image shows.
class TocStoreTest : public TocFixture {
 protected:
  void SetUp() override {
    SetUpImages(TocTool::kEstargz);
    if (IsSkipped() || HasFatalFailure()) return;
    if (!HavePodman()) FAIL() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  }

  void StartStore() {
    CommandResult r = RunCommand({REGFS_BINARY, "store", "--tls-verify=false", "--cache-dir",
                                  cache_, "--log-file", dir_->Sub("daemon.log"), mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_TRUE(IsMountPoint(mnt_));
  }

  PodmanEnv& Env(const std::string& root, bool with_store) {
    auto& e = envs_[root];
    if (!e) e = std::make_unique<PodmanEnv>(dir_->Sub(root), with_store ? mnt_ : "");
    return *e;
  }

  // The merged tree of a container created (not started) from `ref`.
  TreeSnapshot ContainerTree(PodmanEnv& env, const std::string& ref) {
    CommandResult create = env.Run("create --runtime /usr/sbin/runc --network none " + ref);
    EXPECT_EQ(create.exit_code, 0) << create.output;
    std::string id = create.output.substr(0, create.output.find('\n'));
    CommandResult mount = env.Run("mount " + id);
    EXPECT_EQ(mount.exit_code, 0) << mount.output;
    std::string merged = mount.output.substr(0, mount.output.find('\n'));
    SnapshotOptions so;
    so.ignore_xattr_prefixes = {"security.selinux"};
    TreeSnapshot t = SnapshotTree(merged, so);
    t.erase("");
    CommandResult um = env.Run("umount " + id);
    EXPECT_EQ(um.exit_code, 0) << um.output;
    return t;
  }
};

TEST_F(TocStoreTest, PodmanRunsTheEstargzImageLazily) {
  const uint64_t before = BlobBytesServed(*registry_);
  StartStore();
  PodmanEnv& lazy = Env("lazy", true);
  CommandResult pull = lazy.Run("--log-level=debug pull --tls-verify=false " + Ref());
  ASSERT_EQ(pull.exit_code, 0) << pull.output << DaemonLog();
  for (const TocLayer& l : image_.layers) {
    EXPECT_NE(pull.output.find("Skipping blob " + l.digest + " (already present)"),
              std::string::npos)
        << l.digest << "\n"
        << pull.output;
  }
  CommandResult run = lazy.Run("run --rm --runtime /usr/sbin/runc --network none " + Ref() +
                               " cat /etc/os-release");
  ASSERT_EQ(run.exit_code, 0) << run.output << DaemonLog();
  EXPECT_EQ(run.output, TocBaseOsRelease());
  // Started without any layer downloaded in full (the registry's log).
  EXPECT_EQ(FullLayerFetches(), "") << DaemonLog();
  const uint64_t fetched = BlobBytesServed(*registry_) - before;
  std::printf("[ store ] pull + run of the eStargz image fetched %llu of %llu blob bytes\n",
              (unsigned long long)fetched, (unsigned long long)image_.BlobBytes());

  // The container's tree equals that of a normal pull of the original image
  // (a normal pull of the converted one would show the TOC and landmarks).
  TreeSnapshot got = ContainerTree(lazy, Ref());
  PodmanEnv& plain = Env("plain", false);
  const std::string original = registry_->Ref("toc/base", "gzip");
  CommandResult p2 = plain.Run("pull -q --tls-verify=false " + original);
  ASSERT_EQ(p2.exit_code, 0) << p2.output;
  TreeSnapshot want = ContainerTree(plain, original);
  ASSERT_GT(want.size(), 100u);
  EXPECT_EQ(MtimesApart(want, got), "");
  EXPECT_EQ(DiffSnapshots(want, got), "") << DaemonLog();
  CommandResult rmi = lazy.Run("rmi -f " + Ref());
  EXPECT_EQ(rmi.exit_code, 0) << rmi.output;
  envs_.clear();  // podman lets go of the store first
  Umount();
}

}  // namespace
}  // namespace regfs
