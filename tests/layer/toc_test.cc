// TOC layers (reader/layer/toc.h): eStargz, legacy stargz, zstd:chunked of
// both containers/storage generations and stargz-snapshotter's, written by
// tests/support/toc_builder from the format descriptions. Each layer's
// TOC-built index is compared with the full-pass index of the same tar
// (entries) and each file read through TocReader with the tar's content.
#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>

#include "reader/base/digest.h"
#include "reader/image/manifest.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_index.h"
#include "reader/layer/toc.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/toc_builder.h"

namespace regfs {
namespace {

using testing::CommandResult;
using testing::FakeBlobSource;
using testing::RunCommand;
using testing::TarEntry;
using testing::TocBlob;
using testing::TocBuildOptions;
using testing::TocStyle;
using json = nlohmann::json;

const char* StyleName(TocStyle s) {
  switch (s) {
    case TocStyle::kEstargz: return "estargz";
    case TocStyle::kLegacyStargz: return "legacy_stargz";
    case TocStyle::kZstdChunkedV1: return "zstd_chunked_v1";
    case TocStyle::kZstdChunkedV2: return "zstd_chunked_v2";
    case TocStyle::kStargzZstdChunked: return "stargz_zstd_chunked";
  }
  return "?";
}

bool IsEstargzTime(TocStyle s) {
  return s != TocStyle::kZstdChunkedV1 && s != TocStyle::kZstdChunkedV2;
}

// A layer with every entry type, chunked and empty files, xattrs, owner
// names, a long path and a hard link.
std::vector<TarEntry> RichEntries(bool with_nsec) {
  std::vector<TarEntry> v;
  v.push_back(TarEntry::Dir("etc"));
  TarEntry osr = TarEntry::File("etc/os-release", "ID=debian\nVERSION_ID=12\n");
  osr.uid = 1000;
  osr.gid = 1000;
  osr.uname = "user";
  osr.gname = "group";
  if (with_nsec) osr.mtime_nsec = 123456789;
  v.push_back(osr);
  TarEntry same_owner = TarEntry::File("etc/second", "owner names given once");
  same_owner.uid = 1000;
  same_owner.gid = 1000;
  same_owner.uname = "user";
  same_owner.gname = "group";
  v.push_back(same_owner);
  v.push_back(TarEntry::File("etc/empty", ""));
  v.push_back(TarEntry::Dir("usr"));
  v.push_back(TarEntry::Dir("usr/bin"));
  v.push_back(TarEntry::File("usr/bin/big", testing::RandomBytes(10000, 7), 0755));
  TarEntry suid = TarEntry::File("usr/bin/suid", "x", 04755);
  suid.xattrs["security.capability"] = std::string("\x01\x00\x00\x02\x00\x20\x00\x00", 8);
  suid.xattrs["user.comment"] = "hello";
  v.push_back(suid);
  v.push_back(TarEntry::Symlink("usr/bin/link", "big"));
  v.push_back(TarEntry::Hardlink("usr/bin/hard", "usr/bin/big"));
  v.push_back(TarEntry::CharDev("dev-null", 1, 3));
  v.push_back(TarEntry::BlockDev("dev-sda", 8, 0));
  v.push_back(TarEntry::Fifo("fifo"));
  v.push_back(TarEntry::File(std::string(150, 'p') + "/" + std::string(120, 'q'), "long path"));
  v.push_back(TarEntry::File("zeros", std::string(5000, '\0')));
  return v;
}

// The TOC index's entries equal the full pass's, but for data offsets
// (they refer to the content stream) and what the TOC cannot carry: sub-
// second mtimes in eStargz (estargz.go formatModtime rounds to the second),
// owner names in containers/storage's TOC (its tar-split has them; regfs
// does not read it).
void ExpectSameEntries(const LayerIndex& idx, const LayerIndex& tar, bool estargz_time) {
  ASSERT_EQ(idx.entries.size(), tar.entries.size());
  for (size_t i = 0; i < tar.entries.size(); ++i) {
    const ::regfs::TarEntry& want = tar.entries[i];
    const ::regfs::TarEntry& got = idx.entries[i];
    SCOPED_TRACE(want.path);
    EXPECT_EQ(got.path, want.path);
    EXPECT_EQ(got.type, want.type);
    EXPECT_EQ(got.mode, want.mode);
    EXPECT_EQ(got.uid, want.uid);
    EXPECT_EQ(got.gid, want.gid);
    EXPECT_EQ(got.uname, estargz_time ? want.uname : "");
    EXPECT_EQ(got.gname, estargz_time ? want.gname : "");
    EXPECT_EQ(got.mtime_sec, want.mtime_sec);
    EXPECT_EQ(got.mtime_nsec, estargz_time ? 0u : want.mtime_nsec);
    EXPECT_EQ(got.size, want.size);
    EXPECT_EQ(got.link_target, want.link_target);
    EXPECT_EQ(got.dev_major, want.dev_major);
    EXPECT_EQ(got.dev_minor, want.dev_minor);
    auto sorted = [](auto x) {
      std::sort(x.begin(), x.end());
      return x;
    };
    EXPECT_EQ(sorted(got.xattrs), sorted(want.xattrs));
  }
}

// Every file read through the TOC equals its bytes in the tar, whole and
// from the middle across chunk boundaries.
void ExpectSameContents(TocReader& reader, const LayerIndex& tar, const std::string& tar_bytes) {
  const LayerIndex& idx = reader.index();
  ASSERT_EQ(idx.entries.size(), tar.entries.size());
  for (size_t i = 0; i < tar.entries.size(); ++i) {
    const ::regfs::TarEntry& e = idx.entries[i];
    if (e.type != EntryType::kRegular && e.type != EntryType::kHardLink) continue;
    SCOPED_TRACE(e.path);
    std::string want = tar_bytes.substr(tar.entries[i].data_offset, tar.entries[i].size);
    std::string got(e.size + 10, '\0');
    Result<size_t> n = reader.Read(e, 0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(got.data()),
                                                            got.size()));
    ASSERT_OK(n);
    got.resize(*n);
    EXPECT_EQ(got, want);
    if (e.size > 3500) {
      std::string mid(1000, '\0');
      Result<size_t> m = reader.Read(e, 2500, std::span<uint8_t>(
                                                  reinterpret_cast<uint8_t*>(mid.data()), 1000));
      ASSERT_OK(m);
      EXPECT_EQ(mid, want.substr(2500, 1000));
    }
  }
}

class TocTest : public testing::FdCheckedTest {
 protected:
  struct Built {
    TocBlob toc;
    BlobDescriptor desc;
  };
  Built Add(const std::vector<TarEntry>& entries, const TocBuildOptions& o) {
    Built b{testing::BuildTocBlob(entries, o), {}};
    b.desc = src_.AddBlob(b.toc.blob, b.toc.media_type);
    return b;
  }
  // The full-pass index of the same tar, for comparison.
  LayerIndex TarIndex(const std::string& tar) {
    BlobDescriptor d = src_.AddBlob(tar, std::string(kMediaTypeOciLayerTar));
    Result<LayerIndex> x = BuildLayerIndex(&src_, d, LayerCompression::kNone);
    EXPECT_OK(x);
    return x.ok() ? std::move(x).value() : LayerIndex{};
  }
  static TocLocation Detect(const Built& b) {
    std::optional<TocLocation> loc = DetectToc(b.toc.annotations, b.desc);
    EXPECT_TRUE(loc.has_value());
    return loc.value_or(TocLocation{});
  }

