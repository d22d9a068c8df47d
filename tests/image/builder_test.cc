// The test-image builder checked against oracles: GNU tar and bsdtar list
// what TarWriter wrote; zlib/zstd round trips; image JSON parses with the
// reader's own parsers and carries the right digests.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "reader/base/digest.h"
#include "reader/image/manifest.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"

namespace regfs::testing {
namespace {

std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::vector<TarEntry> AllForms() {
  std::vector<TarEntry> e;
  e.push_back(TarEntry::Dir("d", 0755));
  TarEntry f = TarEntry::File("d/f", "hello", 06755);
  f.uid = 1000;
  f.gid = 2000;
  f.uname = "u";
  f.gname = "g";
  f.mtime_nsec = 123456789;
  e.push_back(f);
  e.push_back(TarEntry::Symlink("d/s", "f"));
  e.push_back(TarEntry::Hardlink("d/h", "d/f"));
  e.push_back(TarEntry::CharDev("d/c", 1, 3));
  e.push_back(TarEntry::BlockDev("d/b", 8, 1));
  e.push_back(TarEntry::Fifo("d/p"));
  TarEntry x = TarEntry::File("d/x", "x");
  x.xattrs["user.k"] = "v";
  e.push_back(x);
  e.push_back(TarEntry::File("d/" + std::string(150, 'p'), "pax"));
  TarEntry g = TarEntry::File("d/" + std::string(150, 'g'), "gnu");
  g.long_names = LongNameStyle::kGnu;
  e.push_back(g);
  TarEntry u = TarEntry::File(std::string(80, 'a') + "/" + std::string(90, 'u'), "ustar");
  u.long_names = LongNameStyle::kUstarPrefix;
  e.push_back(u);
  e.push_back(TarEntry::Symlink("d/ls", std::string(200, 't')));
  TarEntry gl = TarEntry::Symlink("d/gl", std::string(200, 'k'));
  gl.long_names = LongNameStyle::kGnu;
  e.push_back(gl);
  TarEntry big = TarEntry::File("d/biguid", "b");
  big.uid = 3000000;
  big.gid = 4000000;
  e.push_back(big);
  e.push_back(TarEntry::Dir("t", 01777));
  e.push_back(TarEntry::Whiteout("d/gone"));
  e.push_back(TarEntry::OpaqueWhiteout("t"));
  return e;
}

class BuilderTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    std::string tmpl = std::filesystem::temp_directory_path().string() + "/regfs-builder-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    FdCheckedTest::TearDown();
  }
  std::string dir_;
};

