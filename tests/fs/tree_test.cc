#include "fs/tree.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

#include "tests/support/fd_count.h"
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

std::vector<std::string> Names(const Tree& t, Ino dir) {
  std::vector<std::string> out;
  EXPECT_OK(t.ReadDir(dir, 0, [&](const DirEntry& e, uint64_t) {
    out.push_back(e.name);
    return true;
  }));
  return out;
}

TEST(TreeTest, AddLookupAndSortedListing) {
  Tree t;
  Ino d = t.AddDir(kRootIno, "dir", 0755);
  t.AddChild(d, "b", File(2));
  t.AddChild(d, "a", File(1));
  t.AddChild(d, "c", File(3, "target"));
  EXPECT_EQ(Names(t, d), (std::vector<std::string>{".", "..", "a", "b", "c"}));
  Result<Ino> c = t.Lookup(d, "c");
  ASSERT_OK(c);
  Result<Node> n = t.Get(*c);
  ASSERT_OK(n);
  EXPECT_EQ(n->link_target, "target");
  EXPECT_EQ(n->attr.size, 3u);
  EXPECT_EQ(t.Lookup(d, "zz").status().code(), Code::kNotFound);
  EXPECT_EQ(*t.Lookup(d, ".."), kRootIno);
  EXPECT_EQ(t.Get(kRootIno)->attr.nlink, 3u);  // ".", "..", and dir's ".."
}

TEST(TreeTest, DuplicateNamesAreReported) {
  Tree t;
  bool existed = true;
  Ino a = t.AddChild(kRootIno, "x", File(1), &existed);
  EXPECT_FALSE(existed);
  Ino b = t.AddChild(kRootIno, "x", File(9), &existed);
  EXPECT_TRUE(existed);
  EXPECT_EQ(a, b);
  EXPECT_EQ(t.Get(a)->attr.size, 1u);
  // Nothing can be added under a file.
  t.AddChild(a, "child", File(1), &existed);
  EXPECT_TRUE(existed);
}

TEST(TreeTest, HardLinksShareOneInodeAndCount) {
  Tree t;
  Ino f = t.AddChild(kRootIno, "f", File(5));
  Ino d = t.AddDir(kRootIno, "d");
  EXPECT_TRUE(t.Link(d, "g", f));
  EXPECT_FALSE(t.Link(d, "g", f));       // name taken
  EXPECT_FALSE(t.Link(kRootIno, "h", d));  // no links to directories
  EXPECT_EQ(*t.Lookup(d, "g"), f);
  EXPECT_EQ(t.Get(f)->attr.nlink, 2u);
  EXPECT_TRUE(t.Link(kRootIno, "alias", f, /*count_link=*/false));
  EXPECT_EQ(t.Get(f)->attr.nlink, 2u);
}

TEST(TreeTest, UpdateKeepsChildrenAndSideTables) {
  Tree t;
  Ino d = t.AddDir(kRootIno, "d");
  t.AddChild(d, "x", File(1));
  t.Update(d, [](Node& n) {
    n.attr.mode = S_IFDIR | 0700;
    n.xattrs = std::make_shared<const Xattrs>(Xattrs{{"user.a", "1"}});
  });
  EXPECT_EQ(Names(t, d).size(), 3u);
  Result<Node> n = t.Get(d);
  ASSERT_OK(n);
  EXPECT_EQ(n->attr.mode, S_IFDIR | 0700u);
  ASSERT_TRUE(n->xattrs);
  EXPECT_EQ((*n->xattrs)[0].second, "1");
  t.Update(d, [](Node& m) { m.xattrs = nullptr; });
  EXPECT_FALSE(t.Get(d)->xattrs);
}

TEST(TreeTest, DevicesKeepTheirNumbers) {
  Tree t;
  Node dev;
  dev.attr.mode = S_IFCHR | 0600;
  dev.attr.rdev = makedev(4, 64);
  Ino i = t.AddChild(kRootIno, "tty", dev);
  EXPECT_EQ(t.Get(i)->attr.rdev, makedev(4, 64));
}

TEST(TreeTest, ReadDirResumesAtOffsets) {
  Tree t;
  for (int i = 0; i < 10; ++i) t.AddChild(kRootIno, "f" + std::to_string(i), File(1));
  std::vector<std::string> got;
  uint64_t off = 0;
  for (;;) {
    int n = 0;
    uint64_t next = off;
    ASSERT_OK(t.ReadDir(kRootIno, off, [&](const DirEntry& e, uint64_t nx) {
      got.push_back(e.name);
      next = nx;
      return ++n < 3;  // three per call, as a small buffer would
    }));
    if (next == off) break;
    off = next;
  }
  EXPECT_EQ(got.size(), 12u);
  EXPECT_EQ(got.back(), "f9");
}

class TreeListingTest : public testing::FdCheckedTest {};

// The callback used to run under the shared lock, so a callback that touched
// the tree (the merge calls Get) locked it recursively; one that writes
// deadlocked.
TEST_F(TreeListingTest, ReadDirCallbackMayUseTheTree) {
  Tree t;
  Ino d = t.AddDir(kRootIno, "d");
  for (int i = 0; i < 600; ++i) t.AddChild(d, "f" + std::to_string(i), File(1));
  int seen = 0;
  EXPECT_OK(t.ReadDir(d, 2, [&](const DirEntry& e, uint64_t) {
    EXPECT_TRUE(t.Get(e.ino).ok());
    t.Update(e.ino, [](Node& n) { n.attr.size = 2; });
    if (seen++ == 300) t.AddChild(kRootIno, "added-while-listing", File(1));
    return true;
  }));
  EXPECT_EQ(seen, 600);
  EXPECT_EQ(t.Get(*t.Lookup(d, "f599"))->attr.size, 2u);
  EXPECT_OK(t.Lookup(kRootIno, "added-while-listing"));
}

