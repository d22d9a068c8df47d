// Same-path conflicts (issue 14) against the two oracles, one small image
// per kind of conflict: a whiteout and then a directory of that name, one
// type over another, opaque directories next to new content, header-only
// entries with a nonzero size field, a directory replaced by a file and back,
// one path twice in a layer, a whiteout after the path it names.
//
//   - `regfs store`: what a container sees (podman create + podman mount of
//     the image pulled through the store) equals what it sees after a
//     normal `podman pull` into a private storage.
//   - `regfs mount`: rootfs/ equals `umoci unpack` of the same image.
//
// The oracles differ where podman's extraction departs from the OCI rule
// (a whiteout hides only lower layers): a whiteout and then a directory of
// that name in one layer leaves podman a plain directory, so the lower
// directory's children show through overlayfs; umoci hides them. The store
// must follow podman (what a container would see), the mount must follow
// umoci. Likewise an opaque marker at a layer's root: overlayfs ignores it,
// umoci hides every lower path. Two cases podman 4.3.1 refuses to pull; for
// those umoci is the only oracle.
//
// Compared: paths, types, modes, owners, sizes of non-directories, link
// targets, device numbers, contents, hard-link groups, user.* and trusted.*
// xattrs (overlayfs's own left out). Not mtimes: containers/storage gives the
// directories it creates or re-times the time of extraction. Every difference
// is printed with what the oracle shows and what regfs shows.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/regfs_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"
#include "tests/support/test_registry.h"
#include "tests/support/tree_snapshot.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

// One tar entry; `size_field` > 0 writes that size into the header of an
// entry of a header-only type (directory, link, device, fifo) while writing
// no data after it: Go's archive/tar, which podman and umoci read layers
// with, treats those types as carrying no data whatever the size field
// says, so the next header follows at once.
struct Entry {
  TE tar;
  uint64_t size_field = 0;
};

