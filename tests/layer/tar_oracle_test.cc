// Oracle tests: archives made by bsdtar and GNU tar from a real tree holding
// every entry type, in plain / gzip / zstd (one frame and many). The index
// and the bytes read through LayerReader must equal what `bsdtar -x` extracts
// from the same archive: paths, types, modes, owners, sizes, mtimes (ns),
// link targets, hard links, device numbers, xattrs and content hashes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "reader/base/digest.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_reader.h"
#include "tests/layer/layer_test_util.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

namespace fs = std::filesystem;
using testing::MemBlobSource;

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const fs::path& p, std::string_view data) {
  std::ofstream f(p, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

int Shell(const std::string& cmd) { return std::system((cmd + " 2>/dev/null").c_str()); }

std::map<std::string, std::string> Xattrs(const fs::path& p) {
  std::map<std::string, std::string> out;
  char names[8192];
  ssize_t n = llistxattr(p.c_str(), names, sizeof names);
  for (ssize_t i = 0; i < n;) {
    std::string name(names + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    char val[8192];
    ssize_t v = lgetxattr(p.c_str(), name.c_str(), val, sizeof val);
    if (v >= 0) out[name] = std::string(val, static_cast<size_t>(v));
  }
  return out;
}

class TarOracleTest : public regfs::testing::FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    char tmpl[] = "/tmp/regfs-layer-oracle-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    if (Shell("command -v bsdtar >/dev/null && command -v zstd >/dev/null && command -v gzip "
            ">/dev/null") != 0) {
      GTEST_SKIP() << "bsdtar, zstd or gzip is missing";
    }
    MakeTree(dir_ / "src");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    FdCheckedTest::TearDown();
  }

  void MakeTree(const fs::path& s) {
    fs::create_directories(s / "dir/sub");
    WriteFile(s / "file.txt", "hello world\n");
    WriteFile(s / "big.bin", testing::MixedBytes(3 << 20, 5));
    WriteFile(s / "empty", "");
    WriteFile(s / "setuid", "#!/bin/sh\n");
    chmod((s / "setuid").c_str(), 04755);
    WriteFile(s / "setgid", "x");
    chmod((s / "setgid").c_str(), 02750);
    fs::create_directories(s / "sticky");
    chmod((s / "sticky").c_str(), 01777);
    const fs::path deep = s / std::string(100, 'd') / std::string(100, 'e');
    fs::create_directories(deep);
    WriteFile(deep / (std::string(110, 'f') + ".txt"), "deep file");
    fs::create_symlink("file.txt", s / "symlink");
    fs::create_symlink(std::string(150, 't'), s / "longlink");
    fs::create_hard_link(s / "file.txt", s / "dir/hardlink");
    ASSERT_EQ(mkfifo((s / "fifo").c_str(), 0640), 0);
    ASSERT_EQ(mknod((s / "chardev").c_str(), S_IFCHR | 0600, makedev(1, 3)), 0);
    ASSERT_EQ(mknod((s / "blockdev").c_str(), S_IFBLK | 0660, makedev(7, 0)), 0);
    ASSERT_EQ(setxattr((s / "file.txt").c_str(), "user.comment", "hi there", 8, 0), 0);
    const std::string bin("\x00\x01\xff\n=\x00z", 7);
    ASSERT_EQ(setxattr((s / "dir").c_str(), "user.bin", bin.data(), bin.size(), 0), 0);
    // A version-2 file capability: cap_net_bind_service, effective.
    const uint8_t cap[20] = {0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    has_capability_ = setxattr((s / "setuid").c_str(), "security.capability", cap, sizeof cap, 0) == 0;
    ASSERT_EQ(chown((s / "file.txt").c_str(), 1234, 5678), 0);
    ASSERT_EQ(lchown((s / "symlink").c_str(), 42, 43), 0);
    const timespec ts[2] = {{1600000000, 111111111}, {1650000000, 123456789}};
    ASSERT_EQ(utimensat(AT_FDCWD, (s / "file.txt").c_str(), ts, 0), 0);
    ASSERT_EQ(utimensat(AT_FDCWD, (s / "symlink").c_str(), ts, AT_SYMLINK_NOFOLLOW), 0);
    ASSERT_EQ(utimensat(AT_FDCWD, (s / "dir/sub").c_str(), ts, 0), 0);
  }

  // Builds the index of `blob`, extracts `tar` with bsdtar, compares in full.
  void CompareWithExtraction(const std::string& tar_path, const std::string& blob,
                             const std::string& label, bool expect_xattrs) {
    SCOPED_TRACE(label);
    MemBlobSource src(blob);
    IndexBuildOptions opts;
    opts.checkpoint_interval = 256 << 10;
    auto built = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kUnknown, opts);
    ASSERT_OK(built);
    auto index = std::make_shared<LayerIndex>(std::move(built).value());
    EXPECT_EQ(index->skipped_entries, 0u);
    LayerReader reader(&src, src.Descriptor(), index);

    const fs::path out = dir_ / ("x-" + label);
    fs::create_directories(out);
    ASSERT_EQ(Shell("bsdtar -x --xattrs --numeric-owner -p -f " + tar_path + " -C " + out.string()),
              0);

    std::map<std::string, const TarEntry*> by_path;
    for (const TarEntry& e : index->entries) by_path[e.path] = &e;
    std::set<std::string> seen;
    for (auto it = fs::recursive_directory_iterator(out); it != fs::recursive_directory_iterator();
         ++it) {
      const std::string rel = it->path().lexically_relative(out).string();
      SCOPED_TRACE(rel);
      seen.insert(rel);
      ASSERT_TRUE(by_path.count(rel)) << "extracted but not indexed";
      const TarEntry* e = by_path[rel];
      const TarEntry* meta = e;  // hard links share the target's inode
      struct stat st;
      ASSERT_EQ(lstat(it->path().c_str(), &st), 0);
      if (e->type == EntryType::kHardLink) {
        ASSERT_TRUE(by_path.count(e->link_target));
        meta = by_path[e->link_target];
        struct stat tst;
        ASSERT_EQ(lstat((out / e->link_target).c_str(), &tst), 0);
        EXPECT_EQ(st.st_ino, tst.st_ino) << "hard link not to " << e->link_target;
      }
      EntryType want_type;
      switch (st.st_mode & S_IFMT) {
        case S_IFREG: want_type = EntryType::kRegular; break;
        case S_IFDIR: want_type = EntryType::kDirectory; break;
        case S_IFLNK: want_type = EntryType::kSymlink; break;
        case S_IFCHR: want_type = EntryType::kCharDevice; break;
        case S_IFBLK: want_type = EntryType::kBlockDevice; break;
        case S_IFIFO: want_type = EntryType::kFifo; break;
        default: FAIL() << "odd file type";
      }
      EXPECT_EQ(meta->type, want_type);
      if (meta->type != EntryType::kSymlink) {
        EXPECT_EQ(meta->mode, st.st_mode & 07777);
      }
      EXPECT_EQ(meta->uid, st.st_uid);
      EXPECT_EQ(meta->gid, st.st_gid);
      if (meta->type != EntryType::kDirectory) {
        EXPECT_EQ(meta->mtime_sec, st.st_mtim.tv_sec);
        EXPECT_EQ(meta->mtime_nsec, static_cast<uint32_t>(st.st_mtim.tv_nsec));
      }
      std::map<std::string, std::string> want_x(meta->xattrs.begin(), meta->xattrs.end());
      EXPECT_EQ(want_x, Xattrs(it->path()));
      if (want_type == EntryType::kRegular) {
        ASSERT_EQ(e->size, static_cast<uint64_t>(st.st_size));
        std::string got(e->size, '\0');
        auto n = reader.Read(*e, 0, std::span(reinterpret_cast<uint8_t*>(got.data()), got.size()));
        ASSERT_OK(n);
        EXPECT_EQ(Sha256Digest(got), Sha256Digest(ReadFile(it->path())));
      } else if (want_type == EntryType::kSymlink) {
        EXPECT_EQ(e->link_target, fs::read_symlink(it->path()).string());
      } else if (want_type == EntryType::kCharDevice || want_type == EntryType::kBlockDevice) {
        EXPECT_EQ(e->dev_major, major(st.st_rdev));
        EXPECT_EQ(e->dev_minor, minor(st.st_rdev));
      }
    }
    for (const auto& [path, e] : by_path) {
      if (!path.empty()) {
        EXPECT_TRUE(seen.count(path)) << path << " indexed but not extracted";
      }
    }
    EXPECT_EQ(seen.size(), 17u);  // every entry of MakeTree
    // The comparison is not vacuous: the capability and binary xattrs and the
    // nanosecond mtime made it through (for formats that carry them).
    if (expect_xattrs) {
      ASSERT_TRUE(by_path.count("setuid") && by_path.count("dir"));
      std::map<std::string, std::string> cap(by_path["setuid"]->xattrs.begin(),
                                             by_path["setuid"]->xattrs.end());
      EXPECT_EQ(cap.count("security.capability"), 1u);
      EXPECT_EQ(by_path["dir"]->xattrs.size(), 1u);
      EXPECT_EQ(by_path["file.txt"]->mtime_nsec, 123456789u);
    }
  }

  // Every compression of one archive.
  void CheckArchive(const std::string& create_cmd, const std::string& name, bool expect_xattrs) {
    const std::string tar = (dir_ / (name + ".tar")).string();
    ASSERT_EQ(Shell(create_cmd + " -f " + tar + " -C " + (dir_ / "src").string() + " ."), 0);
    const std::string raw = ReadFile(tar);
    ASSERT_GT(raw.size(), 3u << 20);
    ASSERT_EQ(Shell("gzip -n -k -f " + tar), 0);
    ASSERT_EQ(Shell("zstd -q -f " + tar + " -o " + tar + ".zst"), 0);
    CompareWithExtraction(tar, raw, name + "-plain", expect_xattrs);
    CompareWithExtraction(tar, ReadFile(tar + ".gz"), name + "-gzip", expect_xattrs);
    CompareWithExtraction(tar, ReadFile(tar + ".zst"), name + "-zstd", expect_xattrs);
    CompareWithExtraction(tar, testing::Zstd(raw, 512 << 10), name + "-zstd-frames", expect_xattrs);
  }

  fs::path dir_;
  bool has_capability_ = false;
};