// A mount lists directories while layers are still being added (under the
// same lock): listings of a finished directory stay whole and in order.
TEST_F(TreeListingTest, ListingWhileAnotherThreadAdds) {
  Tree t;
  Ino done = t.AddDir(kRootIno, "done");
  Ino growing = t.AddDir(kRootIno, "growing");
  for (int i = 0; i < 1000; ++i) t.AddChild(done, "f" + std::to_string(1000 + i), File(1));
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; i < 5000 && !stop.load(); ++i) t.AddChild(growing, "g" + std::to_string(i), File(1));
  });
  for (int round = 0; round < 20; ++round) {
    std::vector<std::string> names;
    ASSERT_OK(t.ReadDir(done, 2, [&](const DirEntry& e, uint64_t) {
      names.push_back(e.name);
      return t.Get(e.ino).ok();
    }));
    ASSERT_EQ(names.size(), 1000u);
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    uint64_t n = 0;
    ASSERT_OK(t.ReadDir(growing, 2, [&](const DirEntry&, uint64_t) { return ++n > 0; }));
  }
  stop = true;
  writer.join();
}

// Appends in order, inserts out of order, duplicates found either way.
TEST_F(TreeListingTest, AnyInsertionOrderListsSorted) {
  Tree t;
  std::vector<std::string> names;
  for (int i = 0; i < 5000; ++i) names.push_back("n" + std::to_string(i));
  std::vector<std::string> shuffled = names;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(42));
  std::vector<Ino> inos;
  for (const auto& n : shuffled) inos.push_back(t.AddChild(kRootIno, n, File(1)));
  std::sort(names.begin(), names.end());
  std::vector<std::string> want{".", ".."};
  want.insert(want.end(), names.begin(), names.end());
  EXPECT_EQ(Names(t, kRootIno), want);
  bool existed = false;
  EXPECT_EQ(t.AddChild(kRootIno, shuffled[17], File(2), &existed), inos[17]);
  EXPECT_TRUE(existed);
  EXPECT_EQ(t.AddChild(kRootIno, names.back(), File(2), &existed), *t.Lookup(kRootIno, names.back()));
  EXPECT_TRUE(existed);
  Ino z = t.AddChild(kRootIno, "zzz", File(2), &existed);
  EXPECT_EQ(z, t.Count());
  EXPECT_FALSE(existed);
}

// Listing is copied out in batches: offsets stay right across batch ends.
TEST_F(TreeListingTest, ReadDirResumesAcrossBatches) {
  Tree t;
  for (int i = 0; i < 1000; ++i) t.AddChild(kRootIno, "f" + std::to_string(1000 + i), File(1));
  std::vector<std::string> got;
  uint64_t off = 0;
  for (int calls = 0; calls < 100; ++calls) {
    int n = 0;
    uint64_t next = off;
    ASSERT_OK(t.ReadDir(kRootIno, off, [&](const DirEntry& e, uint64_t nx) {
      got.push_back(e.name);
      next = nx;
      return ++n < 257;  // one over a batch
    }));
    if (next == off) break;
    off = next;
  }
  ASSERT_EQ(got.size(), 1002u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(got[i + 2], "f" + std::to_string(1000 + i));
}

}  // namespace
// A daemon that takes over a mount after a restart must answer the kernel's
// old inode numbers: what is added below a pending directory (a layer's
// tree) gets the same numbers whichever layer is filled first.
TEST(TreeTest, InodeNumbersDoNotDependOnTheOrderPendingDirsAreFilled) {
  auto build = [](bool first_a_then_b, std::vector<Ino>* out) {
    Tree t;
    Ino a = t.AddDir(kRootIno, "a", 0755);
    Ino b = t.AddDir(kRootIno, "b", 0755);
    t.SetPending(a, 1);
    t.SetPending(b, 2);
    auto fill = [&t](Ino dir, int n) {
      Ino sub = t.AddDir(dir, "sub", 0755);
      for (int i = 0; i < n; ++i) t.AddChild(sub, "f" + std::to_string(i), File(1));
      t.ClearPending(dir);
    };
    if (first_a_then_b) {
      fill(a, 3);
      fill(b, 5);
    } else {
      fill(b, 5);
      fill(a, 3);
    }
    Ino late = t.AddChild(kRootIno, "late", File(1));
    out->clear();
    for (Ino dir : {a, b}) {
      Ino sub = *t.Lookup(dir, "sub");
      out->push_back(sub);
      for (int i = 0; i < 3; ++i) out->push_back(*t.Lookup(sub, "f" + std::to_string(i)));
      Result<Node> n = t.Get(out->back());
      ASSERT_TRUE(n.ok());
      EXPECT_EQ(n->parent, sub);
    }
    out->push_back(late);
    EXPECT_EQ(t.Count(), 3u + 2 * 1 + 3 + 5 + 1);
  };
  std::vector<Ino> ab, ba;
  build(true, &ab);
  build(false, &ba);
  EXPECT_EQ(ab, ba);
}

}  // namespace regfs
