#include <gtest/gtest.h>

#include <map>
#include <random>
#include <thread>

#include "reader/layer/codec.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_index.h"
#include "reader/layer/layer_reader.h"
#include "tests/layer/layer_test_util.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::Gzip;
using testing::GzipMembers;
using testing::MemBlobSource;
using testing::MixedBytes;
using testing::TarHdr;
using testing::TarWriter;
using testing::Zstd;

enum class Form { kPlain, kGzip, kGzipMembers, kZstd, kZstdFrames };
const char* FormName(Form f) {
  switch (f) {
    case Form::kPlain: return "plain";
    case Form::kGzip: return "gzip";
    case Form::kGzipMembers: return "gzip_members";
    case Form::kZstd: return "zstd";
    case Form::kZstdFrames: return "zstd_frames";
  }
  return "?";
}

std::string Compress(Form f, const std::string& tar) {
  switch (f) {
    case Form::kPlain: return tar;
    case Form::kGzip: return Gzip(tar);
    case Form::kGzipMembers: return GzipMembers(tar, 300000);
    case Form::kZstd: return Zstd(tar);
    case Form::kZstdFrames: return Zstd(tar, 200000);
  }
  return tar;
}

LayerCompression CompressionOf(Form f) {
  switch (f) {
    case Form::kPlain: return LayerCompression::kNone;
    case Form::kGzip:
    case Form::kGzipMembers: return LayerCompression::kGzip;
    default: return LayerCompression::kZstd;
  }
}

struct Content {
  std::string tar;
  std::map<std::string, std::string> files;  // expected content by path
};

// A tar with files large enough to span many checkpoints / frames.
Content MakeContent() {
  Content c;
  TarWriter w;
  TarHdr d;
  d.name = "./";
  d.type = '5';
  d.mode = 0755;
  w.Header(d);
  for (int i = 0; i < 6; ++i) {
    std::string name = "dir/file" + std::to_string(i);
    std::string data = MixedBytes(static_cast<size_t>(50000 + i * 300000), static_cast<uint32_t>(i));
    w.File(name, data);
    c.files[name] = data;
  }
  w.File("dup", "first version");
  TarHdr l;
  l.name = "link-to-file1";
  l.type = '1';
  l.linkname = "dir/file1";
  w.Header(l);
  w.File("dup", "second version wins");
  c.files["dup"] = "second version wins";
  c.files["link-to-file1"] = c.files["dir/file1"];
  w.File("empty", "");
  c.files["empty"] = "";
  w.End();
  c.tar = std::move(w.str());
  return c;
}

class LayerIndexTest : public regfs::testing::FdCheckedTest,
                       public ::testing::WithParamInterface<std::tuple<Form, InflateEngine>> {};

