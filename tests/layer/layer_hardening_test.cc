// Hostile layers (issues 14 and 15): header-only entry types, global and
// per-entry PAX bounds, names beyond Linux's limits, the entry cap, the
// DiffID check, decompression bombs and cancellation inside the pass.
#include <gtest/gtest.h>
#include <zstd.h>

#include <map>
#include <string>

#include "reader/base/digest.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_index.h"
#include "tests/layer/layer_test_util.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::Gzip;
using testing::MemBlobSource;
using testing::TarHdr;
using testing::TarWriter;
using testing::Zstd;

class LayerHardeningTest : public regfs::testing::FdCheckedTest {};

Result<LayerIndex> Build(const std::string& blob, LayerCompression c,
                         const IndexBuildOptions& opts = {}) {
  MemBlobSource src(blob);
  return BuildLayerIndex(&src, src.Descriptor(), c, opts);
}

std::map<std::string, TarEntry> ByPath(const LayerIndex& x) {
  std::map<std::string, TarEntry> m;
  for (const TarEntry& e : x.entries) m[e.path] = e;
  return m;
}

// A header block that parses as the entry `name` (an empty regular file).
std::string HeaderBlock(const std::string& name) {
  TarWriter w;
  TarHdr h;
  h.name = name;
  w.Header(h);
  return w.str();
}

// Go's archive/tar (containers/storage, podman) gives the types 1-6 no data
// whatever their size field says, so the block after such a header is the
// next header. The old reader skipped `size` bytes and lost these entries.
TEST_F(LayerHardeningTest, HeaderOnlyTypesCarryNoData) {
  TarWriter w;
  w.File("target", "T");
  for (char t : {'1', '2', '3', '4', '5', '6'}) {
    TarHdr h;
    h.name = std::string("e") + t;
    h.type = t;
    h.size = 512;
    if (t == '1' || t == '2') h.linkname = "target";
    w.Header(h);
    w.str() += HeaderBlock(std::string("hidden") + t);
  }
  // A v7 '\0' entry whose name ends in '/' is a directory (header-only too).
  TarHdr v7;
  v7.name = "v7dir/";
  v7.type = '\0';
  v7.size = 512;
  w.Header(v7);
  w.str() += HeaderBlock("hidden_v7");
  w.File("after", "A");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  auto by = ByPath(*r);
  for (const char* p : {"hidden1", "hidden2", "hidden3", "hidden4", "hidden5", "hidden6",
                        "hidden_v7", "after"}) {
    EXPECT_TRUE(by.count(p)) << p;
  }
  EXPECT_EQ(by["e5"].type, EntryType::kDirectory);
  EXPECT_EQ(by["e5"].size, 0u);
  EXPECT_EQ(by["e2"].type, EntryType::kSymlink);
  EXPECT_EQ(by["e2"].size, 0u);
  EXPECT_EQ(by["e1"].size, 1u);  // a hard link shares its target's data
  EXPECT_EQ(by["v7dir"].type, EntryType::kDirectory);
  EXPECT_EQ(r->skipped_entries, 0u);
  ASSERT_TRUE(by.count("after"));
  EXPECT_EQ(w.str().substr(by["after"].data_offset, 1), "A");
}

TEST_F(LayerHardeningTest, HeaderOnlyTypeWithAbsurdSizeInTinyLayer) {
  TarWriter w;
  TarHdr h;
  h.name = "dir";
  h.type = '5';
  h.size = 077777777777;  // 8 GiB claimed, nothing follows but the next header
  w.Header(h);
  w.File("next", "n");
  w.End();
  auto r = Build(Gzip(w.str()), LayerCompression::kGzip);
  ASSERT_OK(r);
  ASSERT_EQ(r->entries.size(), 2u);
  EXPECT_EQ(r->entries[1].path, "next");
}

