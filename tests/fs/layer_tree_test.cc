// AddLayerEntries on hand-made indexes: what a hard link's own header does
// to the inode it shares with its target, in both modes; a later entry of a
// path winning as podman's extraction has it; hostile names, depths, sizes
// and limits.
#include "fs/layer_tree.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/fs/tree_test_util.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

TarEntry Entry(std::string path, EntryType type, uint32_t mode, uint32_t uid, int64_t mtime) {
  TarEntry e;
  e.path = std::move(path);
  e.type = type;
  e.mode = mode;
  e.uid = uid;
  e.gid = uid;
  e.mtime_sec = mtime;
  return e;
}

// A file and a symlink, each with a hard link whose header says otherwise.
LayerIndex Index() {
  LayerIndex idx;
  TarEntry file = Entry("bin/tool", EntryType::kRegular, 0755, 0, 100);
  file.size = 3;
  file.xattrs = {{"user.a", "1"}, {"user.b", "old"}};
  idx.entries.push_back(Entry("bin", EntryType::kDirectory, 0755, 0, 1));
  idx.entries.push_back(file);
  TarEntry link = Entry("bin/tool-link", EntryType::kHardLink, 0600, 7, 200);
  link.link_target = "bin/tool";
  link.size = 3;
  link.xattrs = {{"user.b", "new"}, {"user.c", "3"}};
  idx.entries.push_back(link);
  TarEntry sym = Entry("bin/sym", EntryType::kSymlink, 0777, 0, 300);
  sym.link_target = "tool";
  idx.entries.push_back(sym);
  TarEntry symlink_link = Entry("bin/sym-link", EntryType::kHardLink, 0600, 9, 400);
  symlink_link.link_target = "bin/sym";
  idx.entries.push_back(symlink_link);
  return idx;
}

Node Get(const Tree& t, const std::string& path) {
  Ino dir = *t.Lookup(kRootIno, "bin");
  Result<Ino> ino = t.Lookup(dir, path);
  EXPECT_OK(ino);
  Result<Node> n = t.Get(ino.ok() ? *ino : kRootIno);
  EXPECT_OK(n);
  return n.ok() ? *n : Node{};
}

TEST(LayerTreeTest, HardLinksKeepTheTargetsMetadataByDefault) {
  Tree t;
  AddLayerEntries(t, kRootIno, 1, Index(), WhiteoutMode::kAsInTar);
  Node n = Get(t, "tool-link");
  EXPECT_EQ(n.attr.mode, S_IFREG | 0755u);
  EXPECT_EQ(n.attr.uid, 0u);
  EXPECT_EQ(n.attr.mtime_sec, 100);
  EXPECT_EQ(n.attr.nlink, 2u);
  ASSERT_TRUE(n.xattrs);
  EXPECT_EQ(*n.xattrs, (Xattrs{{"user.a", "1"}, {"user.b", "old"}}));
}

TEST(LayerTreeTest, PodmanModeAppliesTheLinkHeaderToTheSharedInode) {
  Tree t;
  AddLayerEntries(t, kRootIno, 1, Index(), WhiteoutMode::kOverlay,
                  HardLinkMetadata::kApplyLinkHeader);
  for (const char* name : {"tool", "tool-link"}) {
    SCOPED_TRACE(name);
    Node n = Get(t, name);
    EXPECT_EQ(n.attr.mode, S_IFREG | 0600u);
    EXPECT_EQ(n.attr.uid, 7u);
    EXPECT_EQ(n.attr.gid, 7u);
    EXPECT_EQ(n.attr.mtime_sec, 200);
    ASSERT_TRUE(n.xattrs);
    EXPECT_EQ(*n.xattrs, (Xattrs{{"user.a", "1"}, {"user.b", "new"}, {"user.c", "3"}}));
  }
  // A link to a symlink: the owner changes, the mode and mtime do not.
  Node s = Get(t, "sym");
  EXPECT_EQ(s.attr.mode, S_IFLNK | 0777u);
  EXPECT_EQ(s.attr.uid, 9u);
  EXPECT_EQ(s.attr.mtime_sec, 300);
}

using testing::Dump;
using testing::IndexOf;
using testing::LogCapture;
using testing::TDir;
using testing::TFile;
using testing::TLink;
using testing::TSym;
using testing::Walk;
using Lines = std::vector<std::string>;