TEST_P(LayerIndexTest, BuildReadAndRoundTrip) {
  const auto [form, engine] = GetParam();
  static const Content content = MakeContent();
  MemBlobSource src(Compress(form, content.tar));
  BlobDescriptor desc = src.Descriptor();
  IndexBuildOptions opts;
  opts.checkpoint_interval = 64 << 10;
  opts.read_size = 100000;  // pieces that split headers and deflate blocks
  uint64_t last_done = 0, calls = 0;
  opts.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GE(done, last_done);
    EXPECT_EQ(total, desc.size);
    last_done = done;
    ++calls;
  };
  auto built = BuildLayerIndex(&src, desc, CompressionOf(form), opts);
  ASSERT_OK(built);
  EXPECT_EQ(last_done, desc.size);
  EXPECT_GT(calls, 0u);
  const LayerIndex& x = *built;
  EXPECT_EQ(x.uncompressed_size, content.tar.size());
  EXPECT_TRUE(x.tar_end_marker);
  if (form == Form::kGzip || form == Form::kGzipMembers) {
    EXPECT_GT(x.checkpoints.size(), 10u) << FormName(form);
  }
  if (form == Form::kZstdFrames) {
    EXPECT_GT(x.zstd_frames.size(), 3u);
    EXPECT_FALSE(x.NeedsSequentialDecompression());
  }
  if (form == Form::kZstd) {
    EXPECT_TRUE(x.NeedsSequentialDecompression());
  }

  // "dup" appears once (the later), the root is "", the hard link resolved.
  std::map<std::string, const TarEntry*> by_path;
  for (const TarEntry& e : x.entries) {
    EXPECT_TRUE(by_path.emplace(e.path, &e).second) << "duplicate " << e.path;
  }
  ASSERT_TRUE(by_path.count(""));
  EXPECT_EQ(by_path[""]->type, EntryType::kDirectory);
  ASSERT_TRUE(by_path.count("link-to-file1"));
  EXPECT_EQ(by_path["link-to-file1"]->link_target, "dir/file1");

  // Round trip through the serialised form.
  std::string ser = x.Serialize();
  auto back = LayerIndex::Deserialize(ser);
  ASSERT_OK(back);
  EXPECT_TRUE(*back == x);

  LayerReaderOptions ro;
  ro.engine = engine;
  ro.input_chunk = 65536;
  LayerReader reader(&src, desc, std::make_shared<LayerIndex>(std::move(back).value()), ro);
  for (const auto& [path, want] : content.files) {
    ASSERT_TRUE(by_path.count(path)) << path;
    const TarEntry& e = *by_path[path];
    ASSERT_EQ(e.size, want.size()) << path;
    std::string got(want.size(), '\0');
    // Sequential 128 KiB reads, as FUSE sends them.
    for (size_t off = 0; off < got.size(); off += 131072) {
      auto n = reader.Read(e, off, std::span(reinterpret_cast<uint8_t*>(got.data()) + off,
                                             std::min<size_t>(131072, got.size() - off)));
      ASSERT_OK(n);
    }
    EXPECT_TRUE(got == want) << path << " in " << FormName(form);
  }
  // Random reads, including across entry boundaries of the raw stream.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 60; ++i) {
    uint64_t off = rng() % content.tar.size();
    size_t len = 1 + rng() % 70000;
    std::string got(len, '\0');
    auto n = reader.ReadAt(off, std::span(reinterpret_cast<uint8_t*>(got.data()), len));
    ASSERT_OK(n);
    ASSERT_EQ(*n, std::min<uint64_t>(len, content.tar.size() - off));
    got.resize(*n);
    ASSERT_TRUE(got == content.tar.substr(off, *n)) << "offset " << off << " len " << len;
  }
  if (form != Form::kPlain) {
    EXPECT_GT(reader.stats().decoders_reused, 0u);
  }
  auto past = reader.ReadAt(content.tar.size() + 10, std::span<uint8_t>());
  ASSERT_OK(past);
  EXPECT_EQ(*past, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Forms, LayerIndexTest,
    ::testing::Combine(::testing::Values(Form::kPlain, Form::kGzip, Form::kGzipMembers, Form::kZstd,
                                         Form::kZstdFrames),
                       ::testing::Values(InflateEngine::kZlib, InflateEngine::kIsal)),
    [](const ::testing::TestParamInfo<std::tuple<Form, InflateEngine>>& p) {
      return std::string(FormName(std::get<0>(p.param))) +
             (std::get<1>(p.param) == InflateEngine::kZlib ? "_zlib" : "_isal");
    });

class LayerBadInputTest : public regfs::testing::FdCheckedTest {};

Status BuildStatus(const std::string& blob, LayerCompression c) {
  MemBlobSource src(blob);
  return BuildLayerIndex(&src, src.Descriptor(), c).status();
}

