// Tree::RemoveSubtree, which the store uses to free an idle layer's tree:
// freed inode numbers are reused only with a new generation, nothing known
// to the kernel is freed, and the tables do not grow over release cycles.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "fs/tree.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

Node File(uint64_t size, std::string link = "") {
  Node n;
  n.attr.mode = (link.empty() ? S_IFREG : S_IFLNK) | 0644;
  n.attr.size = size;
  n.link_target = std::move(link);
  return n;
}

// A layer-like subtree: `dirs` directories of `files` files, a symlink, a
// file with xattrs and a hard link.
Ino AddLayer(Tree& t, Ino parent, const std::string& name, int dirs, int files) {
  Ino top = t.AddDir(parent, name, 0755);
  Ino diff = t.AddDir(top, "diff", 0755);
  for (int d = 0; d < dirs; ++d) {
    Ino dir = t.AddDir(diff, "d" + std::to_string(d), 0755);
    for (int f = 0; f < files; ++f) {
      t.AddChild(dir, "a-somewhat-long-file-name-" + std::to_string(f), File(f));
    }
  }
  t.AddChild(diff, "link", File(3, "d0/x"));
  Node x = File(1);
  x.xattrs = std::make_shared<const Xattrs>(Xattrs{{"user.a", "b"}});
  Ino xf = t.AddChild(diff, "xattr-file", x);
  EXPECT_TRUE(t.Link(diff, "hardlink", xf));
  return top;
}

TEST(TreeReleaseTest, RemoveSubtreeFreesAndReusesNumbersWithNewGeneration) {
  Tree t;
  Ino layers = t.AddDir(kRootIno, ".layers", 0755);
  size_t before = t.Count();
  Ino top = AddLayer(t, layers, "sha256:aa", 3, 10);
  Ino f = *t.Lookup(*t.Lookup(*t.Lookup(top, "diff"), "d0"), "a-somewhat-long-file-name-1");
  EXPECT_EQ(t.Get(f)->generation, 1u);
  size_t added = t.Count() - before;
  std::optional<size_t> freed = t.RemoveSubtree(layers, "sha256:aa", [](Ino) { return false; });
  ASSERT_TRUE(freed.has_value());
  EXPECT_EQ(*freed, added);
  EXPECT_EQ(t.Count(), before);
  EXPECT_EQ(t.Lookup(layers, "sha256:aa").status().code(), Code::kNotFound);
  EXPECT_EQ(t.Get(layers)->attr.nlink, 2u);
  // The same layer again takes the freed numbers, each with generation 2.
  Ino top2 = AddLayer(t, layers, "sha256:aa", 3, 10);
  EXPECT_EQ(t.Count() - before, added);
  Ino diff2 = *t.Lookup(top2, "diff");
  Ino f2 = *t.Lookup(*t.Lookup(diff2, "d0"), "a-somewhat-long-file-name-1");
  std::set<Ino> numbers;
  EXPECT_OK(t.ReadDir(diff2, 2, [&](const DirEntry& e, uint64_t) {
    numbers.insert(e.ino);
    return true;
  }));
  EXPECT_LT(*numbers.rbegin(), before + added + 2);  // no number past the old table
  EXPECT_EQ(t.Get(f2)->generation, 2u);
  EXPECT_EQ(t.Get(f2)->attr.size, 1u);
  EXPECT_EQ(t.Get(*t.Lookup(diff2, "link"))->link_target, "d0/x");
  Result<Node> xf = t.Get(*t.Lookup(diff2, "hardlink"));
  ASSERT_OK(xf);
  ASSERT_TRUE(xf->xattrs);
  EXPECT_EQ(xf->xattrs->at(0).second, "b");
  EXPECT_EQ(xf->attr.nlink, 2u);
}

TEST(TreeReleaseTest, NothingIsFreedWhileOneInodeIsKnown) {
  Tree t;
  Ino layers = t.AddDir(kRootIno, ".layers", 0755);
  Ino top = AddLayer(t, layers, "sha256:bb", 2, 5);
  Ino deep = *t.Lookup(*t.Lookup(*t.Lookup(top, "diff"), "d1"), "a-somewhat-long-file-name-4");
  size_t count = t.Count();
  EXPECT_FALSE(t.RemoveSubtree(layers, "sha256:bb", [&](Ino i) { return i == deep; }));
  EXPECT_EQ(t.Count(), count);
  EXPECT_OK(t.Lookup(layers, "sha256:bb"));
  EXPECT_EQ(t.Get(deep)->attr.size, 4u);
  EXPECT_FALSE(t.RemoveSubtree(layers, "missing", [](Ino) { return false; }));
  EXPECT_FALSE(t.RemoveSubtree(layers, "..", [](Ino) { return false; }));
}

TEST(TreeReleaseTest, ReleaseCyclesDoNotGrowTheTables) {
  Tree t;
  Ino layers = t.AddDir(kRootIno, ".layers", 0755);
  AddLayer(t, layers, "keep", 1, 3);  // a neighbour whose names must survive compaction
  AddLayer(t, layers, "cycle", 20, 100);
  uint64_t bytes = t.MemoryBytes();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(t.RemoveSubtree(layers, "cycle", [](Ino) { return false; }));
    AddLayer(t, layers, "cycle", 20, 100);
  }
  // The names' arena is compacted, the slots reused: at most a little slack.
  EXPECT_LE(t.MemoryBytes(), bytes + bytes / 4);
  Ino keep = *t.Lookup(layers, "keep");
  EXPECT_OK(t.Lookup(*t.Lookup(*t.Lookup(keep, "diff"), "d0"), "a-somewhat-long-file-name-2"));
  EXPECT_OK(t.Lookup(*t.Lookup(*t.Lookup(*t.Lookup(layers, "cycle"), "diff"), "d19"),
                     "a-somewhat-long-file-name-99"));
}

}  // namespace
}  // namespace regfs