  FakeBlobSource src_;
};

class TocRoundTrip : public TocTest, public ::testing::WithParamInterface<TocStyle> {};

// Entries equal the full pass's (except data offsets, which refer to the
// content stream) and every file's bytes read back equal the tar's.
TEST_P(TocRoundTrip, EntriesAndContentMatchTheTar) {
  const TocStyle style = GetParam();
  TocBuildOptions o;
  o.style = style;
  o.chunk_size = 3000;  // big (10000 bytes) and zeros (5000) span several chunks
  const bool estargz_time = IsEstargzTime(style);
  Built b = Add(RichEntries(!estargz_time), o);
  TocLocation loc;
  if (style == TocStyle::kLegacyStargz) {
    // Legacy stargz has no annotation; a caller that knows the digest (or a
    // test) names the format and the footer says where the TOC is.
    loc.format = TocFormat::kEstargz;
    loc.toc_digest = Sha256Digest(b.toc.toc_json);
  } else {
    loc = Detect(b);
  }
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, loc);
  ASSERT_OK(idx);
  const LayerIndex tar = TarIndex(b.toc.tar);
  ExpectSameEntries(*idx, tar, estargz_time);
  EXPECT_EQ(idx->toc_format,
            style == TocStyle::kEstargz || style == TocStyle::kLegacyStargz ? TocFormat::kEstargz
                                                                           : TocFormat::kZstdChunked);
  EXPECT_EQ(idx->toc_digest, loc.toc_digest);
  EXPECT_EQ(idx->blob_digest, b.desc.digest);
  EXPECT_EQ(idx->blob_size, b.desc.size);
  EXPECT_FALSE(idx->toc_chunks.empty());

  auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
  TocReader reader(&src_, b.desc, shared);
  ExpectSameContents(reader, tar, b.toc.tar);
  // The serialized index comes back equal.
  Result<LayerIndex> back = LayerIndex::Deserialize(shared->Serialize());
  ASSERT_OK(back);
  EXPECT_EQ(*back, *shared);
}

INSTANTIATE_TEST_SUITE_P(Styles, TocRoundTrip,
                         ::testing::Values(TocStyle::kEstargz, TocStyle::kLegacyStargz,
                                           TocStyle::kZstdChunkedV1, TocStyle::kZstdChunkedV2,
                                           TocStyle::kStargzZstdChunked),
                         [](const auto& p) { return std::string(StyleName(p.param)); });

// Listing a layer costs the footer and the TOC (or only the TOC when the
// annotation gives its position), never file data.
TEST_F(TocTest, IndexFetchesOnlyFooterAndToc) {
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV1, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    for (bool omit : {false, true}) {
      TocBuildOptions o;
      o.style = style;
      o.omit_position_annotation = omit;
      Built b = Add(RichEntries(false), o);
      TocLocation loc = Detect(b);
      EXPECT_EQ(loc.position_known, style != TocStyle::kEstargz && !omit);
      // The default tail read holds this small TOC: one request. Without
      // it: the footer, then the TOC.
      for (uint64_t tail : {uint64_t{64} << 10, uint64_t{0}}) {
        TocLimits limits;
        limits.tail_read = tail;
        src_.ResetCounters();
        ASSERT_OK(BuildIndexFromToc(src_, b.desc, loc, limits));
        const auto log = src_.request_log();
        EXPECT_EQ(log.size(), loc.position_known || tail > 0 ? 1u : 2u) << tail;
        if (!loc.position_known && tail > 0) {
          ASSERT_EQ(log.size(), 1u);
          EXPECT_EQ(log[0].offset + log[0].length, b.desc.size);
        } else {
          // Footer and TOC only: nothing before the TOC.
          for (const auto& r : log) EXPECT_GE(r.offset + 64, b.toc.toc_offset) << r.offset;
        }
      }
    }
  }
}