// Go's archive/tar does not carry global PAX records over to later entries
// and containers/storage ignores 'g' headers, so they change no entry; and a
// large one is not even kept (it used to be copied into every entry).
TEST_F(LayerHardeningTest, GlobalPaxChangesNoEntryAndIsBounded) {
  TarWriter w;
  w.Pax({{"SCHILY.xattr.user.big", std::string(1 << 20, 'g')}}, 'g');
  for (int i = 0; i < 60; ++i) w.File("f" + std::to_string(i), "x");
  w.End();
  auto r = Build(Gzip(w.str()), LayerCompression::kGzip);
  ASSERT_OK(r);
  ASSERT_EQ(r->entries.size(), 60u);
  for (const TarEntry& e : r->entries) EXPECT_TRUE(e.xattrs.empty()) << e.path;
  EXPECT_EQ(r->skipped_entries, 1u);  // the oversized global header, logged

  TarWriter s;
  s.Pax({{"uname", "globaluser"}, {"uid", "777"}, {"SCHILY.xattr.user.g", "v"}}, 'g');
  s.File("f", "x");
  s.End();
  auto small = Build(s.str(), LayerCompression::kNone);
  ASSERT_OK(small);
  ASSERT_EQ(small->entries.size(), 1u);
  EXPECT_EQ(small->entries[0].uname, "root");
  EXPECT_EQ(small->entries[0].uid, 0u);
  EXPECT_TRUE(small->entries[0].xattrs.empty());
  EXPECT_EQ(small->skipped_entries, 0u);

  // Global headers kept in total stay under 64 KiB: the second is ignored.
  TarWriter two;
  two.Pax({{"comment", std::string(40 << 10, 'a')}}, 'g');
  two.Pax({{"comment", std::string(40 << 10, 'b')}}, 'g');
  two.File("f", "x");
  two.End();
  auto t = Build(two.str(), LayerCompression::kNone);
  ASSERT_OK(t);
  EXPECT_EQ(t->entries.size(), 1u);
  EXPECT_EQ(t->skipped_entries, 1u);
}

// Linux: xattr names up to 255 bytes, values up to 64 KiB; we keep at most
// 128 per entry and 64 KiB of names + values in total.
TEST_F(LayerHardeningTest, XattrsPerEntryBounded) {
  TarWriter w;
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 200; ++i) many.emplace_back("SCHILY.xattr.user.k" + std::to_string(i), "v");
  w.Pax(many);
  w.File("many", "x");
  w.Pax({{"SCHILY.xattr.user." + std::string(300, 'n'), "v"},
         {"SCHILY.xattr.user.ok", "fine"},
         {"SCHILY.xattr.user.huge", std::string(70 << 10, 'h')}});
  w.File("odd", "x");
  w.Pax({{"SCHILY.xattr.user.a", std::string(30 << 10, 'a')},
         {"SCHILY.xattr.user.b", std::string(30 << 10, 'b')},
         {"SCHILY.xattr.user.c", std::string(30 << 10, 'c')}});
  w.File("total", "x");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  auto by = ByPath(*r);
  ASSERT_EQ(by.size(), 3u);
  EXPECT_EQ(by["many"].xattrs.size(), 128u);
  ASSERT_EQ(by["odd"].xattrs.size(), 1u);
  EXPECT_EQ(by["odd"].xattrs[0].first, "user.ok");
  EXPECT_EQ(by["total"].xattrs.size(), 2u);
  EXPECT_EQ(r->skipped_entries, 0u);  // entries stay; only the xattrs go
}

// A per-entry PAX block (or a run of them) above 1 MiB is not read into
// memory: the entry it describes is skipped, the layer is not failed.
TEST_F(LayerHardeningTest, OversizedPaxHeaderSkipsItsEntry) {
  TarWriter w;
  w.Pax({{"comment", std::string(2 << 20, 'c')}});
  w.File("described", "x");
  for (int i = 0; i < 12; ++i) w.Pax({{"comment", std::string(100 << 10, 'r')}});
  w.File("described_by_a_run", "x");
  w.File("kept", "k");
  w.End();
  auto r = Build(Gzip(w.str()), LayerCompression::kGzip);
  ASSERT_OK(r);
  ASSERT_EQ(r->entries.size(), 1u);
  EXPECT_EQ(r->entries[0].path, "kept");
  EXPECT_EQ(r->skipped_entries, 2u);
}

