// `regfs store` and TOC layers, driven as containers/storage 1.54+ drives an
// additional layer store (podman 5.1+; no such podman is packaged here, so
// the test makes the calls it makes): it looks a layer up as
// <store>/<base64 ref>/<TOC digest>/ and checks diff, info and blob there
// (drivers/overlay getAdditionalLayerPath), decodes info as a Layer and
// refuses the layer unless toc-digest is the digest it asked for, announces
// use by creating <dir>/use and release by removing the directory.
//
// The image: an eStargz layer, a zstd:chunked (generation 2) layer, and an
// eStargz layer whose annotation names another TOC (what a registry that
// swapped the TOC looks like): that one is not offered by TOC digest
// (podman then pulls it itself), while its compressed-digest directory
// still serves it from a full pass.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "tests/integration/store_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"
#include "tests/support/test_registry.h"
#include "tests/support/toc_builder.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

struct TocLayer {
  TocBlob toc;
  std::string digest;
  std::string diff_id;
  std::map<std::string, std::string> annotations;  // as pushed
};

TocLayer MakeLayer(TocStyle style, const std::vector<TE>& entries) {
  TocBuildOptions o;
  o.style = style;
  o.chunk_size = 64 << 10;
  TocLayer l;
  l.toc = BuildTocBlob(entries, o);
  l.digest = Sha256Digest(l.toc.blob);
  // The DiffID is the digest of the blob's decompressed stream (the TOC
  // entry included; zstd's skippable frames are not part of it).
  std::string tar =
      style == TocStyle::kEstargz ? GunzipForTest(l.toc.blob) : UnzstdForTest(l.toc.blob);
  EXPECT_FALSE(tar.empty());
  l.diff_id = Sha256Digest(tar);
  l.annotations = l.toc.annotations;
  return l;
}

class StoreTocTest : public StoreFixture {
 protected:
  void SetUp() override {
    SetUpStore("regfs-store-toc");
    if (IsSkipped() || HasFatalFailure()) return;
    layers_.push_back(
        MakeLayer(TocStyle::kEstargz, {TE::Dir("etc"), TE::File("etc/os-release", "ID=estargz\n"),
                                       TE::File("usr/lib/big", DeterministicBytes(1, 400000))}));
    layers_.push_back(
        MakeLayer(TocStyle::kZstdChunkedV2, {TE::Dir("etc"), TE::File("etc/motd", "zstd:chunked\n"),
                                             TE::File("opt/data", DeterministicBytes(2, 300000))}));
    layers_.push_back(
        MakeLayer(TocStyle::kEstargz, {TE::File("srv/swapped", "served by a full pass\n")}));
    // Layer 2's annotation names a TOC that is not the one in the blob.
    for (auto& [k, v] : layers_[2].annotations) {
      if (v == layers_[2].toc.toc_digest) v = Sha256Digest("another TOC");
    }
    ImagePusher pusher(*registry_);
    nlohmann::json manifest = {{"schemaVersion", 2},
                               {"mediaType", "application/vnd.oci.image.manifest.v1+json"}};
    nlohmann::json config = {
        {"architecture", "amd64"},
        {"os", "linux"},
        {"rootfs", {{"type", "layers"}, {"diff_ids", nlohmann::json::array()}}}};
    for (const TocLayer& l : layers_) {
      ASSERT_OK(pusher.PushBlob("test/toc", l.toc.blob));
      config["rootfs"]["diff_ids"].push_back(l.diff_id);
      nlohmann::json d = {{"mediaType", l.toc.media_type},
                          {"digest", l.digest},
                          {"size", l.toc.blob.size()},
                          {"annotations", l.annotations}};
      manifest["layers"].push_back(d);
    }
    std::string config_bytes = config.dump();
    ASSERT_OK(pusher.PushBlob("test/toc", config_bytes));
    manifest["config"] = {{"mediaType", "application/vnd.oci.image.config.v1+json"},
                          {"digest", Sha256Digest(config_bytes)},
                          {"size", config_bytes.size()}};
    ASSERT_OK(pusher.PushManifest("test/toc", "v1", manifest.dump(),
                                  "application/vnd.oci.image.manifest.v1+json"));
    ref_ = registry_->Ref("test/toc", "v1");
    StartStore({}, /*look=*/false);
  }

  std::vector<TocLayer> layers_;
  std::string ref_;
};