// A TOC longer than the tail read: the second request fetches only the
// part the tail did not hold.
TEST_F(TocTest, TocLongerThanTheTailIsCompletedNotRefetched) {
  std::vector<TarEntry> entries;
  for (int i = 0; i < 300; ++i) {
    entries.push_back(TarEntry::File("dir/file-with-a-longish-name-" + std::to_string(i),
                                     testing::RandomBytes(50, i)));
  }
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    TocBuildOptions o;
    o.style = style;
    o.omit_position_annotation = true;
    Built b = Add(entries, o);
    const uint64_t toc_bytes = b.desc.size - b.toc.toc_offset;
    TocLimits limits;
    limits.tail_read = 4096;
    ASSERT_GT(toc_bytes, limits.tail_read);
    src_.ResetCounters();
    Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b), limits);
    ASSERT_OK(idx);
    EXPECT_EQ(idx->entries.size(), entries.size());
    const auto log = src_.request_log();
    ASSERT_EQ(log.size(), 2u);
    EXPECT_EQ(log[0].offset, b.desc.size - 4096);
    EXPECT_EQ(log[1].offset, b.toc.toc_offset);
    EXPECT_EQ(log[1].offset + log[1].length, log[0].offset);
  }
}

TEST_F(TocTest, SmallFilesSharingAMemberUseInnerOffset) {
  TocBuildOptions o;
  o.min_chunk_size = 1 << 20;  // everything in one or two members
  std::vector<TarEntry> entries;
  for (int i = 0; i < 20; ++i) {
    entries.push_back(TarEntry::File("f" + std::to_string(i), testing::RandomBytes(100 + i, i)));
  }
  Built b = Add(entries, o);
  ASSERT_NE(b.toc.toc_json.find("innerOffset"), std::string::npos);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
  TocReader reader(&src_, b.desc, shared);
  ASSERT_EQ(shared->entries.size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    std::string got(entries[i].content.size(), '\0');
    ASSERT_OK(reader.Read(shared->entries[i], 0,
                          std::span<uint8_t>(reinterpret_cast<uint8_t*>(got.data()), got.size())));
    EXPECT_EQ(got, entries[i].content) << i;
  }
}

TEST_F(TocTest, LandmarksAreHiddenAndSetThePrefetchSize) {
  std::vector<TarEntry> entries = {TarEntry::File("a", "12345"), TarEntry::File("b", "678"),
                                   TarEntry::File("c", "after the landmark")};
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    TocBuildOptions o;
    o.style = style;
    o.landmark_before = 2;
    Built b = Add(entries, o);
    Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
    ASSERT_OK(idx);
    EXPECT_EQ(idx->prefetch_size, 8u);
    ASSERT_EQ(idx->entries.size(), 3u);
    for (const auto& e : idx->entries) EXPECT_NE(e.path, ".prefetch.landmark");

    o.no_prefetch_landmark = true;
    o.landmark_before = 0;
    Built n = Add(entries, o);
    Result<LayerIndex> nidx = BuildIndexFromToc(src_, n.desc, Detect(n));
    ASSERT_OK(nidx);
    EXPECT_EQ(nidx->prefetch_size, 0u);
    ASSERT_EQ(nidx->entries.size(), 3u);
    EXPECT_EQ(nidx->entries[0].path, "a");
  }
}

// Paths that appear twice and hard links whose target is replaced resolve
// as the full pass over the tar resolves them (index_builder.cc).
TEST_F(TocTest, DuplicatesAndHardLinksAsTheFullPass) {
  std::vector<TarEntry> entries = {
      TarEntry::File("a", "first a"),        TarEntry::Hardlink("b", "a"),
      TarEntry::Hardlink("c", "b"),          TarEntry::File("a", "second a, longer"),
      TarEntry::File("d", "d"),              TarEntry::File("d", "d again"),
      TarEntry::Hardlink("e", "a"),
  };
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    TocBuildOptions o;
    o.style = style;
    Built b = Add(entries, o);
    Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
    ASSERT_OK(idx);
    const LayerIndex tar = TarIndex(b.toc.tar);
    ExpectSameEntries(*idx, tar, IsEstargzTime(style));
    auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
    TocReader reader(&src_, b.desc, shared);
    ExpectSameContents(reader, tar, b.toc.tar);
  }
}

// A landmark carries no digest in some writers' TOCs: it is never read, so
// that does not make the TOC unusable.
TEST_F(TocTest, LandmarkWithoutDigestIsFine) {
  TocBuildOptions o;
  o.landmark_before = 1;
  o.mutate_toc = [](json& toc) {
    for (json& e : toc["entries"]) {
      if (e["name"] == ".prefetch.landmark") {
        e.erase("digest");
        e.erase("chunkDigest");
      }
    }
  };
  Built b = Add({TarEntry::File("a", "12345"), TarEntry::File("b", "678")}, o);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  EXPECT_EQ(idx->prefetch_size, 5u);
  EXPECT_EQ(idx->uncompressed_size, 8u);
}