TEST_F(LayerHardeningTest, OversizedGnuLongNameSkipsItsEntry) {
  TarWriter w;
  w.GnuLong('L', std::string(100 << 10, 'n'));
  w.File("short", "x");
  w.GnuLong('K', std::string(100 << 10, 'l'));
  TarHdr s;
  s.name = "sym";
  s.type = '2';
  s.linkname = "t";
  w.Header(s);
  w.File("kept", "k");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  ASSERT_EQ(r->entries.size(), 1u);
  EXPECT_EQ(r->entries[0].path, "kept");
  EXPECT_EQ(r->skipped_entries, 2u);

  // 8 GiB claimed for a long name in a tiny layer: never allocated; the
  // data is simply missing.
  TarWriter a;
  TarHdr h;
  h.name = "././@LongLink";
  h.type = 'L';
  h.size = 077777777777;
  h.gnu_magic = true;
  a.Header(h);
  a.Data("name");
  a.End();
  auto bad = Build(a.str(), LayerCompression::kNone);
  EXPECT_EQ(bad.status().code(), Code::kCorrupt) << bad.status().ToString();
}

// What a Linux unpack would fail: the entry is skipped and counted, the
// layer is kept.
TEST_F(LayerHardeningTest, NamesBeyondLinuxLimitsAreSkipped) {
  const std::string c255(255, 'a'), c256(256, 'b');
  std::string p4096, p4097;
  while (p4096.size() < 4096) p4096 += (p4096.empty() ? "" : "/") + std::string(99, 'p');
  p4096.resize(4096);
  p4097 = p4096 + "q";
  TarWriter w;
  w.Pax({{"path", "d/" + c255}});
  w.File("x1", "1");
  w.Pax({{"path", "d/" + c256 + "/f"}});
  w.File("x2", "2");
  w.Pax({{"path", p4096}});
  w.File("x3", "3");
  w.Pax({{"path", p4097}});
  w.File("x4", "4");
  w.Pax({{"path", std::string("nul\0inside", 10)}});
  w.File("x5", "5");
  w.Pax({{"path", "a/../../escape"}});
  w.File("x6", "6");
  TarHdr l;
  l.name = "hl";
  l.type = '1';
  w.Pax({{"linkpath", "d/" + c256}});
  w.Header(l);
  w.File("kept", "k");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  auto by = ByPath(*r);
  EXPECT_TRUE(by.count("d/" + c255));
  EXPECT_TRUE(by.count(p4096));
  EXPECT_TRUE(by.count("kept"));
  EXPECT_EQ(by.size(), 3u);
  EXPECT_EQ(r->skipped_entries, 5u);
}

// Extraction of "x; y => x; x => y": x is unlinked and linked again to y's
// inode, so y holds the data and x links to y (never to itself).
TEST_F(LayerHardeningTest, PathReplacedByALinkToItsOwnLink) {
  TarWriter w;
  w.File("x", "XX");
  TarHdr l;
  l.name = "y";
  l.type = '1';
  l.linkname = "x";
  w.Header(l);
  l.name = "x";
  l.linkname = "y";
  w.Header(l);
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  auto by = ByPath(*r);
  ASSERT_EQ(by.size(), 2u);
  EXPECT_EQ(by["y"].type, EntryType::kRegular);
  EXPECT_EQ(by["y"].size, 2u);
  EXPECT_EQ(w.str().substr(by["y"].data_offset, 2), "XX");
  EXPECT_EQ(by["x"].type, EntryType::kHardLink);
  EXPECT_EQ(by["x"].link_target, "y");
  EXPECT_EQ(by["x"].data_offset, by["y"].data_offset);
}

// Many links to one file whose holders are replaced one after another:
// each replacement passes the inode to the next link (work linear in the
// entries; the old code rewrote every remaining link each time).
TEST_F(LayerHardeningTest, ChainOfReplacedLinkHolders) {
  constexpr int kLinks = 2000;
  TarWriter w;
  w.File("a", "data");
  for (int i = 0; i < kLinks; ++i) {
    TarHdr l;
    l.name = "l" + std::to_string(i);
    l.type = '1';
    l.linkname = "a";
    w.Header(l);
  }
  w.File("a", "new a");
  for (int i = 0; i < kLinks - 1; ++i) w.File("l" + std::to_string(i), "replaced");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  auto by = ByPath(*r);
  ASSERT_EQ(by.size(), static_cast<size_t>(kLinks) + 1);
  const TarEntry& last = by["l" + std::to_string(kLinks - 1)];
  EXPECT_EQ(last.type, EntryType::kRegular);  // the old "a"'s inode ends here
  EXPECT_EQ(w.str().substr(last.data_offset, last.size), "data");
  EXPECT_EQ(by["l0"].size, 8u);
  for (const TarEntry& e : r->entries) EXPECT_NE(e.type, EntryType::kHardLink) << e.path;
}