// Rewrites the size field (offset 124, 12 octal digits with a NUL) of the
// 512-byte header at `header` and its checksum.
void PatchSize(char* header, uint64_t size) {
  char digits[13];
  std::snprintf(digits, sizeof digits, "%011llo", static_cast<unsigned long long>(size));
  std::memcpy(header + 124, digits, 12);  // 11 digits and the NUL
  std::memset(header + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(header[i]);
  char chk[8];
  std::snprintf(chk, sizeof chk, "%06o", sum);
  std::memcpy(header + 148, chk, 6);
  header[154] = '\0';
  header[155] = ' ';
}

std::string BuildConflictTar(const std::vector<Entry>& entries) {
  std::string out;
  for (const Entry& e : entries) {
    AppendTarEntry(&out, e.tar);
    if (e.size_field == 0) continue;
    // Header-only types: the entry's own header is its last block.
    EXPECT_NE(e.tar.type, TarType::kFile) << e.tar.path;
    PatchSize(out.data() + out.size() - 512, e.size_field);
  }
  FinishTar(&out);
  return out;
}

// One image per kind of conflict, so that a layer regfs cannot read at all
// (which fails the whole rootfs/) does not hide what goes wrong elsewhere.
struct Case {
  std::string name;
  std::vector<std::vector<Entry>> layers;  // bottom first
  // False where podman 4.3.1 refuses to pull the image (why beside the
  // case): then only umoci is an oracle.
  bool podman_pulls = true;
  // path -> "file", "dir", ..., "absent": what both oracles make of the
  // image, checked on the oracle's tree so that the comparison cannot pass
  // because the image (or the tool) stopped exercising the conflict.
  std::vector<std::pair<std::string, std::string>> expect;
  // The same, where the oracles differ.
  std::vector<std::pair<std::string, std::string>> expect_podman;
  std::vector<std::pair<std::string, std::string>> expect_umoci;
  // path -> xattr name both oracles show (xattrs are only compared where
  // the oracle kept some).
  std::vector<std::pair<std::string, std::string>> expect_xattrs;
};

TE Owned(TE e, uint32_t uid, uint32_t gid) {
  e.uid = uid;
  e.gid = gid;
  return e;
}

TE WithXattrs(TE e, std::map<std::string, std::string> x) {
  e.xattrs = std::move(x);
  return e;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  // Issue 14's failing case: a whiteout, then a directory of that name in
  // the same layer. The OCI rule: a whiteout hides only lower layers, so
  // the new directory stays.
  cases.push_back(
      {"WhiteoutThenDirectory",
       {{
            {TE::Dir("opt")},
            {TE::Dir("opt/app")},
            {TE::File("opt/app/blob.bin", "content A\n")},
            {TE::File("opt/app/keep", "kept\n")},
            {TE::Dir("rd")},
            {TE::File("rd/old", "rd/old in layer 0\n")},
            {TE::Dir("ro")},
            {TE::File("ro/old", "ro/old in layer 0\n")},
            {TE::Dir("rs")},
            {TE::File("rs/old", "rs/old in layer 0\n")},
        },
        {
            {TE::Dir("opt")},
            {TE::Dir("opt/app")},
            {TE::Whiteout("opt/app/blob.bin")},
            {TE::Dir("opt/app/blob.bin")},
            {TE::File("opt/app/blob.bin/inner", "inside the directory that replaced blob.bin\n")},
            // The same over a directory.
            {TE::Whiteout("rd")},
            {TE::Dir("rd")},
            {TE::File("rd/new", "rd/new in layer 1\n")},
            // ... made opaque as well: the lower children are hidden for
            // podman too.
            {TE::Whiteout("ro")},
            {TE::Dir("ro")},
            {TE::OpaqueWhiteout("ro")},
            {TE::File("ro/new", "ro/new in layer 1\n")},
            // A whiteout, then a symlink of that name.
            {TE::Whiteout("rs")},
            {TE::Symlink("rs", "opt")},
        }},
       true,
       {{"opt/app/blob.bin", "dir"},
        {"opt/app/blob.bin/inner", "file"},
        {"opt/app/keep", "file"},
        {"rd/new", "file"},
        {"ro/new", "file"},
        {"ro/old", "absent"},
        {"rs", "symlink"}},
       // See the top of the file.
       {{"rd/old", "file"}},
       {{"rd/old", "absent"}}});
  // One type over another, no whiteouts: file over directory, directory
  // over file and over symlink, hard link, symlink, fifo and device over
  // files; metadata and xattrs replaced with the entry.
  cases.push_back(
      {"TypeReplacement",
       {{
            {TE::Dir("d1")},
            {TE::File("d1/f", "d1/f in layer 0\n")},
            {TE::Dir("d1/sub")},
            {TE::File("d1/sub/g", "d1/sub/g in layer 0\n")},
            {TE::File("f2", "f2 is a file in layer 0\n")},
            {TE::Symlink("s1", "x")},
            {TE::File("x", "x in layer 0\n")},
            {TE::File("h1", "h1 is a file in layer 0\n")},
            {TE::File("sy", "sy is a file in layer 0\n")},
            {TE::File("fi", "fi is a file in layer 0\n")},
            {TE::File("dv", "dv is a file in layer 0\n")},
            {WithXattrs(TE::File("xa", "xa with xattrs\n"), {{"user.a", "1"}, {"trusted.a", "2"}})},
            {WithXattrs(Owned(TE::Dir("xd", 0750), 1000, 1000),
                        {{"user.d", "1"}, {"trusted.d", "2"}})},
            {TE::File("xd/keep", "xd/keep\n")},
            {WithXattrs(TE::File("xk", "xk keeps its xattrs\n"),
                        {{"user.k", "1"}, {"trusted.k", "2"}})},
            {WithXattrs(TE::Dir("xe"), {{"user.old", "1"}, {"trusted.old", "2"}})},
            {TE::Dir("sw")},
            {TE::File("sw/lower", "sw/lower is a file in layer 0\n")},
            {TE::Dir("sd")},
            {TE::File("sd/child", "sd/child in layer 0\n")},
            {TE::Dir("hd")},
            {TE::File("hd/child", "hd/child in layer 0\n")},
            {TE::Dir("fd")},
            {TE::File("fd/child", "fd/child in layer 0\n")},
        },
        {
            {TE::File("d1", "d1 is a file in layer 1\n")},
            {TE::Dir("f2", 0710)},
            {TE::File("f2/child", "f2/child in layer 1\n")},
            {TE::Dir("s1")},
            {TE::File("s1/in", "s1/in\n")},
            {TE::File("hsrc", "hard link source in layer 1\n")},
            {TE::Hardlink("h1", "hsrc")},
            {TE::Symlink("sy", "hsrc")},
            {TE::Fifo("fi", 0600)},
            {TE::CharDev("dv", 1, 3, 0666)},
            {TE::File("xa", "xa without xattrs\n")},
            {TE::Dir("xd", 0755)},
            {WithXattrs(Owned(TE::Dir("xe", 0700), 5, 6),
                        {{"user.new", "3"}, {"trusted.new", "4"}})},
            {TE::Dir("sw")},
            {TE::Dir("sw/lower")},
            {TE::File("sw/lower/kid", "sw/lower/kid\n")},
            // A symlink, a hard link and a fifo over directories.
            {TE::Symlink("sd", "sw")},
            {TE::Hardlink("hd", "hsrc")},
            {TE::Fifo("fd")},
        },
        {
            // Layer 1's file d1 becomes an opaque directory.
            {TE::Dir("d1")},
            {TE::OpaqueWhiteout("d1")},
            {TE::File("d1/z", "d1/z in layer 2\n")},
        }},
       true,
       {{"d1", "dir"},
        {"d1/f", "absent"},
        {"d1/z", "file"},
        {"f2/child", "file"},
        {"s1/in", "file"},
        {"h1", "file"},
        {"sy", "symlink"},
        {"fi", "fifo"},
        {"dv", "chardev"},
        {"xa", "file"},
        {"xd/keep", "file"},
        {"sw/lower/kid", "file"},
        {"sd", "symlink"},
        {"hd", "file"},
        {"fd", "fifo"}},
       {},
       {},
       {{"xk", "user.k"}, {"xk", "trusted.k"}, {"xe", "user.new"}, {"xe", "trusted.new"}}});
  // Opaque directories with new content in the same layer, the marker
  // before and after that content (it hides only lower layers).
  cases.push_back({"OpaqueWithNewContent",
                   {{
                        {TE::Dir("d3")},
                        {TE::File("d3/a", "d3/a, hidden by the opaque d3\n")},
                        {TE::Dir("d3/sub")},
                        {TE::File("d3/sub/b", "d3/sub/b, hidden\n")},
                        {TE::Dir("d4")},
                        {TE::File("d4/a", "d4/a, hidden by the opaque d4\n")},
                    },
                    {
                        {TE::Dir("d3")},
                        {TE::OpaqueWhiteout("d3")},
                        {TE::File("d3/new", "d3/new after the opaque marker\n")},
                        {TE::Dir("d3/sub")},
                        {TE::File("d3/sub/c", "d3/sub/c\n")},
                        {TE::Dir("d4")},
                        {TE::File("d4/new", "d4/new before the opaque marker\n")},
                        {TE::OpaqueWhiteout("d4")},
                    }},
                   true,
                   {{"d3/a", "absent"},
                    {"d3/sub/b", "absent"},
                    {"d3/new", "file"},
                    {"d3/sub/c", "file"},
                    {"d4/a", "absent"},
                    {"d4/new", "file"}}});
  // The layer root made opaque, with new content beside the marker.
  cases.push_back({"OpaqueRoot",
                   {{
                        {TE::Dir("old")},
                        {TE::File("old/f", "old/f in layer 0\n")},
                        {TE::File("top", "top in layer 0\n")},
                    },
                    {
                        {TE::OpaqueWhiteout("")},
                        {TE::File("top", "top in layer 1\n")},
                        {TE::Dir("new")},
                    }},
                   true,
                   {{"top", "file"}, {"new", "dir"}},
                   // overlayfs does not take a layer's root as opaque.
                   {{"old/f", "file"}},
                   {{"old/f", "absent"}}});
  // Header-only types with a nonzero size field, each followed at once by
  // the next header.
  cases.push_back({"HeaderOnlyTypesWithASize",
                   {{
                        {TE::Dir("hdr")},
                        {TE::File("hdr/target", "hdr/target in layer 0\n")},
                    },
                    {
                        {TE::Dir("hdr")},
                        {TE::File("hdr/target2", "hdr/target2, hard-linked\n")},
                        {TE::Dir("hdr/dir"), 1000},
                        {TE::File("hdr/dir/after-dir", "the header after the sized directory\n")},
                        {TE::Symlink("hdr/sym", "target"), 5},
                        {TE::File("hdr/after-sym", "the header after the sized symlink\n")},
                        {TE::Hardlink("hdr/link", "hdr/target2"), 300},
                        {TE::File("hdr/after-link", "the header after the sized hard link\n")},
                        {TE::CharDev("hdr/chr", 1, 3, 0666), 700},
                        {TE::BlockDev("hdr/blk", 8, 0, 0660), 1},
                        {TE::Fifo("hdr/fifo", 0644), 513},
                        {TE::File("hdr/last", "the header after the sized fifo\n")},
                    }},
                   true,
                   {{"hdr/dir/after-dir", "file"},
                    {"hdr/after-sym", "file"},
                    {"hdr/after-link", "file"},
                    {"hdr/chr", "chardev"},
                    {"hdr/blk", "blockdev"},
                    {"hdr/last", "file"}}});
  // Across layers: a lower directory replaced by a file (with and without
  // a whiteout first), then by a directory again, whose lower children
  // stay hidden; `rm -rf gone`-style nested whiteouts.
  cases.push_back({"DirectoryToFileAndBack",
                   {{
                        {TE::Dir("l2")},
                        {TE::File("l2/child", "l2/child in layer 0\n")},
                        {TE::Dir("l2/sub")},
                        {TE::File("l2/sub/deep", "l2/sub/deep in layer 0\n")},
                        {TE::Dir("l2b")},
                        {TE::File("l2b/child", "l2b/child in layer 0\n")},
                        {TE::Dir("gone")},
                        {TE::File("gone/inner", "gone/inner in layer 0\n")},
                    },
                    {
                        {TE::File("l2", "l2 is a file in layer 1\n")},
                        {TE::Whiteout("l2b")},
                        {TE::File("l2b", "l2b is a file in layer 1\n")},
                        {TE::Whiteout("gone")},
                        {TE::Whiteout("gone/inner")},
                    },
                    {
                        {TE::Dir("l2")},
                        {TE::File("l2/new", "l2/new in layer 2\n")},
                        {TE::Dir("l2b")},
                        {TE::File("l2b/new", "l2b/new in layer 2\n")},
                    }},
                   true,
                   {{"l2/new", "file"},
                    {"l2/child", "absent"},
                    {"l2/sub", "absent"},
                    {"l2b/new", "file"},
                    {"l2b/child", "absent"},
                    {"gone", "absent"}}});
  // One path twice in one layer: file then file, directory then file, file
  // then directory, directory then directory, symlink then symlink; the
  // later entry wins. podman 4.3.1 refuses such layers (tar-split:
  // "duplicates of file paths not supported").
  cases.push_back({"SamePathTwiceInOneLayer",
                   {{
                        {TE::Dir("dup")},
                        {TE::File("dup/lower", "dup/lower in layer 0\n")},
                    },
                    {
                        {TE::Dir("dup")},
                        {TE::File("dup/ff", "dup/ff first\n")},
                        {TE::File("dup/ff", "dup/ff second, wins\n", 0600)},
                        {TE::Dir("dup/df")},
                        {TE::File("dup/df/kid", "dup/df/kid, goes with its directory\n")},
                        {TE::File("dup/df", "dup/df file after the directory\n")},
                        {TE::File("dup/fd", "dup/fd file before the directory\n")},
                        {TE::Dir("dup/fd", 0750)},
                        {TE::File("dup/fd/kid", "dup/fd/kid\n")},
                        {TE::Dir("dup/dd", 0700)},
                        {Owned(TE::Dir("dup/dd", 0755), 7, 8)},
                        {TE::Symlink("dup/ss", "first")},
                        {TE::Symlink("dup/ss", "second")},
                        {TE::File("dup/lower", "dup/lower once more\n")},
                        {TE::File("dup/lower", "dup/lower in layer 1, wins\n")},
                    }},
                   false,
                   {{"dup/ff", "file"},
                    {"dup/df", "file"},
                    {"dup/df/kid", "absent"},
                    {"dup/fd", "dir"},
                    {"dup/fd/kid", "file"},
                    {"dup/ss", "symlink"}}});
  // A whiteout after the path it names, in the same layer: the OCI rule
  // (a whiteout hides only lower layers) keeps the new entry. podman 4.3.1
  // refuses such layers ("processing tar file(file exists)": its overlay
  // whiteout is a mknod over the name the layer already made).
  cases.push_back({"WhiteoutAfterThePathInOneLayer",
                   {{
                        {TE::File("x", "x in layer 0\n")},
                        {TE::Dir("wd")},
                        {TE::File("wd/old", "wd/old in layer 0\n")},
                    },
                    {
                        {TE::File("x2", "x2 new in layer 1\n")},
                        {TE::Whiteout("x2")},
                        {TE::File("x", "x again in layer 1\n")},
                        {TE::Whiteout("x")},
                        {TE::Dir("wd")},
                        {TE::File("wd/new", "wd/new in layer 1\n")},
                        {TE::Whiteout("wd")},
                    }},
                   false,
                   // The lower wd is hidden, the layer's own wd stays.
                   {{"x", "file"}, {"x2", "file"}, {"wd/new", "file"}, {"wd/old", "absent"}}});
  return cases;
}

const Case& FindCase(const std::string& name) {
  static const std::vector<Case> cases = Cases();
  for (const Case& c : cases) {
    if (c.name == name) return c;
  }
  ADD_FAILURE() << "no case " << name;
  return cases.front();
}

ImageSpec CaseImage(const Case& c) {
  ImageSpec spec;
  for (const auto& layer : c.layers) {
    LayerSpec l;
    l.raw_tar = BuildConflictTar(layer);
    // umoci 0.4.7 cannot unpack zstd; gzip, as most published images.
    l.compression = Compression::kGzip;
    spec.layers.push_back(std::move(l));
  }
  return spec;
}

std::string TypeName(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "dir";
    case S_IFLNK:
      return "symlink";
    case S_IFCHR:
      return "chardev";
    case S_IFBLK:
      return "blockdev";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
  }
  return "type?";
}