TEST_F(TarOracleTest, BsdtarPaxWithXattrs) {
  ASSERT_TRUE(has_capability_) << "could not set security.capability on the source tree";
  CheckArchive("bsdtar --format=pax --xattrs -c", "bsdtar-pax", true);
}

TEST_F(TarOracleTest, GnuTarPosixWithXattrs) {
  CheckArchive("tar --format=posix --xattrs --xattrs-include='*' -c", "gnutar-posix", true);
}

TEST_F(TarOracleTest, GnuTarGnuFormatLongNames) {
  CheckArchive("tar --format=gnu -c", "gnutar-gnu", false);
}

TEST_F(TarOracleTest, SparseEntriesAreRefusedOthersServed) {
  const fs::path s = dir_ / "sparse";
  fs::create_directories(s);
  WriteFile(s / "plain", "plain file");
  {
    std::ofstream f(s / "holes", std::ios::binary);
    f.seekp(1 << 20);
    f << "end";
  }
  for (const char* format : {"gnu", "posix"}) {
    SCOPED_TRACE(format);
    const std::string tar = (dir_ / (std::string(format) + "-sparse.tar")).string();
    ASSERT_EQ(Shell(std::string("tar --sparse --format=") + format + " -cf " + tar + " -C " +
                  s.string() + " ."),
              0);
    MemBlobSource src(ReadFile(tar));
    auto built = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kNone);
    ASSERT_OK(built);
    std::set<std::string> paths;
    for (const TarEntry& e : built->entries) paths.insert(e.path);
    EXPECT_TRUE(paths.count("plain"));
    EXPECT_FALSE(paths.count("holes"));
    EXPECT_EQ(built->skipped_entries, 1u);
  }
}

}  // namespace
}  // namespace regfs