TEST_F(TocTest, PrefetchFetchesTheChunksOfTheRange) {
  TocBuildOptions o;
  o.chunk_size = 1000;
  Built b = Add({TarEntry::File("a", testing::RandomBytes(5000, 1)),
                 TarEntry::File("b", testing::RandomBytes(5000, 2))},
                o);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
  TocReader reader(&src_, b.desc, shared);
  src_.ResetCounters();
  ASSERT_OK(reader.Prefetch(0, 5000));
  uint64_t lo = UINT64_MAX, hi = 0;
  for (const auto& r : src_.request_log()) {
    lo = std::min(lo, r.offset);
    hi = std::max(hi, r.offset + r.length);
  }
  // The chunks of "a" (adjacent ranges, so one request), nothing of "b".
  EXPECT_EQ(src_.request_log().size(), 1u);
  EXPECT_EQ(lo, shared->toc_chunks[0].in_offset);
  EXPECT_EQ(hi, shared->toc_chunks[4].in_offset + shared->toc_chunks[4].in_size);
  EXPECT_LE(hi, shared->toc_chunks[5].in_offset);
}

TEST_F(TocTest, WrongTocDigestIsCorrupt) {
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV1, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    TocBuildOptions o;
    o.style = style;
    Built b = Add(RichEntries(false), o);
    TocLocation loc = Detect(b);
    loc.toc_digest = Sha256Digest("something else");
    Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, loc);
    ASSERT_FALSE(idx.ok());
    EXPECT_EQ(idx.status().code(), Code::kCorrupt);
    EXPECT_NE(idx.status().message().find("does not match the annotation"), std::string::npos)
        << idx.status().ToString();
  }
}

// A chunk whose bytes changed in the registry: Corrupt, and not one byte
// of it reaches the caller's buffer.
TEST_F(TocTest, AlteredChunkIsCorruptAndServesNoBytes) {
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    for (bool wrong_digest : {false, true}) {
      SCOPED_TRACE(std::string(StyleName(style)) + (wrong_digest ? " digest" : " bytes"));
      TocBuildOptions o;
      o.style = style;
      const std::string content = testing::RandomBytes(3000, 9);
      if (wrong_digest) {
        // The blob is intact but the TOC names another digest: the bytes
        // decode and still fail verification.
        o.mutate_toc = [](json& toc) {
          for (json& e : toc["entries"]) {
            if (e["name"] == "f") {
              e["digest"] = Sha256Digest("other");
              if (e.contains("chunkDigest")) e["chunkDigest"] = Sha256Digest("other");
            }
          }
        };
      }
      Built b = Add({TarEntry::File("f", content)}, o);
      Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
      ASSERT_OK(idx);
      auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
      ASSERT_EQ(shared->toc_chunks.size(), 1u);
      if (!wrong_digest) {
        // Replace the chunk's compressed bytes with a valid compression of
        // other bytes of the same size would need equal length; flipping a
        // byte in the middle of the compressed range is enough here.
        std::string altered = b.toc.blob;
        const TocChunk& c = shared->toc_chunks[0];
        altered[c.in_offset + c.in_size / 2] ^= 0x55;
        src_.ReplaceContent(b.desc.digest, altered);
      }
      TocReader reader(&src_, b.desc, shared);
      std::string buf(content.size(), 'S');
      Result<size_t> n = reader.Read(shared->entries[0], 0,
                                     std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()),
                                                        buf.size()));
      ASSERT_FALSE(n.ok());
      EXPECT_EQ(n.status().code(), Code::kCorrupt);
      EXPECT_NE(n.status().message().find(b.desc.digest), std::string::npos);
      EXPECT_NE(n.status().message().find("chunk 0"), std::string::npos);
      EXPECT_EQ(buf, std::string(content.size(), 'S'));
    }
  }
}

// Odd TOCs that still hash right: refused with Corrupt, or the odd entry
// skipped as the tar reader would skip it.
TEST_F(TocTest, AbsurdTocFieldsAreCorrupt) {
  struct Case {
    const char* name;
    std::function<void(json&)> mutate;
  };
  auto on_file = [](std::function<void(json&)> f) {
    return [f](json& toc) {
      for (json& e : toc["entries"]) {
        if (e["name"] == "f") f(e);
      }
    };
  };
  const std::vector<Case> cases = {
      {"negative size", on_file([](json& e) { e["size"] = -5; })},
      {"size as string", on_file([](json& e) { e["size"] = "5"; })},
      {"size as float", on_file([](json& e) { e["size"] = 5.5; })},
      {"size beyond the chunks", on_file([](json& e) { e["size"] = 999999; })},
      {"offset beyond the blob", on_file([](json& e) { e["offset"] = uint64_t{1} << 62; })},
      {"chunk offset gap", [](json& toc) {
         for (json& e : toc["entries"]) {
           if (e["type"] == "chunk") {
             e["chunkOffset"] = e["chunkOffset"].get<uint64_t>() + 1;
             break;
           }
         }
       }},
      {"chunk first", [](json& toc) { toc["entries"].insert(toc["entries"].begin(),
                                                           json{{"type", "chunk"}, {"name", "f"}}); }},
      {"no entries", [](json& toc) { toc.erase("entries"); }},
      {"entries not an array", [](json& toc) { toc["entries"] = 5; }},
      {"entry not an object", [](json& toc) { toc["entries"].push_back(7); }},
      {"xattr not base64", on_file([](json& e) { e["xattrs"] = json{{"user.x", "%%%"}}; })},
      {"xattrs not an object", on_file([](json& e) { e["xattrs"] = json::array(); })},
      {"bad chunk digest", on_file([](json& e) { e["chunkDigest"] = "md5:abc"; })},
      {"no digest at all", on_file([](json& e) {
         e.erase("digest");
         e.erase("chunkDigest");
       })},
      {"unknown chunk type", on_file([](json& e) { e["chunkType"] = "holes"; })},
      {"name over 64 KiB", on_file([](json& e) { e["name"] = std::string(70000, 'n'); })},
      {"not json", [](json& toc) { toc = "x"; }},
  };
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(StyleName(style)) + ": " + c.name);
      TocBuildOptions o;
      o.style = style;
      o.chunk_size = 1000;
      o.mutate_toc = c.mutate;
      Built b = Add({TarEntry::File("f", testing::RandomBytes(2500, 3))}, o);
      Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
      if (idx.ok() && std::string(c.name) == "size beyond the chunks" &&
          style == TocStyle::kEstargz) {
        // An eStargz last chunk has no size ("to the end of the file"): the
        // lie shows when the chunk is read, which fails (no byte served).
        auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
        TocReader reader(&src_, b.desc, shared);
        std::string buf(4000, '\0');
        Result<size_t> n = reader.Read(shared->entries[0], 0, std::span<uint8_t>(
            reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
        ASSERT_FALSE(n.ok());
        EXPECT_EQ(n.status().code(), Code::kCorrupt);
        continue;
      }
      ASSERT_FALSE(idx.ok());
      EXPECT_EQ(idx.status().code(), Code::kCorrupt) << idx.status().ToString();
    }
  }
}