TEST_F(LayerHardeningTest, EntryLimit) {
  EXPECT_EQ(IndexBuildOptions{}.max_entries, 4'000'000u);
  TarWriter w;
  for (int i = 0; i < 11; ++i) w.File("f" + std::to_string(i), "x");
  w.End();
  IndexBuildOptions opts;
  opts.max_entries = 11;
  ASSERT_OK(Build(w.str(), LayerCompression::kNone, opts));
  opts.max_entries = 10;
  auto r = Build(w.str(), LayerCompression::kNone, opts);
  EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().ToString();
  EXPECT_NE(r.status().message().find("more than 10 entries"), std::string::npos)
      << r.status().ToString();
}

class DiffIdTest : public regfs::testing::FdCheckedTest,
                   public ::testing::WithParamInterface<LayerCompression> {};

TEST_P(DiffIdTest, CheckedAgainstTheUncompressedStream) {
  TarWriter w;
  w.File("a", std::string(300000, 'a'));
  w.File("b", "bee");
  w.End();
  // Writers pad to a 10 KiB record: bytes after the end marker count too.
  std::string tar = w.str() + std::string(10240 - w.str().size() % 10240, '\0');
  const LayerCompression c = GetParam();
  std::string blob = c == LayerCompression::kGzip   ? Gzip(tar)
                     : c == LayerCompression::kZstd ? Zstd(tar, 100000)
                                                    : tar;
  const std::string want = Sha256Digest(tar);
  IndexBuildOptions opts;
  opts.expected_diff_id = want;
  auto r = Build(blob, c, opts);
  ASSERT_OK(r);
  EXPECT_EQ(r->diff_id, want);
  EXPECT_EQ(r->uncompressed_size, tar.size());
  auto back = LayerIndex::Deserialize(r->Serialize());
  ASSERT_OK(back);
  EXPECT_EQ(back->diff_id, want);

  opts.expected_diff_id = Sha256Digest(tar + "x");
  auto bad = Build(blob, c, opts);
  EXPECT_EQ(bad.status().code(), Code::kCorrupt) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("does not match its DiffID"), std::string::npos)
      << bad.status().ToString();

  // Not asked: nothing checked, and the index does not claim a DiffID it
  // did not verify (except that an uncompressed layer's is its digest).
  auto plain = Build(blob, c);
  ASSERT_OK(plain);
  EXPECT_EQ(plain->diff_id, c == LayerCompression::kNone ? want : "");
}

INSTANTIATE_TEST_SUITE_P(Forms, DiffIdTest,
                         ::testing::Values(LayerCompression::kNone, LayerCompression::kGzip,
                                           LayerCompression::kZstd),
                         [](const ::testing::TestParamInfo<LayerCompression>& p) {
                           return p.param == LayerCompression::kNone   ? std::string("plain")
                                  : p.param == LayerCompression::kGzip ? std::string("gzip")
                                                                       : std::string("zstd");
                         });

// A zstd frame of one tar entry with `zeros` bytes of data, compressed as a
// stream so the test never holds the uncompressed bytes.
std::string ZstdZerosLayer(uint64_t zeros) {
  TarWriter w;
  TarHdr h;
  h.name = "zeros";
  h.size = zeros;
  w.Header(h);
  std::string head = w.str();
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 19);
  std::string out;
  std::string chunk(1 << 20, '\0');
  std::string obuf(ZSTD_CStreamOutSize(), '\0');
  auto feed = [&](std::string_view in, ZSTD_EndDirective end) {
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    for (;;) {
      ZSTD_outBuffer ob{obuf.data(), obuf.size(), 0};
      size_t left = ZSTD_compressStream2(cctx, &ob, &ib, end);
      out.append(obuf.data(), ob.pos);
      if (end == ZSTD_e_end ? left == 0 : ib.pos == ib.size) break;
    }
  };
  feed(head, ZSTD_e_continue);
  for (uint64_t done = 0; done < zeros; done += chunk.size()) {
    feed(std::string_view(chunk).substr(0, std::min<uint64_t>(chunk.size(), zeros - done)),
         ZSTD_e_continue);
  }
  feed(std::string(1024 + (512 - zeros % 512) % 512, '\0'), ZSTD_e_end);
  ZSTD_freeCCtx(cctx);
  return out;
}