std::string Describe(const PathState& s) {
  std::ostringstream o;
  o << TypeName(s.mode) << " mode=0" << std::oct << (s.mode & 07777) << std::dec
    << " owner=" << s.uid << ":" << s.gid;
  if (!S_ISDIR(s.mode)) o << " size=" << s.size;
  if (S_ISCHR(s.mode) || S_ISBLK(s.mode)) o << " dev=" << major(s.rdev) << ":" << minor(s.rdev);
  if (!s.link_target.empty()) o << " -> " << s.link_target;
  if (!s.content_sha256.empty()) o << " " << s.content_sha256.substr(0, 19);
  if (s.nlink > 1) o << " nlink=" << s.nlink << " linked-with=" << s.hardlink_group;
  for (const auto& [k, v] : s.xattrs) o << " xattr " << k << "=\"" << v << "\"";
  return o.str();
}

bool Same(const PathState& a, const PathState& b) {
  return a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.size == b.size &&
         a.rdev == b.rdev && a.nlink == b.nlink && a.link_target == b.link_target &&
         a.content_sha256 == b.content_sha256 && a.xattrs == b.xattrs &&
         a.hardlink_group == b.hardlink_group;
}

// Every path that differs, one block each:
//   'path'
//     podman: <state or absent>
//     regfs:  <state or absent>
// and a count; empty when the trees agree.
std::string DiffTrees(const std::string& oracle_name, const TreeSnapshot& oracle,
                      const TreeSnapshot& regfs) {
  std::map<std::string, std::pair<const PathState*, const PathState*>> all;
  for (const auto& [p, s] : oracle) all[p].first = &s;
  for (const auto& [p, s] : regfs) all[p].second = &s;
  std::ostringstream o;
  int n = 0;
  const std::string pad(oracle_name.size() > 5 ? oracle_name.size() - 5 : 0, ' ');
  for (const auto& [p, pair] : all) {
    const auto& [want, got] = pair;
    if (want && got && Same(*want, *got)) continue;
    ++n;
    o << "  '" << p << "'\n    " << oracle_name << ": " << (want ? Describe(*want) : "(absent)")
      << "\n    regfs: " << pad << (got ? Describe(*got) : "(absent)") << "\n";
  }
  if (n == 0) return "";
  return std::to_string(n) + " difference(s) between " + oracle_name + " and regfs:\n" + o.str();
}