TEST_F(LayerBadInputTest, TruncatedCompressedStreams) {
  const std::string tar = MakeContent().tar;
  std::string gz = Gzip(tar);
  Status st = BuildStatus(gz.substr(0, gz.size() / 2), LayerCompression::kGzip);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  st = BuildStatus(gz.substr(0, gz.size() - 4), LayerCompression::kGzip);  // CRC/length cut
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  std::string zs = Zstd(tar);
  st = BuildStatus(zs.substr(0, zs.size() / 2), LayerCompression::kZstd);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  std::string zf = Zstd(tar, 200000);
  st = BuildStatus(zf.substr(0, zf.size() - 3), LayerCompression::kZstd);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  st = BuildStatus(tar.substr(0, tar.size() / 2), LayerCompression::kNone);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  st = BuildStatus("not gzip at all", LayerCompression::kGzip);
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
}

TEST_F(LayerBadInputTest, DigestMismatchGivesNoIndex) {
  std::string gz = Gzip(MakeContent().tar);
  MemBlobSource src(gz);
  BlobDescriptor d = src.Descriptor();
  d.digest = Sha256Digest("something else");
  auto r = BuildLayerIndex(&src, d, LayerCompression::kGzip);
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("digest mismatch"), std::string::npos);
}

TEST_F(LayerBadInputTest, BadChecksumAbsurdSizeAndPolicy) {
  TarWriter w;
  w.File("ok", "fine");
  TarHdr h;
  h.name = "bad";
  h.corrupt_checksum = true;
  w.Header(h);
  w.End();
  EXPECT_EQ(BuildStatus(Gzip(w.str()), LayerCompression::kGzip).code(), Code::kCorrupt);

  TarWriter a;
  TarHdr big;
  big.name = "absurd";
  big.size = 077777777777;  // 8 GiB claimed, a few bytes present
  a.Header(big);
  a.Data("tiny");
  a.End();
  EXPECT_EQ(BuildStatus(Gzip(a.str()), LayerCompression::kGzip).code(), Code::kCorrupt);

  TarWriter p;
  p.File("../../etc/passwd", "evil");
  p.File("/etc/abs", "abs");
  TarHdr l;
  l.name = "hl";
  l.type = '1';
  l.linkname = "missing";
  p.Header(l);
  l.name = "hl2";
  l.linkname = "../up";
  p.Header(l);
  p.File("keep", "kept");
  p.End();
  MemBlobSource src(Zstd(p.str()));
  auto r = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kUnknown);
  ASSERT_OK(r);
  EXPECT_EQ(r->compression, LayerCompression::kZstd);
  ASSERT_EQ(r->entries.size(), 2u);
  EXPECT_EQ(r->entries[0].path, "etc/abs");
  EXPECT_EQ(r->entries[1].path, "keep");
  EXPECT_EQ(r->skipped_entries, 3u);
}

// As extraction: replacing a file keeps its old inode alive in its hard links.
TEST_F(LayerBadInputTest, DuplicateOfHardLinkTarget) {
  TarWriter w;
  w.File("a", "AAA", 0600);
  for (const char* name : {"l1", "l2"}) {
    TarHdr l;
    l.name = name;
    l.type = '1';
    l.linkname = "a";
    w.Header(l);
  }
  w.File("a", "BBBB", 0644);
  w.End();
  MemBlobSource src(w.str());
  auto r = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kNone);
  ASSERT_OK(r);
  std::map<std::string, TarEntry> by;
  for (const TarEntry& e : r->entries) by[e.path] = e;
  ASSERT_EQ(by.size(), 3u);
  EXPECT_EQ(by["a"].type, EntryType::kRegular);
  EXPECT_EQ(by["a"].size, 4u);
  EXPECT_EQ(by["l1"].type, EntryType::kRegular);
  EXPECT_EQ(by["l1"].mode, 0600u);
  EXPECT_EQ(by["l1"].size, 3u);
  EXPECT_EQ(src.data().substr(by["l1"].data_offset, 3), "AAA");
  EXPECT_EQ(by["l2"].type, EntryType::kHardLink);
  EXPECT_EQ(by["l2"].link_target, "l1");
  EXPECT_EQ(by["l2"].data_offset, by["l1"].data_offset);
}