TEST_F(TocTest, UnusableEntriesAreSkippedNotFatal) {
  TocBuildOptions o;
  o.mutate_toc = [](json& toc) {
    toc["entries"].push_back(json{{"type", "socket"}, {"name", "sock"}});
    toc["entries"].push_back(json{{"type", "dir"}, {"name", "../escape"}});
    toc["entries"].push_back(json{{"type", "dir"}, {"name", std::string(300, 'c')}});
    toc["entries"].push_back(json{{"type", "reg"}, {"name", "biguid"}, {"uid", uint64_t{1} << 40}});
    toc["entries"].push_back(json{{"type", "hardlink"}, {"name", "dangling"}, {"linkName", "nope"}});
    toc["entries"].push_back(json{{"type", "dir"}, {"name", "stargz.index.json"}});
  };
  Built b = Add({TarEntry::File("f", "data")}, o);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  ASSERT_EQ(idx->entries.size(), 1u);
  EXPECT_EQ(idx->entries[0].path, "f");
  EXPECT_EQ(idx->skipped_entries, 5u);
}

TEST_F(TocTest, LimitsAreEnforced) {
  std::vector<TarEntry> entries;
  for (int i = 0; i < 10; ++i) entries.push_back(TarEntry::File("f" + std::to_string(i), "x"));
  entries.push_back(TarEntry::File("big", testing::RandomBytes(5000, 1)));
  for (TocStyle style : {TocStyle::kEstargz, TocStyle::kZstdChunkedV2}) {
    SCOPED_TRACE(StyleName(style));
    TocBuildOptions o;
    o.style = style;
    Built b = Add(entries, o);
    const TocLocation loc = Detect(b);
    ASSERT_OK(BuildIndexFromToc(src_, b.desc, loc));
    TocLimits l;
    l.max_entries = 5;
    EXPECT_EQ(BuildIndexFromToc(src_, b.desc, loc, l).status().code(), Code::kCorrupt);
    l = TocLimits();
    l.max_toc_json = 100;
    EXPECT_EQ(BuildIndexFromToc(src_, b.desc, loc, l).status().code(), Code::kCorrupt);
    l = TocLimits();
    l.max_toc_compressed = 10;
    EXPECT_EQ(BuildIndexFromToc(src_, b.desc, loc, l).status().code(), Code::kCorrupt);
    l = TocLimits();
    l.max_chunk_size = 4000;
    EXPECT_EQ(BuildIndexFromToc(src_, b.desc, loc, l).status().code(), Code::kCorrupt);
    l = TocLimits();
    l.max_content_bytes = 1000;
    EXPECT_EQ(BuildIndexFromToc(src_, b.desc, loc, l).status().code(), Code::kCorrupt);
  }
}

TEST_F(TocTest, TruncatedOrForeignFootersAreCorrupt) {
  TocLocation est;
  est.format = TocFormat::kEstargz;
  EXPECT_EQ(ParseTocFooter(std::string(51, '\0'), 1000, &est).code(), Code::kCorrupt);
  EXPECT_EQ(ParseTocFooter("short", 1000, &est).code(), Code::kCorrupt);
  TocBuildOptions o;
  Built b = Add({TarEntry::File("f", "x")}, o);
  std::string footer = b.toc.blob.substr(b.toc.blob.size() - 51);
  ASSERT_OK(ParseTocFooter(footer, b.desc.size, &est));
  EXPECT_EQ(est.toc_offset, b.toc.toc_offset);
  // An offset past the blob.
  EXPECT_EQ(ParseTocFooter(footer, 60, &est).code(), Code::kCorrupt);
  std::string bad_hex = footer;
  bad_hex[20] = 'z';
  EXPECT_EQ(ParseTocFooter(bad_hex, b.desc.size, &est).code(), Code::kCorrupt);

  for (int gen : {1, 2}) {
    TocLocation z;
    z.format = TocFormat::kZstdChunked;
    z.generation = gen;
    o.style = gen == 1 ? TocStyle::kZstdChunkedV1 : TocStyle::kZstdChunkedV2;
    Built zb = Add({TarEntry::File("f", "x")}, o);
    const size_t n = gen == 1 ? 40 : 64;
    std::string f = zb.toc.blob.substr(zb.toc.blob.size() - n);
    ASSERT_OK(ParseTocFooter(f, zb.desc.size, &z));
    EXPECT_EQ(z.toc_offset, zb.toc.toc_offset);
    // The other generation's magic is not accepted.
    TocLocation other = z;
    other.generation = 3 - gen;
    EXPECT_EQ(ParseTocFooter(f, zb.desc.size, &other).code(), Code::kCorrupt);
    EXPECT_EQ(ParseTocFooter(f, 100, &z).code(), Code::kCorrupt);  // range past the blob
    std::string wrong_type = f;
    wrong_type[24] = 2;
    EXPECT_EQ(ParseTocFooter(wrong_type, zb.desc.size, &z).code(), Code::kCorrupt);
  }
}