TEST_F(StoreTocTest, LooksUpLayersByTocDigestAsContainersStorage154Does) {
  const std::string image_dir = mnt_ + "/" + Base64Encode(ref_);
  struct stat st;
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    const TocLayer& l = layers_[i];
    const std::string ld = image_dir + "/" + l.toc.toc_digest;
    // validateOneAdditionalLayerPath: diff, info and blob exist.
    for (const char* f : {"diff", "info", "blob"}) {
      ASSERT_EQ(stat((ld + "/" + f).c_str(), &st), 0) << f << "\n" << StoreLog();
    }
    std::string info;
    ASSERT_TRUE(ReadWholeFile(ld + "/info", &info));
    auto j = nlohmann::json::parse(info, nullptr, false);
    ASSERT_TRUE(j.is_object()) << info;
    EXPECT_EQ(j["toc-digest"], l.toc.toc_digest) << info;
    EXPECT_EQ(j["compressed-diff-digest"], l.digest) << info;
    EXPECT_EQ(j["compressed-size"], l.toc.blob.size()) << info;
    EXPECT_EQ(j["compression"], i == 0 ? 2 : 4) << info;  // archive.Gzip, archive.Zstd
    ASSERT_TRUE(j.contains("diff-size")) << info;
    EXPECT_EQ(j["diff-size"], -1) << info;  // unknown: nothing but the TOC was read
    EXPECT_EQ(j["flags"]["expected-layer-diffid"], l.diff_id) << info;
    // notifyUseAdditionalLayer: creating `use` is counted, answered ENOENT.
    errno = 0;
    int fd = open((ld + "/use").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EXPECT_EQ(fd, -1);
    EXPECT_EQ(errno, ENOENT);
    if (fd >= 0) close(fd);
    // Looked up by its compressed digest (podman 4.3.1), the same layer's
    // info leaves an unknown size out: that podman refuses -1 when it
    // starts a container.
    std::string old_info;
    ASSERT_TRUE(ReadWholeFile(image_dir + "/" + l.digest + "/info", &old_info));
    auto oj = nlohmann::json::parse(old_info, nullptr, false);
    ASSERT_TRUE(oj.is_object()) << old_info;
    EXPECT_FALSE(oj.contains("diff-size")) << old_info;
    EXPECT_EQ(oj["compressed-diff-digest"], l.digest) << old_info;
  }
  // The trees, read through the TOC-digest paths.
  std::string s;
  ASSERT_TRUE(
      ReadWholeFile(image_dir + "/" + layers_[0].toc.toc_digest + "/diff/etc/os-release", &s))
      << StoreLog();
  EXPECT_EQ(s, "ID=estargz\n");
  ASSERT_TRUE(ReadWholeFile(image_dir + "/" + layers_[1].toc.toc_digest + "/diff/opt/data", &s));
  EXPECT_TRUE(s == DeterministicBytes(2, 300000)) << "opt/data differs (" << s.size() << " bytes)";
  ASSERT_TRUE(ReadWholeFile(image_dir + "/" + layers_[1].toc.toc_digest + "/diff/etc/motd", &s));
  EXPECT_EQ(s, "zstd:chunked\n");
  // Neither the TOC entry nor anything else of the format shows in diff/.
  EXPECT_NE(
      lstat((image_dir + "/" + layers_[0].toc.toc_digest + "/diff/stargz.index.json").c_str(), &st),
      0);
  // The layer whose annotation names another TOC: not offered by that
  // digest (ENOENT: podman pulls it normally) ...
  std::string by_toc;
  for (const auto& [k, v] : layers_[2].annotations) {
    if (k.find("toc.digest") != std::string::npos) by_toc = v;
  }
  ASSERT_FALSE(by_toc.empty());
  errno = 0;
  EXPECT_NE(stat((image_dir + "/" + by_toc + "/diff").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  // ... a digest no layer has is ENOENT too ...
  EXPECT_NE(stat((image_dir + "/" + Sha256Digest("nothing") + "/diff").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  // ... and by its compressed digest (podman 4.3.1's lookup) the layer is
  // served from a full pass, its bytes right.
  ASSERT_TRUE(ReadWholeFile(image_dir + "/" + layers_[2].digest + "/diff/srv/swapped", &s))
      << StoreLog();
  EXPECT_EQ(s, "served by a full pass\n");

  // Release: rmdir of the layer directory, answered ENOENT, counted.
  errno = 0;
  EXPECT_NE(rmdir((image_dir + "/" + layers_[0].toc.toc_digest).c_str()), 0);
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  auto sj = nlohmann::json::parse(status, nullptr, false);
  EXPECT_EQ(sj["uses"], 2) << status;
  EXPECT_GE(sj["releases"], 1) << status;
}

// A restart (fs/store.h): the store's daemon killed after the TOC-digest
// directories were looked up. The successor has them, with the same inode
// numbers, from the journal: an open file below one reads on, the paths
// name the same inodes, and a TOC-digest directory first looked up after
// the kill is served too.
TEST_F(StoreTocTest, TocDigestDirectoriesSurviveARestart) {
  const std::string image_dir = mnt_ + "/" + Base64Encode(ref_);
  const std::string toc0 = image_dir + "/" + layers_[0].toc.toc_digest;
  const std::string file = toc0 + "/diff/etc/os-release";
  std::string s;
  ASSERT_TRUE(ReadWholeFile(file, &s)) << StoreLog();
  EXPECT_EQ(s, "ID=estargz\n");
  struct stat dir_st, file_st, info_st;
  ASSERT_EQ(stat(toc0.c_str(), &dir_st), 0);
  ASSERT_EQ(stat((toc0 + "/info").c_str(), &info_st), 0);
  int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fstat(fd, &file_st), 0);
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  pid_t daemon = nlohmann::json::parse(status, nullptr, false).value("pid", -1);
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(kill(daemon, SIGKILL), 0);

  char buf[64];
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ssize_t n = pread(fd, buf, sizeof buf, 0);
  EXPECT_EQ(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0), "ID=estargz\n")
      << std::strerror(errno) << "\n" << StoreLog();
  close(fd);
  struct stat st;
  ASSERT_EQ(stat(toc0.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_ino, dir_st.st_ino);
  ASSERT_EQ(stat((toc0 + "/info").c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, info_st.st_ino);
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, file_st.st_ino);
  std::string info;
  ASSERT_TRUE(ReadWholeFile(toc0 + "/info", &info));
  auto j = nlohmann::json::parse(info, nullptr, false);
  ASSERT_TRUE(j.is_object()) << info;
  EXPECT_EQ(j["toc-digest"], layers_[0].toc.toc_digest) << info;
  // Looked up only now, by the successor.
  ASSERT_TRUE(ReadWholeFile(image_dir + "/" + layers_[1].toc.toc_digest + "/diff/etc/motd", &s))
      << StoreLog();
  EXPECT_EQ(s, "zstd:chunked\n");
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  EXPECT_NE(nlohmann::json::parse(status, nullptr, false).value("pid", -1), daemon);
}

}  // namespace
}  // namespace regfs