TEST_F(BuilderTest, GnuTarListsEveryForm) {
  std::string tar = BuildTar(AllForms());
  EXPECT_EQ(tar.size() % 512, 0u);
  std::ofstream(dir_ + "/a.tar", std::ios::binary) << tar;
  auto [rc, out] = Shell("tar -tvf " + dir_ + "/a.tar --full-time --numeric-owner");
  ASSERT_EQ(rc, 0) << out;
  for (const std::string& want :
       std::vector<std::string>{"drwxr-xr-x 0/0 ",
                                "-rwsr-sr-x 1000/2000 ",
                                "22:13:20.123456789 d/f\n",
                                "d/s -> f\n",
                                "hrw-r--r-- ",
                                "d/h link to d/f\n",
                                "crw-rw-rw- 0/0 ",
                                "1,3 ",
                                "brw-rw---- ",
                                "8,1 ",
                                "prw-r--r-- ",
                                " d/" + std::string(150, 'p') + "\n",
                                " d/" + std::string(150, 'g') + "\n",
                                " " + std::string(80, 'a') + "/" + std::string(90, 'u') + "\n",
                                "d/ls -> " + std::string(200, 't') + "\n",
                                "d/gl -> " + std::string(200, 'k') + "\n",
                                "3000000/4000000 ",
                                "drwxrwxrwt 0/0 ",
                                " d/.wh.gone\n",
                                " t/.wh..wh..opq\n"}) {
    EXPECT_NE(out.find(want), std::string::npos) << "missing '" << want << "' in\n" << out;
  }
  auto [brc, bout] = Shell("bsdtar -tvf " + dir_ + "/a.tar");
  ASSERT_EQ(brc, 0) << bout;
  EXPECT_NE(bout.find("d/" + std::string(150, 'g')), std::string::npos) << bout;
  // Extraction by GNU tar (no devices: unprivileged) reproduces contents.
  std::filesystem::create_directories(dir_ + "/x");
  auto [xrc, xout] = Shell("tar -xf " + dir_ + "/a.tar -C " + dir_ +
                           "/x --exclude=d/c --exclude=d/b --no-same-owner");
  ASSERT_EQ(xrc, 0) << xout;
  std::ifstream in(dir_ + "/x/d/" + std::string(150, 'g'));
  std::string body((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(body, "gnu");
  EXPECT_EQ(std::filesystem::read_symlink(dir_ + "/x/d/s"), "f");
  EXPECT_TRUE(std::filesystem::is_fifo(dir_ + "/x/d/p"));
  EXPECT_EQ(std::filesystem::hard_link_count(dir_ + "/x/d/f"), 2u);
}

TEST_F(BuilderTest, CompressionsRoundTrip) {
  std::string data;
  for (int i = 0; i < 20000; ++i) data += "line " + std::to_string(i) + "\n";
  EXPECT_EQ(GunzipForTest(GzipCompress(data)), data);
  EXPECT_EQ(UnzstdForTest(ZstdCompress(data)), data);
  std::string multi = ZstdCompress(data, 4096);
  EXPECT_EQ(UnzstdForTest(multi), data);
  // Several frames: the zstd magic appears once per frame.
  size_t frames = 0;
  for (size_t pos = 0; (pos = multi.find("\x28\xb5\x2f\xfd", pos)) != std::string::npos; ++pos) {
    ++frames;
  }
  EXPECT_GE(frames, data.size() / 4096);
  // The system tools agree.
  std::ofstream(dir_ + "/d.zst", std::ios::binary) << multi;
  std::ofstream(dir_ + "/d.gz", std::ios::binary) << GzipCompress(data);
  auto [zrc, zout] = Shell("zstd -dc " + dir_ + "/d.zst | sha256sum");
  ASSERT_EQ(zrc, 0);
  EXPECT_EQ(zout.substr(0, 64), Sha256Digest(data).substr(7));
  auto [grc, gout] = Shell("gzip -dc " + dir_ + "/d.gz | sha256sum");
  ASSERT_EQ(grc, 0);
  EXPECT_EQ(gout.substr(0, 64), Sha256Digest(data).substr(7));
}

TEST_F(BuilderTest, ImageAndIndexJsonAreConsistent) {
  ImageSpec spec;
  LayerSpec l1{SampleEntries("one"), Compression::kGzip};
  LayerSpec l2{SampleEntries("two"), Compression::kZstd, 2048};
  LayerSpec l3{{TarEntry::File("plain", "p")}, Compression::kNone};
  spec.layers = {l1, l2, l3};
  for (ManifestFormat format : {ManifestFormat::kOci, ManifestFormat::kDocker}) {
    spec.format = format;
    BuiltImage img = BuildImage(spec);
    auto m = ParseManifest(img.manifest, img.manifest_descriptor.media_type);
    ASSERT_OK(m);
    ASSERT_EQ(m->layers.size(), 3u);
    EXPECT_EQ(m->config.digest, Sha256Digest(img.config));
    EXPECT_EQ(img.manifest_descriptor.digest, Sha256Digest(img.manifest));
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(m->layers[i].digest, Sha256Digest(img.layers[i].blob));
      EXPECT_EQ(m->layers[i].size, img.layers[i].blob.size());
    }
    EXPECT_EQ(CompressionOfMediaType(m->layers[0].media_type), LayerCompression::kGzip);
    EXPECT_EQ(CompressionOfMediaType(m->layers[1].media_type), LayerCompression::kZstd);
    EXPECT_EQ(CompressionOfMediaType(m->layers[2].media_type), LayerCompression::kNone);
    auto c = ParseConfig(img.config);
    ASSERT_OK(c);
    EXPECT_EQ(c->diff_ids[1], Sha256Digest(UnzstdForTest(img.layers[1].blob)));
    EXPECT_EQ(c->diff_ids[0], Sha256Digest(GunzipForTest(img.layers[0].blob)));
    EXPECT_EQ(c->diff_ids[2], Sha256Digest(img.layers[2].blob));
  }
  IndexSpec is;
  is.format = ManifestFormat::kDocker;
  is.add_unknown_media_type_entry = true;
  ImageSpec arm = spec;
  arm.platform = {"linux", "arm", "v7"};
  is.images = {spec, arm};
  BuiltIndex idx = BuildIndex(is);
  auto parsed = ParseIndex(idx.body, idx.descriptor.media_type);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->media_type, kMediaTypeDockerManifestList);
  ASSERT_EQ(parsed->manifests.size(), 3u);
  EXPECT_EQ(idx.images[0].manifest_descriptor.media_type, kMediaTypeDockerManifest);
  auto pick = SelectPlatform(*parsed, {"linux", "amd64", ""});
  ASSERT_OK(pick);
  EXPECT_EQ(pick->media_type, kMediaTypeDockerManifest);
  EXPECT_EQ(pick->digest, idx.images[0].manifest_descriptor.digest);
}

TEST(DeterministicBytesTest, PureFunctionOfSeedAndOffset) {
  std::vector<uint8_t> whole(10000), part(777);
  FillDeterministic(7, 0, whole);
  FillDeterministic(7, 1234, part);
  EXPECT_EQ(0, std::memcmp(whole.data() + 1234, part.data(), part.size()));
  std::vector<uint8_t> other(10000);
  FillDeterministic(8, 0, other);
  EXPECT_NE(whole, other);
  std::string s(reinterpret_cast<char*>(whole.data()), whole.size());
  EXPECT_EQ(DeterministicDigest(7, whole.size()), Sha256Digest(s));
}

}  // namespace
}  // namespace regfs::testing