class LayerTreeModeTest : public testing::FdCheckedTest,
                          public ::testing::WithParamInterface<WhiteoutMode> {
 protected:
  // The layer's tree as "path type" lines, built from `entries`.
  Lines Build(std::vector<TarEntry> entries, LayerTreeStats* stats = nullptr) {
    LayerTreeStats s = AddLayerEntries(tree_, kRootIno, 0, IndexOf(std::move(entries)), GetParam());
    if (stats) *stats = s;
    return Dump(tree_, kRootIno);
  }
  bool overlay() const { return GetParam() == WhiteoutMode::kOverlay; }
  Tree tree_;
};

INSTANTIATE_TEST_SUITE_P(BothModes, LayerTreeModeTest,
                         ::testing::Values(WhiteoutMode::kAsInTar, WhiteoutMode::kOverlay),
                         [](const ::testing::TestParamInfo<WhiteoutMode>& p) {
                           return p.param == WhiteoutMode::kOverlay ? "Overlay" : "AsInTar";
                         });

// Issue 14: a layer that deletes a file and puts a directory in its place.
// Podman shows the directory.
TEST_P(LayerTreeModeTest, DirectoryAfterAWhiteoutOfTheSameName) {
  Lines got = Build({TDir("opt"), TDir("opt/app"), TFile("opt/app/.wh.blob.bin", 0),
                     TDir("opt/app/blob.bin"), TFile("opt/app/blob.bin/data")});
  if (overlay()) {
    EXPECT_EQ(got, (Lines{"opt d", "opt/app d", "opt/app/blob.bin d", "opt/app/blob.bin/data f"}));
  } else {
    EXPECT_EQ(got, (Lines{"opt d", "opt/app d", "opt/app/.wh.blob.bin f", "opt/app/blob.bin d",
                          "opt/app/blob.bin/data f"}));
  }
}

// The index builder drops the earlier `d/` entry of a path that comes again,
// so its children arrive before the file that replaces them.
TEST_P(LayerTreeModeTest, FileOverADirectoryReplacesItAndItsChildren) {
  Lines got = Build({TFile("keep"), TFile("d/a"), TDir("d/sub"), TFile("d/sub/b"), TFile("d", 7)});
  EXPECT_EQ(got, (Lines{"d f", "keep f"}));
  EXPECT_EQ(tree_.Get(Walk(tree_, kRootIno, "d"))->attr.size, 7u);
}

TEST_P(LayerTreeModeTest, DirectoryOverAFileReplacesIt) {
  Lines got = Build({TFile("x"), TDir("x"), TFile("x/y")});
  EXPECT_EQ(got, (Lines{"x d", "x/y f"}));
}

TEST_P(LayerTreeModeTest, DirectoryOverADirectoryMergesAndTakesTheLaterAttributes) {
  Lines got = Build({TDir("d", 0700), TFile("d/a"), TDir("d", 0750), TFile("d/b")});
  EXPECT_EQ(got, (Lines{"d d", "d/a f", "d/b f"}));
  EXPECT_EQ(tree_.Get(Walk(tree_, kRootIno, "d"))->attr.mode, S_IFDIR | 0750u);
}

// containers/storage's overlay extraction: `.wh.x` makes a 0:0 device at x,
// removing what x was. As in the tar, it is just another name.
TEST_P(LayerTreeModeTest, WhiteoutAfterThePathInTheSameLayer) {
  Lines got = Build({TDir("x"), TFile("x/y"), TFile(".wh.x", 0)});
  if (overlay()) {
    EXPECT_EQ(got, (Lines{"x w"}));
  } else {
    EXPECT_EQ(got, (Lines{".wh.x f", "x d", "x/y f"}));
  }
}

// `rm -rf gone` in some tools: `.wh.gone`, then `gone/.wh.inner`. Overlay
// extraction's mknod of the second fails with ENOTDIR, which
// containers/storage ignores: gone stays a whiteout, not a new directory
// (that would hide nothing of the lower gone through overlayfs).
TEST_P(LayerTreeModeTest, WhiteoutBelowAWhiteoutOfTheSameLayer) {
  LayerTreeStats stats;
  Lines got = Build(
      {TFile(".wh.gone", 0), TFile("gone/.wh.inner", 0), TFile("gone/sub/.wh.x", 0)}, &stats);
  if (overlay()) {
    EXPECT_EQ(got, (Lines{"gone w"}));
    EXPECT_EQ(stats.whiteouts, 1u);
  } else {
    EXPECT_EQ(got, (Lines{".wh.gone f", "gone d", "gone/.wh.inner f", "gone/sub d",
                          "gone/sub/.wh.x f"}));
  }
  EXPECT_EQ(stats.skipped, 0u);
}