TEST_F(LayerHardeningTest, DecompressionBombBounded) {
  EXPECT_EQ(IndexBuildOptions{}.max_uncompressed_bytes, uint64_t{1} << 40);
  EXPECT_EQ(IndexBuildOptions{}.max_uncompressed_ratio, 0u);
  const std::string bomb = ZstdZerosLayer(64 << 20);
  ASSERT_LT(bomb.size(), 64u << 10);
  auto ok = Build(bomb, LayerCompression::kZstd);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->uncompressed_size, (64u << 20) + 1536u);

  IndexBuildOptions opts;
  opts.max_uncompressed_bytes = 16 << 20;
  auto r = Build(bomb, LayerCompression::kZstd, opts);
  EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().ToString();
  EXPECT_NE(r.status().message().find("uncompressed"), std::string::npos) << r.status().ToString();

  IndexBuildOptions ratio;
  ratio.max_uncompressed_ratio = 100;
  r = Build(bomb, LayerCompression::kZstd, ratio);
  EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().ToString();
  ratio.max_uncompressed_ratio = 1000000;
  ASSERT_OK(Build(bomb, LayerCompression::kZstd, ratio));
}

// The hook is consulted inside one piece of the blob (every 1 MiB of
// output), not only between reads: here the whole blob is one read.
TEST_F(LayerHardeningTest, CancellationInsideThePass) {
  const std::string bomb = ZstdZerosLayer(64 << 20);
  MemBlobSource src(bomb);
  IndexBuildOptions opts;
  opts.read_size = 16 << 20;  // the whole blob in one piece
  int calls = 0;
  opts.cancelled = [&calls] { return ++calls >= 3; };
  auto r = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kZstd, opts);
  EXPECT_EQ(r.status().code(), Code::kTransient) << r.status().ToString();
  EXPECT_NE(r.status().message().find("cancelled"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(src.reads(), 1u);

  // Many small entries: checked as often (each entry is output).
  TarWriter w;
  for (int i = 0; i < 20000; ++i) w.File("f" + std::to_string(i), "");
  w.End();
  MemBlobSource many(Gzip(w.str()));
  calls = 0;
  opts.cancelled = [&calls] { return ++calls >= 2; };
  r = BuildLayerIndex(&many, many.Descriptor(), LayerCompression::kGzip, opts);
  EXPECT_EQ(r.status().code(), Code::kTransient) << r.status().ToString();
  EXPECT_EQ(calls, 2);
}

// Indexes stored by the previous format (which trusted header-only sizes and
// applied global PAX records) must be rebuilt, not read.
TEST_F(LayerHardeningTest, PreviousFormatVersionIsRefused) {
  EXPECT_GE(LayerIndex::kFormatVersion, 2u);
  TarWriter w;
  w.File("a", "1");
  w.End();
  auto r = Build(w.str(), LayerCompression::kNone);
  ASSERT_OK(r);
  std::string ser = r->Serialize();
  ser[8] = 1;  // version, little-endian u32
  ser[9] = ser[10] = ser[11] = 0;
  // Recompute the trailing CRC so only the version is wrong.
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(ser.data()), ser.size() - 4);
  for (int i = 0; i < 4; ++i) ser[ser.size() - 4 + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
  auto back = LayerIndex::Deserialize(ser);
  EXPECT_EQ(back.status().code(), Code::kCorrupt) << back.status().ToString();
  EXPECT_NE(back.status().message().find("format version 1"), std::string::npos);
}

}  // namespace
}  // namespace regfs