TEST_F(TocTest, DetectTocFromAnnotations) {
  BlobDescriptor gz{std::string(kMediaTypeOciLayerGzip), Sha256Digest("a"), 1000};
  BlobDescriptor zs{std::string(kMediaTypeOciLayerZstd), Sha256Digest("b"), 1000};
  const std::string d = Sha256Digest("toc");
  Annotations a{{std::string(kEstargzTocDigestAnnotation), d}};
  auto loc = DetectToc(a, gz);
  ASSERT_TRUE(loc);
  EXPECT_EQ(loc->format, TocFormat::kEstargz);
  EXPECT_EQ(loc->toc_digest, d);
  // An eStargz digest on a zstd layer alone is not a zstd:chunked TOC.
  EXPECT_FALSE(DetectToc(a, zs));
  EXPECT_FALSE(DetectToc({{std::string(kEstargzTocDigestAnnotation), "sha256:xyz"}}, gz));
  EXPECT_FALSE(DetectToc({}, gz));

  Annotations v1{{std::string(kZstdChunkedV1ChecksumAnnotation), d},
                 {std::string(kZstdChunkedV1PositionAnnotation), "100:50:200:1"}};
  loc = DetectToc(v1, zs);
  ASSERT_TRUE(loc);
  EXPECT_EQ(loc->generation, 1);
  EXPECT_TRUE(loc->position_known);
  EXPECT_EQ(loc->toc_offset, 100u);
  EXPECT_EQ(loc->toc_size, 50u);
  EXPECT_EQ(loc->toc_uncompressed_size, 200u);
  const std::string d2 = Sha256Digest("toc2");
  Annotations both = v1;
  both[std::string(kZstdChunkedV2ChecksumAnnotation)] = d2;
  both[std::string(kZstdChunkedV2PositionAnnotation)] = "300:60:400:1";
  both[std::string(kZstdChunkedV2TarsplitAnnotation)] = "368:10:20";
  loc = DetectToc(both, zs);
  ASSERT_TRUE(loc);
  EXPECT_EQ(loc->generation, 2);
  EXPECT_EQ(loc->toc_digest, d2);
  EXPECT_EQ(loc->tarsplit_offset, 368u);
  // A position that is malformed, of another manifest type or past the blob
  // leaves the footer to say.
  for (const char* p : {"1:2:3", "100:50:200:2", "900:500:10:1", "a:b:c:d", "-1:5:5:1"}) {
    Annotations x{{std::string(kZstdChunkedV1ChecksumAnnotation), d},
                  {std::string(kZstdChunkedV1PositionAnnotation), p}};
    loc = DetectToc(x, zs);
    ASSERT_TRUE(loc) << p;
    EXPECT_FALSE(loc->position_known) << p;
  }
}

TEST_F(TocTest, ReaderCachesChunksAndIsThreadSafe) {
  TocBuildOptions o;
  o.style = TocStyle::kZstdChunkedV2;
  o.chunk_size = 4096;
  const std::string content = testing::RandomBytes(64 << 10, 5);
  Built b = Add({TarEntry::File("f", content)}, o);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
  TocReaderOptions ro;
  ro.max_cached_chunks = 4;
  TocReader reader(&src_, b.desc, shared, ro);
  std::string a(100, '\0'), c(100, '\0');
  ASSERT_OK(reader.ReadAt(10, std::span<uint8_t>(reinterpret_cast<uint8_t*>(a.data()), 100)));
  ASSERT_OK(reader.ReadAt(200, std::span<uint8_t>(reinterpret_cast<uint8_t*>(c.data()), 100)));
  EXPECT_EQ(reader.stats().chunks_fetched, 1u);
  EXPECT_EQ(reader.stats().chunk_cache_hits, 1u);
  EXPECT_EQ(a, content.substr(10, 100));

  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const uint64_t off = (static_cast<uint64_t>(t) * 7919 + i * 1237) % (content.size() - 5000);
        std::string buf(5000, '\0');
        Result<size_t> n =
            reader.ReadAt(off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), 5000));
        if (!n.ok() || *n != 5000 || buf != content.substr(off, 5000)) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  // Past the end: 0 bytes; an index of another blob: InvalidArgument.
  EXPECT_EQ(*reader.ReadAt(content.size(), std::span<uint8_t>(
                                               reinterpret_cast<uint8_t*>(a.data()), 10)),
            0u);
  BlobDescriptor other = b.desc;
  other.digest = Sha256Digest("other");
  TocReader wrong(&src_, other, shared);
  EXPECT_EQ(wrong.ReadAt(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(a.data()), 10))
                .status()
                .code(),
            Code::kInvalidArgument);
}


