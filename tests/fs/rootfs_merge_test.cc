// MergeLayers over layer trees built from hand-made indexes, in both whiteout
// modes: what rootfs/ shows when layers replace, whiteout and re-create paths
// (podman's extraction of the same layers is the reference), and that deep
// or hostile trees merge without recursion.
#include "fs/rootfs_merge.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "fs/layer_tree.h"
#include "tests/fs/tree_test_util.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::Dump;
using testing::IndexOf;
using testing::TDir;
using testing::TFile;
using testing::TLink;
using testing::TSym;
using testing::Walk;
using Lines = std::vector<std::string>;
using Layers = std::vector<std::vector<TarEntry>>;

class RootfsMergeTest : public testing::FdCheckedTest,
                        public ::testing::WithParamInterface<WhiteoutMode> {
 protected:
  // rootfs/ of `layers` (bottom first) as "path type" lines.
  Lines Merge(const Layers& layers, WhiteoutMode mode, MergeStats* stats = nullptr) {
    std::vector<Ino> roots;
    for (size_t i = 0; i < layers.size(); ++i) {
      Ino dir = tree_.AddDir(kRootIno, "layer" + std::to_string(i));
      AddLayerEntries(tree_, dir, static_cast<uint32_t>(i), IndexOf(layers[i]), mode);
      roots.push_back(dir);
    }
    rootfs_ = tree_.AddDir(kRootIno, "rootfs");
    MergeStats s = MergeLayers(tree_, roots, rootfs_, mode);
    if (stats) *stats = s;
    return Dump(tree_, rootfs_);
  }
  Lines Merge(const Layers& layers) { return Merge(layers, GetParam()); }

  Tree tree_;
  Ino rootfs_ = 0;
};

INSTANTIATE_TEST_SUITE_P(BothModes, RootfsMergeTest,
                         ::testing::Values(WhiteoutMode::kAsInTar, WhiteoutMode::kOverlay),
                         [](const ::testing::TestParamInfo<WhiteoutMode>& p) {
                           return p.param == WhiteoutMode::kOverlay ? "Overlay" : "AsInTar";
                         });

// Issue 14: the upper layer deletes a file and makes a directory of its name.
TEST_P(RootfsMergeTest, DirectoryAfterAWhiteoutOfTheSameName) {
  Lines got = Merge({{TDir("opt"), TDir("opt/app"), TFile("opt/app/blob.bin"), TFile("opt/app/keep")},
                     {TDir("opt"), TDir("opt/app"), TFile("opt/app/.wh.blob.bin", 0),
                      TDir("opt/app/blob.bin"), TFile("opt/app/blob.bin/data")}});
  EXPECT_EQ(got, (Lines{"opt d", "opt/app d", "opt/app/blob.bin d", "opt/app/blob.bin/data f",
                        "opt/app/keep f"}));
}

TEST_P(RootfsMergeTest, DirectoryReplacedByAFileAndBack) {
  Lines got = Merge({{TDir("d"), TFile("d/a"), TFile("d/sub/x")},
                     {TFile("d")},
                     {TDir("d"), TFile("d/z")}});
  EXPECT_EQ(got, (Lines{"d d", "d/z f"}));
}

TEST_P(RootfsMergeTest, FileReplacedByADirectoryAndBack) {
  EXPECT_EQ(Merge({{TFile("f")}, {TDir("f"), TFile("f/g")}}), (Lines{"f d", "f/g f"}));
}

TEST_P(RootfsMergeTest, SymlinkOverADirectoryAndImpliedDirectoryOverAFile) {
  Lines got = Merge({{TFile("d/a"), TFile("f")}, {TSym("d", "f"), TFile("f/inner")}});
  EXPECT_EQ(got, (Lines{"d l", "f d", "f/inner f"}));
}

TEST_P(RootfsMergeTest, DirectoriesMergeAndOpaqueOnesHideWhatIsBelow) {
  Lines got = Merge({{TFile("d/a"), TFile("o/a")},
                     {TFile("d/b"), TFile("o/.wh..wh..opq", 0), TFile("o/b")}});
  EXPECT_EQ(got, (Lines{"d d", "d/a f", "d/b f", "o d", "o/b f"}));
}

