#include "reader/layer/tar_header.h"

#include <gtest/gtest.h>

#include <cstring>

#include "reader/layer/tar_reader.h"
#include "tests/layer/layer_test_util.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::TarHdr;
using testing::TarWriter;

std::span<const uint8_t, kTarBlockSize> Block(const std::string& s, size_t off = 0) {
  return std::span<const uint8_t, kTarBlockSize>(
      reinterpret_cast<const uint8_t*>(s.data()) + off, kTarBlockSize);
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(TarNumberTest, OctalForms) {
  EXPECT_EQ(*ParseTarNumber(Bytes(std::string_view("0000644\0", 8))), 0644);
  EXPECT_EQ(*ParseTarNumber(Bytes("   644 ")), 0644);
  EXPECT_EQ(*ParseTarNumber(Bytes(std::string_view("\0\0\0\0", 4))), 0);
  EXPECT_EQ(*ParseTarNumber(Bytes("77777777777")), 077777777777);
  EXPECT_EQ(ParseTarNumber(Bytes("12x4")).status().code(), Code::kCorrupt);
  EXPECT_EQ(ParseTarNumber(Bytes("8")).status().code(), Code::kCorrupt);
}

TEST(TarNumberTest, Base256LargeAndNegative) {
  // 9 GiB: beyond the 8 GiB an 11-digit octal size can hold.
  const uint64_t nine_gib = uint64_t{9} << 30;
  std::string f(12, '\0');
  f[0] = static_cast<char>(0x80);
  for (int i = 0; i < 8; ++i) f[11 - i] = static_cast<char>((nine_gib >> (8 * i)) & 0xff);
  EXPECT_EQ(*ParseTarNumber(Bytes(f)), static_cast<int64_t>(nine_gib));
  std::string neg(12, static_cast<char>(0xff));  // -1
  EXPECT_EQ(*ParseTarNumber(Bytes(neg)), -1);
  std::string big(12, static_cast<char>(0x7f));  // positive, far beyond int64
  big[0] = static_cast<char>(0x80 | 0x3f);
  EXPECT_EQ(ParseTarNumber(Bytes(big)).status().code(), Code::kCorrupt);
}

TEST(TarHeaderTest, UstarWithPrefixAndSignedChecksum) {
  TarWriter w;
  TarHdr h;
  h.name = "file\xe9";  // a high byte: signed and unsigned sums differ
  h.prefix = "some/dir";
  h.mode = 04755;
  h.uid = 1234;
  h.gid = 5678;
  h.size = 3;
  h.signed_checksum = true;
  w.Header(h);
  ASSERT_OK(ParseTarHeader(Block(w.str())));
  auto r = ParseTarHeader(Block(w.str()));
  EXPECT_EQ(r->name, "some/dir/file\xe9");
  EXPECT_EQ(r->mode, 04755u);
  EXPECT_EQ(r->uid, 1234u);
  EXPECT_EQ(r->gid, 5678u);
  EXPECT_EQ(r->size, 3u);
  EXPECT_TRUE(r->is_ustar);
}

TEST(TarHeaderTest, BadChecksumIsCorrupt) {
  TarWriter w;
  TarHdr h;
  h.name = "x";
  h.corrupt_checksum = true;
  w.Header(h);
  auto r = ParseTarHeader(Block(w.str()));
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("checksum"), std::string::npos);
}

TEST(TarHeaderTest, AbsurdSizeIsCorrupt) {
  TarWriter w;
  TarHdr h;
  h.name = "x";
  h.size = uint64_t{1} << 63;
  h.base256_size = true;
  w.Header(h);
  EXPECT_EQ(ParseTarHeader(Block(w.str())).status().code(), Code::kCorrupt);
}

TEST(PaxTest, RecordsAndBinaryValues) {
  std::string bin("\x01\x00\x00\x02\n=\xff", 7);
  std::string d = TarWriter::PaxRecord("path", "a/b") +
                  TarWriter::PaxRecord("SCHILY.xattr.security.capability", bin);
  auto r = ParsePaxRecords(d);
  ASSERT_OK(r);
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[1].first, "SCHILY.xattr.security.capability");
  EXPECT_EQ((*r)[1].second, bin);
  EXPECT_EQ(ParsePaxRecords("5 a=b").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParsePaxRecords("99 a=b\n").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParsePaxRecords("6 =bc\n").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParsePaxRecords("x a=b\n").status().code(), Code::kCorrupt);
}