// A real writer: Debian 12's skopeo (containers/image 5.23, containers/
// storage 1.43) converts a gzip layer of ours to zstd:chunked generation 1
// (oci: to oci:, no registry). Its TOC must list the same tree and every
// file must read back the tar's bytes (rolling-checksum chunks and "zeros"
// chunks included).
TEST_F(TocTest, SkopeoZstdChunkedMatchesTheTar) {
  if (RunCommand({"skopeo", "--version"}).exit_code != 0) {
    GTEST_SKIP() << "skopeo is not installed (packaging/install-deps.sh installs it)";
  }
  std::vector<TarEntry> entries = RichEntries(false);
  entries.push_back(TarEntry::File("big", testing::RandomBytes(400000, 11)));
  std::string holes = std::string(100000, '\0') + "middle" + std::string(50000, '\0') + "end";
  entries.push_back(TarEntry::File("holes", holes));
  const std::string tar = testing::BuildTar(entries);
  const std::string gz = testing::GzipCompress(tar);

  testing::TempDir dir("regfs-toc");
  const std::string src = dir.Sub("src"), dst = dir.Sub("dst");
  ASSERT_EQ(RunCommand({"mkdir", "-p", src + "/blobs/sha256"}).exit_code, 0);
  auto put = [&](const std::string& bytes) {
    const std::string d = Sha256Digest(bytes);
    std::ofstream(src + "/blobs/sha256/" + d.substr(7), std::ios::binary) << bytes;
    return d;
  };
  const std::string config =
      json{{"architecture", "amd64"},
           {"os", "linux"},
           {"rootfs", {{"type", "layers"}, {"diff_ids", {Sha256Digest(tar)}}}}}
          .dump();
  const std::string manifest =
      json{{"schemaVersion", 2},
           {"mediaType", std::string(kMediaTypeOciManifest)},
           {"config", {{"mediaType", std::string(kMediaTypeOciConfig)},
                       {"digest", put(config)},
                       {"size", config.size()}}},
           {"layers", {{{"mediaType", std::string(kMediaTypeOciLayerGzip)},
                        {"digest", put(gz)},
                        {"size", gz.size()}}}}}
          .dump();
  const std::string md = put(manifest);
  std::ofstream(src + "/index.json")
      << json{{"schemaVersion", 2},
              {"manifests", {{{"mediaType", std::string(kMediaTypeOciManifest)},
                              {"digest", md},
                              {"size", manifest.size()},
                              {"annotations", {{"org.opencontainers.image.ref.name", "t"}}}}}}}
             .dump();
  std::ofstream(src + "/oci-layout") << R"({"imageLayoutVersion":"1.0.0"})";
  testing::CommandResult r = RunCommand({"skopeo", "copy", "--dest-compress-format",
                                         "zstd:chunked", "oci:" + src + ":t", "oci:" + dst + ":t"});
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::string index_json, out_manifest, blob;
  ASSERT_TRUE(testing::ReadWholeFile(dst + "/index.json", &index_json));
  const std::string out_md = json::parse(index_json)["manifests"][0]["digest"];
  ASSERT_TRUE(testing::ReadWholeFile(dst + "/blobs/sha256/" + out_md.substr(7), &out_manifest));
  Result<ImageManifest> m = ParseManifest(out_manifest, "");
  ASSERT_OK(m);
  ASSERT_EQ(m->layers.size(), 1u);
  ASSERT_TRUE(testing::ReadWholeFile(dst + "/blobs/sha256/" + m->layers[0].digest.substr(7), &blob));
  BlobDescriptor desc = src_.AddBlob(blob, m->layers[0].media_type);
  ASSERT_EQ(desc.digest, m->layers[0].digest);
  std::optional<TocLocation> loc = DetectToc(m->LayerAnnotations(0), desc);
  ASSERT_TRUE(loc) << json(m->LayerAnnotations(0)).dump();
  EXPECT_EQ(loc->format, TocFormat::kZstdChunked);
  EXPECT_EQ(loc->generation, 1);
  EXPECT_TRUE(loc->position_known);

  // Once from the annotation's position, once from the 40-byte footer.
  for (bool from_footer : {false, true}) {
    SCOPED_TRACE(from_footer ? "footer" : "annotation");
    TocLocation l = *loc;
    if (from_footer) l.position_known = false;
    Result<LayerIndex> idx = BuildIndexFromToc(src_, desc, l);
    ASSERT_OK(idx);
    const LayerIndex tar_index = TarIndex(tar);
    ExpectSameEntries(*idx, tar_index, /*estargz_time=*/false);
    auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
    EXPECT_GT(shared->toc_chunks.size(), shared->entries.size() / 2);
    TocReader reader(&src_, desc, shared);
    ExpectSameContents(reader, tar_index, tar);
  }
}

// Two reads that miss the same chunk at once share one fetch and decode.
TEST_F(TocTest, ConcurrentMissesOfOneChunkShareOneFetch) {
  TocBuildOptions o;
  const std::string content = testing::RandomBytes(100000, 4);
  Built b = Add({TarEntry::File("f", content)}, o);
  Result<LayerIndex> idx = BuildIndexFromToc(src_, b.desc, Detect(b));
  ASSERT_OK(idx);
  auto shared = std::make_shared<const LayerIndex>(std::move(idx).value());
  ASSERT_EQ(shared->toc_chunks.size(), 1u);
  TocReader reader(&src_, b.desc, shared);
  src_.ResetCounters();
  src_.HoldRequests();
  std::string a(1000, '\0'), c(1000, '\0');
  Status sa, sc;
  std::thread first([&] {
    sa = reader.ReadAt(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(a.data()), 1000)).status();
  });
  ASSERT_TRUE(src_.WaitForRequests(1, std::chrono::seconds(30)));
  std::thread second([&] {
    sc = reader.ReadAt(50000, std::span<uint8_t>(reinterpret_cast<uint8_t*>(c.data()), 1000))
             .status();
  });
  // Bounded wait for the second read to queue behind the first's decode.
  for (int i = 0; i < 3000 && reader.stats().inflight_waits == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  src_.ReleaseRequests();
  first.join();
  second.join();
  EXPECT_OK(sa);
  EXPECT_OK(sc);
  EXPECT_EQ(reader.stats().inflight_waits, 1u);
  EXPECT_EQ(src_.requests(), 1u);
  EXPECT_EQ(reader.stats().chunks_fetched, 1u);
  EXPECT_EQ(a, content.substr(0, 1000));
  EXPECT_EQ(c, content.substr(50000, 1000));
}