// A whiteout hides lower layers only, wherever it comes in its own layer
// (OCI image-spec; umoci keeps the layer's x when `.wh.x` follows it). In
// overlay form the layer holds only the device that replaced x (podman
// 4.3.1 refuses such a layer: its mknod finds x there).
TEST_P(RootfsMergeTest, WhiteoutAfterAPathOfItsOwnLayer) {
  Lines got = Merge({{TFile("x"), TFile("y/old"), TFile("z/old")},
                     {TDir("x"), TFile("x/inner"), TFile(".wh.x", 0), TFile(".wh.y", 0), TDir("y"),
                      TFile("y/new"), TDir("z"), TFile("z/new"), TFile(".wh.z", 0)}});
  if (GetParam() == WhiteoutMode::kOverlay) {
    EXPECT_EQ(got, (Lines{"y d", "y/new f"}));
  } else {
    EXPECT_EQ(got, (Lines{"x d", "x/inner f", "y d", "y/new f", "z d", "z/new f"}));
  }
}

// `rm -rf gone` in some tools' layers: `.wh.gone`, then `gone/.wh.inner`.
// Neither extraction makes gone again (umoci makes parents only for entries
// that are not whiteouts; podman's mknod below its own device fails with
// ENOTDIR, which it ignores).
TEST_P(RootfsMergeTest, WhiteoutsBelowAWhiteoutMakeNoDirectory) {
  Lines got = Merge(
      {{TDir("gone"), TFile("gone/inner"), TFile("gone/sub/x"), TFile("keep")},
       {TFile(".wh.gone", 0), TFile("gone/.wh.inner", 0), TFile("gone/sub/.wh.x", 0)}});
  EXPECT_EQ(got, (Lines{"keep f"}));
}

// Whiteouts in directories the layer only implies: they hide what lower
// layers have there; a parent is made once an entry that is not a whiteout
// needs it (in both forms).
TEST_P(RootfsMergeTest, WhiteoutsInImpliedDirectoriesHideLowerEntries) {
  Lines got = Merge({{TFile("p/a"), TFile("p/b"), TFile("p/q/z")},
                     {TFile("p/q/.wh.z", 0), TFile("p/.wh.a", 0), TFile("n/m/.wh.z", 0),
                      TFile("n/m/k/f")}});
  EXPECT_EQ(got, (Lines{"n d", "n/m d", "n/m/k d", "n/m/k/f f", "p d", "p/b f", "p/q d"}));
}

// A parent made for an entry that is then skipped (here: "." further down
// its path) is no whiteout's: it stays, an empty directory, in both forms.
TEST_P(RootfsMergeTest, ImpliedDirectoryOfASkippedEntryStays) {
  EXPECT_EQ(Merge({{TFile("d/./f")}}), (Lines{"d d"}));
}

// Where the forms part: a whiteout in a directory the layer only implies,
// with nothing below it in the merged view but a file or nothing. umoci
// makes no parent for a whiteout (and fails on a whiteout below a file);
// podman's extraction makes the parent (MkdirAll), which overlayfs shows.
TEST_P(RootfsMergeTest, WhiteoutOnlyImpliedDirectoryOverAFileOrNothing) {
  Lines got = Merge({{TFile("w")}, {TFile("w/.wh.nothing", 0), TFile("new/.wh.nothing", 0)}});
  if (GetParam() == WhiteoutMode::kOverlay) {
    EXPECT_EQ(got, (Lines{"new d", "w d"}));
  } else {
    EXPECT_EQ(got, (Lines{"w f"}));
  }
}

