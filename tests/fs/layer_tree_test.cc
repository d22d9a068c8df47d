// AddLayerEntries on hand-made indexes: what a hard link's own header does
// to the inode it shares with its target, in both modes.
#include "fs/layer_tree.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

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

}  // namespace
}  // namespace regfs