// ---- LayerIndex version 3 fields

LayerIndex SmallTocIndex() {
  LayerIndex x;
  x.blob_digest = Sha256Digest("blob");
  x.blob_size = 1000;
  x.compression = LayerCompression::kGzip;
  x.toc_format = TocFormat::kEstargz;
  x.toc_digest = Sha256Digest("toc");
  x.uncompressed_size = 300;
  x.prefetch_size = 100;
  x.toc_chunks = {TocChunk{0, 100, 10, 50, 0, Sha256Digest("1")},
                  TocChunk{100, 200, 60, 40, 7, Sha256Digest("2")}};
  ::regfs::TarEntry e;
  e.path = "f";
  e.size = 300;
  x.entries.push_back(e);
  return x;
}

TEST(TocIndexFormat, RoundTripsAndRefusesInconsistentChunks) {
  const LayerIndex x = SmallTocIndex();
  Result<LayerIndex> back = LayerIndex::Deserialize(x.Serialize());
  ASSERT_OK(back);
  EXPECT_EQ(*back, x);

  struct Case {
    const char* name;
    std::function<void(LayerIndex&)> f;
  };
  const std::vector<Case> cases = {
      {"gap (chunks short of the stream)", [](LayerIndex& y) { y.toc_chunks[1].size = 150; }},
      {"past the stream", [](LayerIndex& y) { y.toc_chunks[1].size = 250; }},
      {"compressed range past the blob", [](LayerIndex& y) { y.toc_chunks[1].in_size = 2000; }},
      {"empty compressed range", [](LayerIndex& y) { y.toc_chunks[0].in_size = 0; }},
      {"bad chunk digest", [](LayerIndex& y) { y.toc_chunks[0].digest = "sha256:nothex"; }},
      {"bad toc digest", [](LayerIndex& y) { y.toc_digest = "x"; }},
      {"prefetch past the stream", [](LayerIndex& y) { y.prefetch_size = 301; }},
      {"wrong compression", [](LayerIndex& y) { y.compression = LayerCompression::kZstd; }},
      {"TOC fields without a format", [](LayerIndex& y) { y.toc_format = TocFormat::kNone; }},
  };
  for (const Case& c : cases) {
    LayerIndex y = x;
    c.f(y);
    Result<LayerIndex> r = LayerIndex::Deserialize(y.Serialize());
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), Code::kCorrupt) << c.name;
  }
}

// An index stored by the previous version (2, no TOC fields) still loads.
TEST(TocIndexFormat, Version2StillLoads) {
  LayerIndex x;
  x.blob_digest = Sha256Digest("blob");
  x.blob_size = 10;
  x.compression = LayerCompression::kNone;
  x.uncompressed_size = 0;
  std::string v3 = x.Serialize();
  // Version 3 appends format (1), digest length (1), prefetch (1), chunk
  // count (1): four zero bytes for a non-TOC index, before the CRC.
  ASSERT_EQ(v3.substr(v3.size() - 8, 4), std::string(4, '\0'));
  std::string v2 = v3.substr(0, v3.size() - 8);
  v2[8] = 2;
  const uint64_t body = v2.size() - 20;
  for (int i = 0; i < 8; ++i) v2[12 + i] = static_cast<char>((body >> (8 * i)) & 0xff);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(v2.data()), v2.size());
  for (int i = 0; i < 4; ++i) v2.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
  Result<LayerIndex> back = LayerIndex::Deserialize(v2);
  ASSERT_OK(back);
  EXPECT_EQ(*back, x);
}

// ---- manifest annotations

TEST(ManifestAnnotations, KeptPerLayerAndCapped) {
  json m = {{"schemaVersion", 2},
            {"mediaType", std::string(kMediaTypeOciManifest)},
            {"config", {{"mediaType", std::string(kMediaTypeOciConfig)},
                        {"digest", Sha256Digest("c")},
                        {"size", 1}}},
            {"layers", json::array()}};
  json l0 = {{"mediaType", std::string(kMediaTypeOciLayerGzip)},
             {"digest", Sha256Digest("l0")},
             {"size", 10},
             {"annotations",
              {{std::string(kEstargzTocDigestAnnotation), Sha256Digest("t")},
               {"not.a.string", 5},
               {"too.long", std::string(5000, 'v')}}}};
  json l1 = {{"mediaType", std::string(kMediaTypeOciLayerGzip)},
             {"digest", Sha256Digest("l1")},
             {"size", 10}};
  json many = json::object();
  for (int i = 0; i < 200; ++i) many["k" + std::to_string(i)] = "v";
  json l2 = l1;
  l2["annotations"] = many;
  m["layers"] = {l0, l1, l2};
  Result<ImageManifest> p = ParseManifest(m.dump(), "");
  ASSERT_OK(p);
  ASSERT_EQ(p->layer_annotations.size(), 3u);
  EXPECT_EQ(p->LayerAnnotations(0),
            (Annotations{{std::string(kEstargzTocDigestAnnotation), Sha256Digest("t")}}));
  EXPECT_TRUE(p->LayerAnnotations(1).empty());
  EXPECT_EQ(p->LayerAnnotations(2).size(), kMaxAnnotationsPerLayer);
  EXPECT_TRUE(p->LayerAnnotations(7).empty());
}

}  // namespace
}  // namespace regfs