TEST_P(LayerTreeModeTest, HardLinkAndSymlinkOverAFile) {
  Lines got = Build({TFile("a", 1), TFile("b", 2), TLink("b", "a"), TFile("s", 3), TSym("s", "a")});
  EXPECT_EQ(got, (Lines{"a f", "b f", "s l"}));
  EXPECT_EQ(Walk(tree_, kRootIno, "a"), Walk(tree_, kRootIno, "b"));
  EXPECT_EQ(tree_.Get(Walk(tree_, kRootIno, "a"))->attr.nlink, 2u);
}

// Extraction cannot link to a name that a later entry removed.
TEST_P(LayerTreeModeTest, HardLinkToARemovedPathIsSkipped) {
  LayerTreeStats stats;
  Lines got = Build({TFile("d/f"), TLink("l1", "d/f"), TFile("d"), TLink("l2", "d/f")}, &stats);
  EXPECT_EQ(got, (Lines{"d f", "l1 f"}));
  EXPECT_EQ(stats.skipped, 1u);
  EXPECT_EQ(tree_.Get(Walk(tree_, kRootIno, "l1"))->attr.nlink, 1u);
}

// Issue 15: one name over NAME_MAX made its whole directory unlistable.
TEST_P(LayerTreeModeTest, OverlongNamesAreSkippedAndTheirSiblingsStillList) {
  std::string long_name(300, 'n');
  std::string long_path;
  for (int i = 0; i < 20; ++i) long_path += std::string(250, 'p') + "/";
  LayerTreeStats stats;
  LogCapture log;
  Lines got = Build({TFile("d/a"), TFile("d/" + long_name), TDir("d/" + long_name + "x"),
                     TFile("d/" + long_name + "x/c"), TFile("d/" + long_path + "f"), TFile("d/b"),
                     TFile("d/" + std::string(255, 'm'))},
                    &stats);
  EXPECT_EQ(got, (Lines{"d d", "d/a f", "d/b f", "d/" + std::string(255, 'm') + " f"}));
  EXPECT_EQ(stats.skipped, 4u);
  EXPECT_NE(log.Text().find("longer than"), std::string::npos) << log.Text();
  EXPECT_OK(tree_.ReadDir(Walk(tree_, kRootIno, "d"), 0, [](const DirEntry& e, uint64_t) {
    EXPECT_FALSE(e.name.empty());
    EXPECT_LE(e.name.size(), 255u);
    return true;
  }));
}

// In overlay form `.wh.` would become an entry with an empty name.
TEST_P(LayerTreeModeTest, EmptyWhiteoutNameIsSkipped) {
  LayerTreeStats stats;
  Lines got = Build({TFile("d/.wh.", 0), TFile("d/a"), TFile("d/.wh..", 0)}, &stats);
  if (overlay()) {
    EXPECT_EQ(got, (Lines{"d d", "d/a f"}));
    EXPECT_EQ(stats.skipped, 2u);
  } else {
    EXPECT_EQ(got, (Lines{"d d", "d/.wh. f", "d/.wh.. f", "d/a f"}));
  }
}

// Names a cleaned tar path never has, in case an index from elsewhere does.
TEST_P(LayerTreeModeTest, DotNamesEmptyComponentsAndNulAreSkipped) {
  LayerTreeStats stats;
  Lines got = Build({TFile("d/./a"), TFile("d/../a"), TFile("d//a"), TFile(std::string("d/n\0ul", 6)),
                     TFile("d/ok"), TFile("/abs"), TFile("d/trailing/")},
                    &stats);
  EXPECT_EQ(got, (Lines{"d d", "d/ok f"}));
  EXPECT_EQ(stats.skipped, 6u);
}

