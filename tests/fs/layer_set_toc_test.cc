// TOC layers (eStargz, zstd:chunked) in the layer lifecycle: the index comes
// from the TOC (no pass over the blob), files read by chunk, the landmarked
// prefix is prefetched, a bad TOC falls back to the full pass for readers
// and fails EnsureReadyFromToc (the store's TOC-digest lookup), and a chunk
// whose bytes were altered is an error, never its bytes.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "fs/layer_set.h"
#include "fs/tree.h"
#include "reader/base/digest.h"
#include "reader/layer/toc.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"
#include "tests/support/toc_builder.h"

namespace regfs {
namespace {

using std::chrono::milliseconds;
namespace tt = regfs::testing;

LayerSetOptions FastOptions() {
  LayerSetOptions o;
  o.backoff_min = milliseconds(20);
  o.backoff_max = milliseconds(40);
  o.wait_timeout = milliseconds(5000);
  return o;
}

// An index store in memory, as the cache's table is.
struct MemoryIndexStore {
  std::map<std::string, std::string> rows;
  IndexStore Store() {
    return {[this](const std::string& d) -> std::optional<std::string> {
              auto it = rows.find(d);
              if (it == rows.end()) return std::nullopt;
              return it->second;
            },
            [this](const std::string& d, const std::string& b) { rows[d] = b; }};
  }
};

std::vector<tt::TarEntry> Entries() {
  return {tt::TarEntry::Dir("etc"),
          tt::TarEntry::File("etc/os-release", "ID=toc\n"),
          tt::TarEntry::File("usr/bin/tool", tt::DeterministicBytes(1, 200000), 0755),
          tt::TarEntry::Symlink("usr/bin/alias", "tool"),
          tt::TarEntry::File("usr/share/empty", ""),
          tt::TarEntry::File("var/log/last", tt::DeterministicBytes(2, 300000))};
}

struct Built {
  tt::TocBlob toc;
  BlobDescriptor desc;
};

Built Make(tt::FakeBlobSource* src, tt::TocStyle style, int landmark_before = -1) {
  tt::TocBuildOptions o;
  o.style = style;
  o.chunk_size = 64 << 10;  // several chunks per big file
  o.landmark_before = landmark_before;
  Built b;
  b.toc = tt::BuildTocBlob(Entries(), o);
  b.desc = src->AddBlob(b.toc.blob, b.toc.media_type);
  return b;
}

// The bytes of `path` as the layer serves them: its entry from a filled
// tree, then ReadUncompressed at the entry's data offset.
std::string ReadFile(Layer& l, Tree& t, Ino root, const std::string& path) {
  Ino cur = root;
  size_t start = 0;
  while (start < path.size()) {
    size_t slash = path.find('/', start);
    std::string name = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    Result<Ino> next = t.Lookup(cur, name);
    if (!next.ok()) return "<no " + path + ">";
    cur = *next;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  Result<Node> n = t.Get(cur);
  if (!n.ok()) return "<no node>";
  std::string out(n->attr.size, '\0');
  Result<size_t> got =
      l.ReadUncompressed(n->content_arg, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()));
  if (!got.ok()) return "<error " + got.status().ToString() + ">";
  out.resize(*got);
  return out;
}

class LayerSetTocTest : public tt::FdCheckedTest,
                        public ::testing::WithParamInterface<tt::TocStyle> {};

TEST_P(LayerSetTocTest, IndexFromTheTocReadsOnlyTheTocThenFilesByChunk) {
  tt::FakeBlobSource src;
  Built b = Make(&src, GetParam());
  ASSERT_TRUE(DetectToc(b.toc.annotations, b.desc).has_value());
  MemoryIndexStore mem;
  LayerSetOptions o = FastOptions();
  o.index_store = mem.Store();
  LayerSet set(o);
  std::shared_ptr<Layer> l = set.Get(b.desc, "", &src, b.toc.annotations);
  ASSERT_OK(l->EnsureReadyFromToc());
  EXPECT_TRUE(l->FromToc());
  // Listing the layer cost the footer and the TOC, not the files' data.
  uint64_t listing_bytes = src.bytes_served();
  EXPECT_LT(listing_bytes, b.toc.blob.size() / 4) << "blob " << b.toc.blob.size();
  EXPECT_FALSE(l->UncompressedSize().has_value());  // a content stream's size is not the tar's
  EXPECT_EQ(l->Snapshot().toc.empty(), false);

  Tree t;
  Ino dir = t.AddDir(kRootIno, "l", 0755);
  t.SetPending(dir, 1);
  ASSERT_OK(l->FillTree(t, dir, 0, WhiteoutMode::kAsInTar, HardLinkMetadata::kKeepTarget));
  EXPECT_EQ(ReadFile(*l, t, dir, "etc/os-release"), "ID=toc\n");
  EXPECT_EQ(ReadFile(*l, t, dir, "usr/share/empty"), "");
  uint64_t before_big = src.bytes_served();
  std::string big = ReadFile(*l, t, dir, "usr/bin/tool");
  EXPECT_EQ(big, Entries()[2].content);
  EXPECT_EQ(ReadFile(*l, t, dir, "var/log/last"), Entries()[5].content);
  EXPECT_GT(src.bytes_served(), before_big);
  EXPECT_FALSE(t.Lookup(dir, std::string(kEstargzTocName)).ok());

  // A second set with the same index store (a second mount) needs no TOC
  // fetch: the index came from the store.
  src.ResetCounters();
  LayerSet set2(o);
  std::shared_ptr<Layer> l2 = set2.Get(b.desc, "", &src, b.toc.annotations);
  ASSERT_OK(l2->EnsureReady());
  EXPECT_TRUE(l2->FromToc());
  EXPECT_TRUE(l2->Snapshot().from_cache);
  EXPECT_EQ(src.requests(), 0u);
}

TEST_P(LayerSetTocTest, AlteredChunkIsAnErrorNeverItsBytes) {
  tt::FakeBlobSource src;
  Built b = Make(&src, GetParam());
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(b.desc, "", &src, b.toc.annotations);
  ASSERT_OK(l->EnsureReadyFromToc());
  Tree t;
  Ino dir = t.AddDir(kRootIno, "l", 0755);
  t.SetPending(dir, 1);
  ASSERT_OK(l->FillTree(t, dir, 0, WhiteoutMode::kAsInTar, HardLinkMetadata::kKeepTarget));
  // Every response now has one byte flipped (after the TOC was read).
  src.SetCorruptResponses(true);
  std::string got = ReadFile(*l, t, dir, "usr/bin/tool");
  EXPECT_EQ(got.rfind("<error", 0), 0u) << got.substr(0, 80);
}

TEST_P(LayerSetTocTest, BadTocFallsBackToAFullPassAndIsNotOfferedByTocDigest) {
  tt::FakeBlobSource src;
  Built b = Make(&src, GetParam());
  // The annotation names another TOC: the TOC fetched does not match it.
  Annotations wrong = b.toc.annotations;
  for (auto& [k, v] : wrong) {
    if (v == b.toc.toc_digest) v = Sha256Digest("another toc");
  }
  ASSERT_NE(wrong, b.toc.annotations);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(b.desc, "", &src, wrong);
  Status by_toc = l->EnsureReadyFromToc();
  EXPECT_FALSE(by_toc.ok());
  // The TOC check alone read no more than the footer and the TOC.
  EXPECT_LT(src.bytes_served(), b.toc.blob.size() / 4);
  EXPECT_FALSE(l->Snapshot().toc_error.empty());
  // Readers (mount) still get the layer, from a pass over the blob.
  ASSERT_OK(l->EnsureReady());
  EXPECT_FALSE(l->FromToc());
  Tree t;
  Ino dir = t.AddDir(kRootIno, "l", 0755);
  t.SetPending(dir, 1);
  ASSERT_OK(l->FillTree(t, dir, 0, WhiteoutMode::kAsInTar, HardLinkMetadata::kKeepTarget));
  EXPECT_EQ(ReadFile(*l, t, dir, "etc/os-release"), "ID=toc\n");
  EXPECT_EQ(ReadFile(*l, t, dir, "usr/bin/tool"), Entries()[2].content);
  // The format's own files are hidden in the full pass's tree too.
  EXPECT_FALSE(t.Lookup(dir, std::string(kEstargzTocName)).ok());
  // Once indexed without its TOC, the layer is not offered by TOC digest.
  EXPECT_FALSE(l->EnsureReadyFromToc().ok());
}

TEST_P(LayerSetTocTest, LandmarkedPrefixIsPrefetchedInTheBackground) {
  tt::FakeBlobSource src;
  // Landmark after etc/os-release and usr/bin/tool: those are prefetched.
  Built b = Make(&src, GetParam(), 3);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(b.desc, "", &src, b.toc.annotations);
  set.BuildInBackground(l);
  // The prefetch reads the chunks of the prefix: wait (bounded) for the
  // requests past the footer and TOC.
  bool prefetched = false;
  for (int i = 0; i < 500 && !prefetched; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    prefetched = l->state() == Layer::State::kReady && src.bytes_served() > 200000;
  }
  EXPECT_TRUE(prefetched) << "served " << src.bytes_served();
  // Only the prefix: var/log/last (300 KB, after the landmark) is not.
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_LT(src.bytes_served(), 200000u + 150000u);
  Tree t;
  Ino dir = t.AddDir(kRootIno, "l", 0755);
  t.SetPending(dir, 1);
  ASSERT_OK(l->FillTree(t, dir, 0, WhiteoutMode::kAsInTar, HardLinkMetadata::kKeepTarget));
  EXPECT_FALSE(t.Lookup(dir, std::string(kPrefetchLandmark)).ok());
}

INSTANTIATE_TEST_SUITE_P(Formats, LayerSetTocTest,
                         ::testing::Values(tt::TocStyle::kEstargz, tt::TocStyle::kZstdChunkedV1,
                                           tt::TocStyle::kZstdChunkedV2,
                                           tt::TocStyle::kStargzZstdChunked),
                         [](const ::testing::TestParamInfo<tt::TocStyle>& p) {
                           switch (p.param) {
                             case tt::TocStyle::kEstargz: return std::string("Estargz");
                             case tt::TocStyle::kLegacyStargz: return std::string("LegacyStargz");
                             case tt::TocStyle::kZstdChunkedV1: return std::string("ZstdChunkedV1");
                             case tt::TocStyle::kZstdChunkedV2: return std::string("ZstdChunkedV2");
                             case tt::TocStyle::kStargzZstdChunked: return std::string("StargzZstdChunked");
                           }
                           return std::string("Unknown");
                         });

}  // namespace
}  // namespace regfs