TEST(PaxTest, Times) {
  EXPECT_EQ(*ParsePaxTime("1700000000.123456789"), std::make_pair(int64_t{1700000000}, 123456789u));
  EXPECT_EQ(*ParsePaxTime("12.5"), std::make_pair(int64_t{12}, 500000000u));
  EXPECT_EQ(*ParsePaxTime("-1.25"), std::make_pair(int64_t{-2}, 750000000u));
  EXPECT_EQ(*ParsePaxTime("7"), std::make_pair(int64_t{7}, 0u));
  EXPECT_EQ(ParsePaxTime("1.2x").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParsePaxTime("").status().code(), Code::kCorrupt);
}

TEST(CleanPathTest, Forms) {
  EXPECT_EQ(*CleanTarPath("./a//b/"), "a/b");
  EXPECT_EQ(*CleanTarPath("/etc/passwd"), "etc/passwd");
  EXPECT_EQ(*CleanTarPath("./"), "");
  EXPECT_EQ(*CleanTarPath("a/./b"), "a/b");
  EXPECT_FALSE(CleanTarPath("../etc"));
  EXPECT_FALSE(CleanTarPath("a/../../b"));
  EXPECT_EQ(*CleanTarPath("a/..b"), "a/..b");
}

// A TarStream over a string.
class StringStream : public TarStream {
 public:
  explicit StringStream(std::string s) : s_(std::move(s)) {}
  Result<size_t> Read(std::span<uint8_t> out) override {
    size_t n = std::min(out.size(), s_.size() - pos_);
    std::memcpy(out.data(), s_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  Result<uint64_t> Skip(uint64_t n) override {
    uint64_t k = std::min<uint64_t>(n, s_.size() - pos_);
    pos_ += k;
    return k;
  }
  uint64_t Position() const override { return pos_; }

 private:
  std::string s_;
  size_t pos_ = 0;
};

std::vector<TarEntry> ReadAll(std::string tar, Status* status = nullptr,
                              TarReaderStats* stats = nullptr) {
  StringStream ss(std::move(tar));
  TarReader r(&ss);
  std::vector<TarEntry> out;
  TarEntry e;
  for (;;) {
    auto more = r.Next(&e);
    if (!more.ok()) {
      if (status) *status = more.status();
      break;
    }
    if (!*more) break;
    out.push_back(e);
  }
  if (stats) *stats = r.stats();
  return out;
}

TEST(TarReaderTest, PaxOverridesGnuLongNamesAndTypes) {
  TarWriter w;
  w.Pax({{"comment", "global"}, {"uname", "globaluser"}}, 'g');
  const std::string long_name(180, 'n');
  const std::string long_link(150, 'l');
  w.Pax({{"path", "pax/" + long_name},
         {"mtime", "1600000000.5"},
         {"uid", "4000000000"},
         {"size", "5"},
         {"SCHILY.xattr.user.k", "v"}});
  TarHdr h;
  h.name = "short";
  h.size = 5;
  w.Header(h);
  w.Data("hello");
  w.GnuLong('L', "gnu/" + long_name);
  w.GnuLong('K', long_link);
  h = TarHdr();
  h.name = "trunc";
  h.type = '2';
  h.linkname = "trunc";
  h.gnu_magic = true;
  w.Header(h);
  for (char t : {'3', '4', '5', '6', '7'}) {
    h = TarHdr();
    h.name = std::string("t") + t;
    h.type = t;
    h.devmajor = 8;
    h.devminor = 1;
    w.Header(h);
  }
  h = TarHdr();
  h.name = "v7dir/";
  h.type = '\0';
  w.Header(h);
  w.End();
  Status st;
  TarReaderStats stats;
  auto es = ReadAll(w.str(), &st, &stats);
  ASSERT_OK(st);
  ASSERT_EQ(es.size(), 8u);
  EXPECT_EQ(es[0].path, "pax/" + long_name);
  EXPECT_EQ(es[0].mtime_sec, 1600000000);
  EXPECT_EQ(es[0].mtime_nsec, 500000000u);
  EXPECT_EQ(es[0].uid, 4000000000u);
  // Global records change no entry, as in Go's archive/tar (podman's view).
  EXPECT_EQ(es[0].uname, "root");
  EXPECT_EQ(es[0].size, 5u);
  EXPECT_EQ(es[0].data_offset, 5 * 512u);  // g hdr+data, x hdr+data, header
  ASSERT_EQ(es[0].xattrs.size(), 1u);
  EXPECT_EQ(es[0].xattrs[0], std::make_pair(std::string("user.k"), std::string("v")));
  EXPECT_EQ(es[1].path, "gnu/" + long_name);
  EXPECT_EQ(es[1].type, EntryType::kSymlink);
  EXPECT_EQ(es[1].link_target, long_link);
  EXPECT_TRUE(es[1].xattrs.empty());  // local PAX records do not leak
  EXPECT_EQ(es[2].type, EntryType::kCharDevice);
  EXPECT_EQ(es[2].dev_major, 8u);
  EXPECT_EQ(es[3].type, EntryType::kBlockDevice);
  EXPECT_EQ(es[4].type, EntryType::kDirectory);
  EXPECT_EQ(es[5].type, EntryType::kFifo);
  EXPECT_EQ(es[6].type, EntryType::kRegular);  // contiguous
  EXPECT_EQ(es[7].type, EntryType::kDirectory);
  EXPECT_EQ(es[7].path, "v7dir");
  EXPECT_TRUE(stats.saw_end_marker);
}

TEST(TarReaderTest, GlobalPaxKeptWithinItsCap) {
  TarWriter w;
  w.Pax({{"comment", std::string(30 << 10, 'a')}}, 'g');
  w.Pax({{"comment", std::string(30 << 10, 'b')}}, 'g');
  w.Pax({{"comment", std::string(30 << 10, 'c')}}, 'g');  // over 64 KiB in all
  w.File("f", "x");
  w.End();
  StringStream ss(w.str());
  TarReader r(&ss);
  TarEntry e;
  auto more = r.Next(&e);
  ASSERT_OK(more);
  ASSERT_TRUE(*more);
  EXPECT_EQ(e.path, "f");
  ASSERT_EQ(r.global_pax().size(), 2u);
  EXPECT_EQ(r.global_pax()[1].second[0], 'b');
  EXPECT_EQ(r.stats().ignored_global_pax, 1u);
  EXPECT_EQ(r.stats().skipped, 1u);
}

TEST(TarReaderTest, Base256SizeAndSignedChecksumEntries) {
  TarWriter w;
  TarHdr h;
  h.name = "b256";
  h.size = 1000;
  h.base256_size = true;
  h.signed_checksum = true;
  h.uname = "\xc3\xa9t\xc3\xa9";  // high bytes make the signed sum differ
  w.Header(h);
  w.Data(std::string(1000, 'q'));
  w.File("next", "n");
  w.End();
  Status st;
  auto es = ReadAll(w.str(), &st);
  ASSERT_OK(st);
  ASSERT_EQ(es.size(), 2u);
  EXPECT_EQ(es[0].size, 1000u);
  EXPECT_EQ(es[0].data_offset, 512u);
  EXPECT_EQ(es[1].path, "next");
  EXPECT_EQ(es[1].data_offset, 512u + 1024u + 512u);
}

TEST(TarReaderTest, PolicySkipsAndFatalErrors) {
  TarWriter w;
  w.File("../escape", "x");
  w.File("/abs/path", "abc");
  TarHdr h;
  h.name = "weird";
  h.type = 'Z';
  h.size = 700;
  w.Header(h);
  w.Data(std::string(700, 'z'));
  h = TarHdr();
  h.name = "sparse";
  h.type = 'S';
  h.size = 10;
  h.gnu_magic = true;
  w.Header(h);
  w.Data(std::string(10, 's'));
  w.Pax({{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}});
  w.File("paxsparse", "0123");
  w.File("after", "ok");
  w.End();
  Status st;
  TarReaderStats stats;
  auto es = ReadAll(w.str(), &st, &stats);
  ASSERT_OK(st);
  ASSERT_EQ(es.size(), 2u);
  EXPECT_EQ(es[0].path, "abs/path");
  EXPECT_EQ(es[1].path, "after");
  EXPECT_EQ(stats.skipped, 4u);
  EXPECT_EQ(stats.skipped_sparse, 2u);

  TarWriter bad;
  bad.File("a", "1");
  TarHdr b;
  b.name = "b";
  b.corrupt_checksum = true;
  bad.Header(b);
  bad.End();
  ReadAll(bad.str(), &st);
  EXPECT_EQ(st.code(), Code::kCorrupt);

  TarWriter cut;
  cut.File("big", std::string(5000, 'b'));
  std::string t = cut.str().substr(0, 2048);
  st = Status::Ok();
  ReadAll(t, &st);
  EXPECT_EQ(st.code(), Code::kCorrupt);

  TarWriter huge;
  TarHdr hh;
  hh.name = "huge";
  hh.type = 'x';
  hh.size = uint64_t{1} << 40;  // PAX block far above the cap: never allocated
  hh.base256_size = true;
  huge.Header(hh);
  st = Status::Ok();
  ReadAll(huge.str(), &st);
  EXPECT_EQ(st.code(), Code::kCorrupt);
}

}  // namespace
}  // namespace regfs