// Issue 15: a 275-byte layer with a ~20,000-component path crashed the
// daemon (recursion per component). Longer than PATH_MAX: skipped.
TEST_P(LayerTreeModeTest, TwentyThousandComponentPathDoesNotCrash) {
  std::string deep;
  for (int i = 0; i < 20000; ++i) deep += "a/";
  std::string fits;
  for (int i = 0; i < 2000; ++i) fits += "b/";  // 4,001 bytes with the "f"
  LayerTreeStats stats;
  Lines got = Build({TFile(deep + "f"), TDir(deep.substr(0, deep.size() - 1)), TFile("top"),
                     TFile(fits + "f")},
                    &stats);
  EXPECT_EQ(stats.skipped, 2u);
  EXPECT_EQ(got.size(), 2002u);
  EXPECT_EQ(got.back(), "top f");
  EXPECT_NE(Walk(tree_, kRootIno, fits + "f"), 0u);
}

// Issue 15: inserting into a sorted vector made this quadratic (> 120 s).
// One form only: the sorting and insertion do not depend on it, and the
// sanitizer builds run this too.
class LayerTreeSizeTest : public testing::FdCheckedTest {
 protected:
  Tree tree_;
};

TEST_F(LayerTreeSizeTest, MillionEntriesInOneDirectoryInReverseOrder) {
  constexpr int kN = 1000000;
  std::vector<TarEntry> entries;
  entries.reserve(kN + 1);
  entries.push_back(TDir("big"));
  char name[32];
  for (int i = kN - 1; i >= 0; --i) {
    std::snprintf(name, sizeof name, "big/f%07d", i);
    entries.push_back(TFile(name, 1, static_cast<uint64_t>(i)));
  }
  auto start = std::chrono::steady_clock::now();
  LayerTreeStats stats = AddLayerEntries(tree_, kRootIno, 0, IndexOf(std::move(entries)),
                                         WhiteoutMode::kOverlay);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("1,000,000 reverse-ordered entries indexed in %.2f s\n", secs);
  EXPECT_EQ(stats.entries, kN + 1u);
  Ino big = Walk(tree_, kRootIno, "big");
  uint64_t n = 0;
  std::string prev;
  EXPECT_OK(tree_.ReadDir(big, 2, [&](const DirEntry& e, uint64_t) {
    EXPECT_LT(prev, e.name);
    prev = e.name;
    ++n;
    return true;
  }));
  EXPECT_EQ(n, static_cast<uint64_t>(kN));
  EXPECT_EQ(prev, "f0999999");
  EXPECT_EQ(tree_.Get(*tree_.Lookup(big, "f0000007"))->content_arg, 7u);
}

TEST_P(LayerTreeModeTest, EntryLimitSkipsTheRestWithOneLogLine) {
  std::vector<TarEntry> entries;
  for (int i = 0; i < 10; ++i) entries.push_back(TFile("d/f" + std::to_string(i)));
  LayerTreeLimits limits;
  limits.max_entries = 6;  // "d" (implied) and five files
  LogCapture log;
  LayerTreeStats stats =
      AddLayerEntries(tree_, kRootIno, 0, IndexOf(entries), GetParam(), HardLinkMetadata::kKeepTarget, limits);
  EXPECT_EQ(Dump(tree_, kRootIno).size(), 6u);
  EXPECT_EQ(stats.skipped, 5u);
  EXPECT_EQ(stats.over_limit, 5u);
  EXPECT_EQ(log.Lines(), 1u) << log.Text();
}

TEST_P(LayerTreeModeTest, TreeMemoryLimitSkipsTheRestWithOneLogLine) {
  std::vector<TarEntry> entries;
  for (int i = 0; i < 1000; ++i) entries.push_back(TFile("f" + std::to_string(i)));
  LayerTreeLimits limits;
  limits.max_tree_bytes = tree_.MemoryBytes() + 20000;
  LogCapture log;
  LayerTreeStats stats =
      AddLayerEntries(tree_, kRootIno, 0, IndexOf(entries), GetParam(), HardLinkMetadata::kKeepTarget, limits);
  EXPECT_GT(stats.entries, 10u);
  EXPECT_LT(stats.entries, 1000u);
  EXPECT_EQ(stats.entries + stats.over_limit, 1000u);
  EXPECT_LE(tree_.MemoryBytes(), limits.max_tree_bytes + 65536);  // capacities round up
  EXPECT_EQ(log.Lines(), 1u) << log.Text();
}

}  // namespace
}  // namespace regfs
