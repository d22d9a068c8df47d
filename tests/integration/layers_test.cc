// layers/<N> against bsdtar: for layers holding every entry type, in gzip,
// zstd (several frames and one frame) and plain tar, the mounted tree equals
// what `bsdtar -x` extracts from the same blob, in full.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/rich_entries.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"
#include "tests/support/tree_snapshot.h"
#include "tests/integration/regfs_fixture.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT

class LayersTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs("bsdtar extracting devices and owners");
    if (IsSkipped() || HasFatalFailure()) return;
    ImageSpec spec;
    spec.layers.push_back({RichEntries("gzip"), Compression::kGzip});
    LayerSpec zmulti{RichEntries("zstd-frames"), Compression::kZstd};
    zmulti.zstd_frame_bytes = 1 << 20;
    spec.layers.push_back(zmulti);
    spec.layers.push_back({RichEntries("plain"), Compression::kNone});
    spec.layers.push_back({RichEntries("zstd-one"), Compression::kZstd});
    std::vector<TarEntry> wh = SampleEntries("wh");
    // Parents listed, as image builders write them: an unlisted parent gets
    // the extraction time from bsdtar, which no mount can match.
    wh.push_back(TarEntry::Dir("usr"));
    wh.push_back(TarEntry::Dir("usr/share"));
    wh.push_back(TarEntry::Whiteout("etc/os-release"));
    wh.push_back(TarEntry::OpaqueWhiteout("usr/share"));
    spec.layers.push_back({wh, Compression::kGzip});
    image_ = BuildImage(spec);
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/rich", "v1", image_));
  }
  CommandResult Mount(const std::vector<std::string>& extra = {}) {
    return RegfsFixture::Mount(registry_->Ref("test/rich", "v1"), extra);
  }
  std::string Extract(size_t layer) {
    std::string blob = dir_->Sub("blob" + std::to_string(layer));
    std::ofstream(blob, std::ios::binary) << image_.layers[layer].blob;
    std::string out = dir_->Sub("x" + std::to_string(layer));
    mkdir(out.c_str(), 0755);
    CommandResult r = RunCommand(
        {"bsdtar", "-x", "-p", "--xattrs", "--numeric-owner", "-f", blob, "-C", out});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
  }

  BuiltImage image_;
};

TEST_F(LayersTest, EachLayerEqualsBsdtarExtraction) {
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    std::string want_dir = Extract(i);
    SnapshotOptions so;
    TreeSnapshot want = SnapshotTree(want_dir, so);
    TreeSnapshot got = SnapshotTree(mnt_ + "/layers/" + std::to_string(i), so);
    // The roots are the extraction directory and layers/<N>: not compared.
    want.erase("");
    got.erase("");
    ASSERT_GT(want.size(), 10u);
    EXPECT_EQ(DiffSnapshots(want, got), "") << DaemonLog();
  }
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  auto j = nlohmann::json::parse(status);
  for (const auto& l : j["layers"]) EXPECT_EQ(l["index"]["state"], "ready") << status;
  // Layer 3 is one zstd frame: its tar is kept decompressed in the cache.
  EXPECT_NE(j["layers"][3]["index"].value("note", "").find("kept in the cache"),
            std::string::npos)
      << status;
  Umount();
}

TEST_F(LayersTest, OverlayWhiteoutsAndHardLinkInodes) {
  CommandResult m = Mount({"--whiteouts=overlay", "-o", "allow_other"});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  std::string l4 = mnt_ + "/layers/4";
  struct stat st;
  ASSERT_EQ(lstat((l4 + "/etc/os-release").c_str(), &st), 0) << DaemonLog();
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(major(st.st_rdev), 0u);
  EXPECT_EQ(minor(st.st_rdev), 0u);
  EXPECT_NE(lstat((l4 + "/etc/.wh.os-release").c_str(), &st), 0);
  char v[8] = {};
  EXPECT_EQ(lgetxattr((l4 + "/usr/share").c_str(), "trusted.overlay.opaque", v, sizeof v), 1);
  EXPECT_EQ(v[0], 'y');
  // user.overlay.opaque is for rootless (userxattr) overlay mounts: root,
  // whose overlayfs would pass it through to containers, is not shown it.
  EXPECT_EQ(lgetxattr((l4 + "/usr/share").c_str(), "user.overlay.opaque", v, sizeof v), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(GetxattrAs(65534, l4 + "/usr/share", "user.overlay.opaque"), 1);
  EXPECT_EQ(GetxattrAs(65534, l4 + "/usr/share", "trusted.overlay.opaque"), -ENODATA);
  char names[256];
  ssize_t len = llistxattr((l4 + "/usr/share").c_str(), names, sizeof names);
  ASSERT_GT(len, 0);
  EXPECT_EQ(std::string(names, static_cast<size_t>(len)),
            std::string("trusted.overlay.opaque\0", 23));
  EXPECT_NE(lstat((l4 + "/usr/share/.wh..wh..opq").c_str(), &st), 0);
  // Hard links: one inode, st_nlink 3.
  struct stat a, b;
  ASSERT_EQ(lstat((mnt_ + "/layers/0/usr/bin/tool").c_str(), &a), 0);
  ASSERT_EQ(lstat((mnt_ + "/layers/0/usr/bin/tool-hard2").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_nlink, 3u);
  Umount();
}

}  // namespace
}  // namespace regfs

namespace regfs {
namespace {

TEST_F(LayersTest, SecondMountWorksWithTheRegistryStopped) {
  CommandResult m = Mount();
  ASSERT_EQ(m.exit_code, 0) << m.output;
  SnapshotOptions so;
  std::vector<TreeSnapshot> first;
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    first.push_back(SnapshotTree(mnt_ + "/layers/" + std::to_string(i), so));
  }
  Umount();
  registry_->Stop();
  m = Mount({"--retry-timeout", "2"});
  ASSERT_EQ(m.exit_code, 0) << m.output << DaemonLog();
  for (size_t i = 0; i < image_.layers.size(); ++i) {
    TreeSnapshot again = SnapshotTree(mnt_ + "/layers/" + std::to_string(i), so);
    EXPECT_EQ(DiffSnapshots(first[i], again), "") << "layer " << i << "\n" << DaemonLog();
  }
  std::string status;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &status));
  auto j = nlohmann::json::parse(status);
  for (const auto& l : j["layers"]) {
    EXPECT_EQ(l["index"]["fromCache"], true) << status;
    EXPECT_EQ(l["fetchedBytes"], 0) << status;
  }
  Umount();
}

}  // namespace
}  // namespace regfs