TEST_P(RootfsMergeTest, WhiteoutsHideLowerHardLinksAndCountSurvivors) {
  Lines got = Merge({{TFile("a"), TLink("b", "a"), TLink("c", "a")}, {TFile(".wh.a", 0)}});
  EXPECT_EQ(got, (Lines{"b f", "c f"}));
  EXPECT_EQ(tree_.Get(Walk(tree_, rootfs_, "b"))->attr.nlink, 2u);
  EXPECT_EQ(Walk(tree_, rootfs_, "b"), Walk(tree_, rootfs_, "c"));
}

// Overlay extraction would fail `y/a` under the device `.wh.y` made; both
// forms make y a new directory that hides the lower one.
TEST_P(RootfsMergeTest, PathBelowAWhiteoutOfItsOwnLayer) {
  Lines got = Merge({{TFile("y/old")}, {TFile(".wh.y", 0), TFile("y/a")}});
  EXPECT_EQ(got, (Lines{"y d", "y/a f"}));
}

TEST_P(RootfsMergeTest, EntryLimitLeavesTheRestOutWithOneLogLine) {
  std::vector<TarEntry> entries;
  for (int i = 0; i < 10; ++i) entries.push_back(TFile("d/f" + std::to_string(i)));
  Ino dir = tree_.AddDir(kRootIno, "layer0");
  AddLayerEntries(tree_, dir, 0, IndexOf(entries), GetParam());
  Ino rootfs = tree_.AddDir(kRootIno, "rootfs");
  MergeLimits limits;
  limits.max_entries = 4;
  testing::LogCapture log;
  MergeStats stats = MergeLayers(tree_, {dir}, rootfs, GetParam(), limits);
  EXPECT_EQ(Dump(tree_, rootfs).size(), 4u);
  EXPECT_EQ(stats.skipped, 7u);
  EXPECT_EQ(log.Lines(), 1u) << log.Text();
}

// 2,000 levels in each layer, one whiteout deep down: no recursion per level
// (building, merging, or freeing the merge's working tree).
TEST_P(RootfsMergeTest, DeepTreesMergeWithoutRecursion) {
  std::string deep;
  for (int i = 0; i < 1999; ++i) deep += "a/";
  Lines got = Merge({{TFile(deep + "x"), TFile(deep + "y")}, {TFile(deep + ".wh.x", 0)}});
  ASSERT_EQ(got.size(), 2000u);
  EXPECT_EQ(got.back(), deep + "y f");
}

// Both modes describe the same image; where the forms agree (the tests above
// show where they part), rootfs/ must not depend on which.
class RootfsMergeModesTest : public testing::FdCheckedTest {};

TEST_F(RootfsMergeModesTest, BothModesGiveTheSameRootfs) {
  Layers layers = {
      {TDir("d"), TFile("d/a"), TFile("d/sub/x"), TFile("f"), TFile("w"), TFile("o/a"), TFile("o/b/c")},
      {TFile(".wh.d", 0), TDir("d"), TFile("d/new"), TFile("f/inner"), TFile("o/.wh..wh..opq", 0),
       TFile("o/b/d"), TFile("w/.wh.nothing", 0), TFile("w/x")},
      {TFile("d"), TFile("o/b/.wh.d", 0), TFile("o/.wh.e", 0), TFile("o/e"), TFile("o/.wh.", 0)},
  };
  std::vector<Lines> got;
  for (WhiteoutMode mode : {WhiteoutMode::kAsInTar, WhiteoutMode::kOverlay}) {
    Tree t;
    std::vector<Ino> roots;
    for (size_t i = 0; i < layers.size(); ++i) {
      Ino dir = t.AddDir(kRootIno, "layer" + std::to_string(i));
      AddLayerEntries(t, dir, static_cast<uint32_t>(i), IndexOf(layers[i]), mode);
      roots.push_back(dir);
    }
    Ino rootfs = t.AddDir(kRootIno, "rootfs");
    MergeLayers(t, roots, rootfs, mode);
    got.push_back(Dump(t, rootfs));
  }
  EXPECT_EQ(got[0], (Lines{"d f", "f d", "f/inner f", "o d", "o/b d", "o/e f", "w d", "w/x f"}));
  EXPECT_EQ(got[0], got[1]);
}

}  // namespace
}  // namespace regfs