SnapshotOptions CompareOptions() {
  SnapshotOptions so;
  so.dir_mtimes = false;
  // overlayfs's own xattrs never reach a container; SELinux labels are the
  // host's business.
  so.ignore_xattr_prefixes = {"security.selinux", "trusted.overlay.", "user.overlay."};
  return so;
}

TreeSnapshot Snapshot(const std::string& root) {
  TreeSnapshot t = SnapshotTree(root, CompareOptions());
  t.erase("");
  for (auto& [p, s] : t) s.mtime_ns = 0;  // see the top of the file
  return t;
}

// What `expect` (and `only`, the oracle's own) says the oracle made of the
// image.
void ExpectTheConflictsHappened(const Case& c,
                                const std::vector<std::pair<std::string, std::string>>& only,
                                const TreeSnapshot& t) {
  for (const auto& list : {c.expect, only}) {
    for (const auto& [path, type] : list) {
      auto it = t.find(path);
      EXPECT_EQ(it == t.end() ? "absent" : TypeName(it->second.mode), type) << path;
    }
  }
  for (const auto& [path, name] : c.expect_xattrs) {
    auto it = t.find(path);
    EXPECT_TRUE(it != t.end() && it->second.xattrs.count(name)) << path << " " << name;
  }
}

class ConflictsTest : public RegfsFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    SetUpRegfs("podman's overlay storage and umoci unpack keeping owners and devices");
    if (IsSkipped() || HasFatalFailure()) return;
    image_ = BuildImage(CaseImage(FindCase(GetParam())));
    ImagePusher pusher(*registry_);
    ASSERT_OK(pusher.PushImage("test/conflicts", "v1", image_));
    ref_ = registry_->Ref("test/conflicts", "v1");
  }

  void TearDown() override {
    // podman lets go of the store before the store is unmounted.
    envs_.clear();
    if (!store_.empty() && IsMountPoint(store_)) {
      CommandResult r = RunCommand({REGFS_BINARY, "umount", store_});
      EXPECT_EQ(r.exit_code, 0) << r.output;
    }
    RegfsFixture::TearDown();
  }

  std::string StoreLog() {
    std::string s;
    ReadWholeFile(dir_->Sub("store.log"), &s);
    return s;
  }

  // Pulls ref_ into `env`, creates a container and snapshots its mounted
  // rootfs (then unmounts it).
  void ContainerTree(PodmanEnv& env, bool through_store, TreeSnapshot* out) {
    CommandResult pull = env.Run("--log-level=debug pull --tls-verify=false " + ref_, 120);
    ASSERT_EQ(pull.exit_code, 0) << pull.output << StoreLog();
    if (through_store) {
      // Otherwise podman pulled normally and the comparison would show
      // nothing about the store.
      for (const BuiltLayer& l : image_.layers) {
        ASSERT_NE(pull.output.find("Skipping blob " + l.descriptor.digest + " (already present)"),
                  std::string::npos)
            << "layer " << l.descriptor.digest << " did not come from the store\n"
            << pull.output << StoreLog();
      }
    }
    CommandResult create = env.Run("create --runtime /usr/sbin/runc --network none " + ref_, 120);
    ASSERT_EQ(create.exit_code, 0) << create.output << StoreLog();
    std::string id = create.output.substr(0, create.output.find('\n'));
    CommandResult mount = env.Run("mount " + id, 120);
    ASSERT_EQ(mount.exit_code, 0) << mount.output << StoreLog();
    std::string merged = mount.output.substr(0, mount.output.find('\n'));
    *out = Snapshot(merged);
    CommandResult um = env.Run("umount " + id, 120);
    EXPECT_EQ(um.exit_code, 0) << um.output;
  }

  BuiltImage image_;
  std::string ref_;
  std::string store_;
  std::vector<std::unique_ptr<PodmanEnv>> envs_;
};