TEST_F(LayerBadInputTest, IndexOfAnotherBlobIsRefused) {
  TarWriter w;
  w.File("f", "content");
  w.End();
  MemBlobSource a(Gzip(w.str()));
  MemBlobSource b(Gzip(w.str(), 1));
  auto r = BuildLayerIndex(&a, a.Descriptor(), LayerCompression::kGzip);
  ASSERT_OK(r);
  LayerReader reader(&b, b.Descriptor(), std::make_shared<LayerIndex>(std::move(r).value()));
  uint8_t buf[4];
  EXPECT_EQ(reader.ReadAt(0, buf).status().code(), Code::kInvalidArgument);
}

TEST_F(LayerBadInputTest, DeserializeGarbageIsCorrupt) {
  TarWriter w;
  w.File("a", "1");
  w.Pax({{"SCHILY.xattr.user.x", std::string("\0\1", 2)}});
  w.File("b", "22");
  w.End();
  MemBlobSource src(Gzip(w.str()));
  auto r = BuildLayerIndex(&src, src.Descriptor(), LayerCompression::kGzip);
  ASSERT_OK(r);
  const std::string ser = r->Serialize();
  for (size_t i = 0; i < ser.size(); ++i) {
    std::string bad = ser;
    bad[i] ^= 0x5a;
    EXPECT_EQ(LayerIndex::Deserialize(bad).status().code(), Code::kCorrupt) << i;
    EXPECT_EQ(LayerIndex::Deserialize(ser.substr(0, i)).status().code(), Code::kCorrupt) << i;
  }
  EXPECT_EQ(LayerIndex::Deserialize(ser + "x").status().code(), Code::kCorrupt);
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string junk(rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    EXPECT_FALSE(LayerIndex::Deserialize(junk).ok());
  }
}

// A 24 MiB file read at many random offsets, from several threads.
class LayerLargeFileTest : public regfs::testing::FdCheckedTest,
                           public ::testing::WithParamInterface<Form> {};

TEST_P(LayerLargeFileTest, RandomReadsMatchOriginal) {
  const std::string big = MixedBytes(24 << 20, 99);
  TarWriter w;
  w.File("small", "s");
  w.File("big.bin", big);
  w.End();
  MemBlobSource src(Compress(GetParam(), w.str()));
  IndexBuildOptions opts;
  opts.checkpoint_interval = 1 << 20;
  auto built = BuildLayerIndex(&src, src.Descriptor(), CompressionOf(GetParam()), opts);
  ASSERT_OK(built);
  auto index = std::make_shared<LayerIndex>(std::move(built).value());
  const TarEntry* e = nullptr;
  for (const TarEntry& x : index->entries) {
    if (x.path == "big.bin") e = &x;
  }
  ASSERT_NE(e, nullptr);
  ASSERT_EQ(e->size, big.size());
  LayerReader reader(&src, src.Descriptor(), index);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t) + 1);
      std::string buf;
      for (int i = 0; i < 40; ++i) {
        uint64_t off = rng() % (big.size() + 1000);
        size_t len = 1 + rng() % 200000;
        buf.assign(len, '\0');
        auto n = reader.Read(*e, off, std::span(reinterpret_cast<uint8_t*>(buf.data()), len));
        const size_t want = off >= big.size() ? 0 : std::min<size_t>(len, big.size() - off);
        if (!n.ok() || *n != want || buf.compare(0, want, big, off, want) != 0) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Forms, LayerLargeFileTest,
                         ::testing::Values(Form::kPlain, Form::kGzip, Form::kZstdFrames),
                         [](const ::testing::TestParamInfo<Form>& p) {
                           return std::string(FormName(p.param));
                         });

}  // namespace
}  // namespace regfs