TEST_P(ConflictsTest, StoreContainerSeesWhatANormalPullShows) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  const Case& c = FindCase(GetParam());
  if (!c.podman_pulls) GTEST_SKIP() << "podman 4.3.1 refuses this image; umoci is the oracle";
  store_ = dir_->Sub("store");
  ASSERT_EQ(mkdir(store_.c_str(), 0755), 0);
  CommandResult s = RunCommand({REGFS_BINARY, "store", "--tls-verify=false", "--cache-dir", cache_,
                                "--log-file", dir_->Sub("store.log"), store_});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  envs_.push_back(std::make_unique<PodmanEnv>(dir_->Sub("plain"), ""));
  envs_.push_back(std::make_unique<PodmanEnv>(dir_->Sub("lazy"), store_));
  TreeSnapshot plain, lazy;
  ContainerTree(*envs_[0], false, &plain);
  if (HasFatalFailure()) return;
  ExpectTheConflictsHappened(c, c.expect_podman, plain);
  ContainerTree(*envs_[1], true, &lazy);
  if (HasFatalFailure()) return;
  std::string diff = DiffTrees("podman", plain, lazy);
  EXPECT_TRUE(diff.empty()) << diff << "store log:\n" << StoreLog();
}

TEST_P(ConflictsTest, MountRootfsEqualsUmociUnpack) {
  const Case& c = FindCase(GetParam());
  std::string layout = dir_->Sub("oci");
  CommandResult r = RunCommand({"skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                "docker://" + ref_, "oci:" + layout + ":v1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string bundle = dir_->Sub("bundle");
  r = RunCommand({"umoci", "unpack", "--image", layout + ":v1", bundle});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  TreeSnapshot want = Snapshot(bundle + "/rootfs");
  ExpectTheConflictsHappened(c, c.expect_umoci, want);

  r = Mount(ref_);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  TreeSnapshot got = Snapshot(mnt_ + "/rootfs");
  std::string diff = DiffTrees("umoci", want, got);
  EXPECT_TRUE(diff.empty()) << diff << "daemon log:\n" << DaemonLog();
  Umount();
}

std::vector<std::string> CaseNames() {
  std::vector<std::string> names;
  for (const Case& c : Cases()) names.push_back(c.name);
  return names;
}

std::string CaseName(const ::testing::TestParamInfo<std::string>& p) { return p.param; }

INSTANTIATE_TEST_SUITE_P(Conflicts, ConflictsTest, ::testing::ValuesIn(CaseNames()), CaseName);

}  // namespace
}  // namespace regfs
