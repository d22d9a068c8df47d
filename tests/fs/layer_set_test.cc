// The layer lifecycle (fs/layer_set.h) without a mount: retries after a
// failed build, bounded waits, exceptions, one handle per digest, the
// decompressed copy of single-frame zstd layers, and the DiffID check. Each
// of these was a defect of the two per-front-end state machines it replaced.
#include "fs/layer_set.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "reader/base/digest.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"

namespace regfs {
namespace {

using std::chrono::milliseconds;
namespace tt = regfs::testing;

constexpr const char* kGzipType = "application/vnd.oci.image.layer.v1.tar+gzip";
constexpr const char* kZstdType = "application/vnd.oci.image.layer.v1.tar+zstd";

struct TestLayer {
  std::string tar;
  std::string blob;
  BlobDescriptor desc;
  std::string diff_id;
};

TestLayer MakeLayer(tt::FakeBlobSource* src, bool zstd = false, int tag = 0) {
  TestLayer l;
  l.tar = tt::BuildTar({tt::TarEntry::Dir("etc"),
                        tt::TarEntry::File("etc/os-release", "ID=test" + std::to_string(tag)),
                        tt::TarEntry::File("big", std::string(300000, 'x'))});
  l.blob = zstd ? tt::ZstdCompress(l.tar) : tt::GzipCompress(l.tar);
  l.desc = src->AddBlob(l.blob, zstd ? kZstdType : kGzipType);
  l.diff_id = Sha256Digest(l.tar);
  return l;
}

LayerSetOptions FastOptions() {
  LayerSetOptions o;
  o.backoff_min = milliseconds(20);
  o.backoff_max = milliseconds(40);
  o.wait_timeout = milliseconds(2000);
  return o;
}

class LayerSetTest : public tt::FdCheckedTest {};

TEST_F(LayerSetTest, OneHandlePerDigestWhileHeld) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> a = set.Get(t.desc, t.diff_id, &src);
  std::shared_ptr<Layer> b = set.Get(t.desc, t.diff_id, &src);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(set.LiveCount(), 1u);
  a.reset();
  b.reset();
  EXPECT_EQ(set.LiveCount(), 0u);
}

TEST_F(LayerSetTest, FailedBuildIsRetriedAfterBackoff) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(t.desc, t.diff_id, &src);
  src.FailNext(1000, Status::Transient("registry down"));
  Status first = l->EnsureReady();
  EXPECT_FALSE(first.ok());
  EXPECT_EQ(l->state(), Layer::State::kFailed);
  src.FailNext(0, Status::Ok());
  std::this_thread::sleep_for(milliseconds(60));  // past the backoff
  ASSERT_OK(l->EnsureReady());
  EXPECT_EQ(l->state(), Layer::State::kReady);
  std::string buf(8, '\0');
  Result<size_t> n = l->ReadUncompressed(0, std::span(reinterpret_cast<uint8_t*>(buf.data()), 8));
  ASSERT_OK(n.status());
  EXPECT_EQ(buf, t.tar.substr(0, 8));
}

// A source whose reads throw: an exception inside a build must end the
// build as failed, never leave the layer "building" with waiters hanging.
class ThrowingSource : public BlobSource {
 public:
  Status ReadAt(const BlobDescriptor&, uint64_t, std::span<uint8_t>) override {
    throw std::runtime_error("boom");
  }
};

TEST_F(LayerSetTest, ExceptionInBuildFailsTheLayer) {
  ThrowingSource src;
  BlobDescriptor d{kGzipType, Sha256Digest("x"), 1000};
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(d, "", &src);
  Status s = l->EnsureReady();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("boom"), std::string::npos) << s.ToString();
  EXPECT_EQ(l->state(), Layer::State::kFailed);
}

TEST_F(LayerSetTest, WaitForABuildInProgressIsBounded) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSetOptions o = FastOptions();
  o.wait_timeout = milliseconds(300);
  LayerSet set(o);
  std::shared_ptr<Layer> l = set.Get(t.desc, t.diff_id, &src);
  src.HoldRequests();
  auto builder = std::async(std::launch::async, [&] { return l->EnsureReady(); });
  while (l->state() != Layer::State::kBuilding) std::this_thread::sleep_for(milliseconds(1));
  // A second caller waits for the stalled build, and gives up.
  Status waited = l->EnsureReady();
  EXPECT_EQ(waited.code(), Code::kTransient) << waited.ToString();
  src.ReleaseRequests();
  ASSERT_OK(builder.get());
  ASSERT_OK(l->EnsureReady());
}

TEST_F(LayerSetTest, CancelStopsABuildAndLaterCallsFailFast) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(t.desc, t.diff_id, &src);
  set.Cancel();
  Status s = l->EnsureReady();
  EXPECT_EQ(s.code(), Code::kTransient) << s.ToString();
  EXPECT_EQ(src.requests(), 0u);
}

// An index pass reads ahead of itself, in a window that grows with the pass:
// a blob that is not the tar it claims to be fails at its first header and
// must not have had 32 MiB queued behind it (the WAN bench's random 100 MiB
// "tar" layer had 37.7 MB fetched at mount, with no read at all).
TEST_F(LayerSetTest, IndexPassReadAheadGrowsWithThePass) {
  tt::FakeBlobSource src;
  std::mutex mu;
  uint64_t asked = 0, furthest = 0;
  LayerSetOptions o = FastOptions();
  o.read_ahead = [&](BlobSource*, const BlobDescriptor&, uint64_t off, uint64_t len) {
    std::lock_guard<std::mutex> lock(mu);
    asked = std::max(asked, len);
    furthest = std::max(furthest, off + len);
  };
  LayerSet set(o);
  const BlobDescriptor garbage =
      src.AddBlob(tt::DeterministicBytes(7, 40u << 20), "application/vnd.oci.image.layer.v1.tar");
  std::shared_ptr<Layer> bad = set.Get(garbage, "", &src);
  EXPECT_EQ(bad->EnsureReady().code(), Code::kCorrupt);
  EXPECT_GT(furthest, 0u);
  // The pass's first read (4 MiB of buffer) and one first window.
  EXPECT_LE(furthest, 8u << 20) << "queued ahead of a pass that read one header";

  // A real layer still has its read-ahead grow past the first window.
  asked = furthest = 0;
  const std::string tar =
      tt::BuildTar({tt::TarEntry::File("a", tt::DeterministicBytes(1, 24u << 20)),
                    tt::TarEntry::File("b", "end")});
  const BlobDescriptor good = src.AddBlob(tar, "application/vnd.oci.image.layer.v1.tar");
  std::shared_ptr<Layer> l = set.Get(good, Sha256Digest(tar), &src);
  EXPECT_OK(l->EnsureReady());
  EXPECT_GT(asked, 4u << 20);
  EXPECT_EQ(furthest, tar.size());
}

TEST_F(LayerSetTest, DiffIdMismatchFailsTheLayer) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(t.desc, Sha256Digest("another tar"), &src);
  Status s = l->EnsureReady();
  EXPECT_EQ(s.code(), Code::kCorrupt) << s.ToString();
  uint8_t b[4];
  EXPECT_FALSE(l->ReadUncompressed(0, b).ok());
}

TEST_F(LayerSetTest, FillTreeOnceAndAgainForASecondTree) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src);
  LayerSet set(FastOptions());
  std::shared_ptr<Layer> l = set.Get(t.desc, t.diff_id, &src);
  Tree a, b;
  Ino da = a.AddDir(kRootIno, "l"), db = b.AddDir(kRootIno, "l");
  a.SetPending(da, 1);
  b.SetPending(db, 1);
  ASSERT_OK(l->FillTree(a, da, 0, WhiteoutMode::kOverlay, HardLinkMetadata::kApplyLinkHeader));
  ASSERT_OK(l->FillTree(a, da, 0, WhiteoutMode::kOverlay, HardLinkMetadata::kApplyLinkHeader));
  // The entries were handed to the first tree; the second rebuilds them
  // (no index store here) from the blob.
  ASSERT_OK(l->FillTree(b, db, 0, WhiteoutMode::kAsInTar, HardLinkMetadata::kKeepTarget));
  for (Tree* tr : {&a, &b}) {
    Ino dir = tr == &a ? da : db;
    EXPECT_EQ(tr->PendingId(dir), 0u);
    Result<Ino> etc = tr->Lookup(dir, "etc");
    ASSERT_OK(etc.status());
    Result<Ino> f = tr->Lookup(*etc, "os-release");
    ASSERT_OK(f.status());
    // Exactly one child of dir "l" named etc: filling twice added nothing.
    int n = 0;
    ASSERT_OK(tr->ReadDir(dir, 2, [&](const DirEntry&, uint64_t) { return ++n, true; }));
    EXPECT_EQ(n, 2);  // etc, big
  }
}

TEST_F(LayerSetTest, SingleFrameZstdIsKeptDecompressedAndBombsAreNot) {
  tt::FakeBlobSource src;
  TestLayer t = MakeLayer(&src, /*zstd=*/true);
  // A small zstd layer that decompresses to far more than ratio x size.
  std::string bomb_tar = tt::BuildTar({tt::TarEntry::File("zeros", std::string(8 << 20, '\0'))});
  std::string bomb_blob = tt::ZstdCompress(bomb_tar);
  BlobDescriptor bomb = src.AddBlob(bomb_blob, kZstdType);
  std::atomic<int> wrapped{0};
  LayerSetOptions o = FastOptions();
  o.raw_max_ratio = 4;
  o.raw_slack = 1 << 20;
  o.make_cached = [&](BlobSource* upstream) -> std::unique_ptr<BlobSource> {
    ++wrapped;
    return std::make_unique<BlobSourceWrapper>(upstream);
  };
  LayerSet set(o);
  std::shared_ptr<Layer> small = set.Get(t.desc, t.diff_id, &src);
  std::shared_ptr<Layer> big = set.Get(bomb, Sha256Digest(bomb_tar), &src);
  ASSERT_OK(small->EnsureReady());
  ASSERT_OK(big->EnsureReady());
  EXPECT_TRUE(small->Snapshot().raw_cached);
  EXPECT_FALSE(big->Snapshot().raw_cached);
  EXPECT_EQ(wrapped.load(), 1);
  uint8_t b[16];
  Result<size_t> n = small->ReadUncompressed(t.tar.size() - 16, b);
  ASSERT_OK(n.status());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(b), 16), t.tar.substr(t.tar.size() - 16));
}

TEST_F(LayerSetTest, BackgroundBuildsAndConcurrentCallers) {
  tt::FakeBlobSource src;
  std::vector<TestLayer> ls;
  for (int i = 0; i < 3; ++i) ls.push_back(MakeLayer(&src, false, i));
  LayerSet set(FastOptions());
  std::vector<std::shared_ptr<Layer>> layers;
  for (auto& t : ls) layers.push_back(set.Get(t.desc, t.diff_id, &src));
  for (auto& l : layers) set.BuildInBackground(l);
  std::vector<std::thread> callers;
  std::atomic<int> ok{0};
  for (int i = 0; i < 6; ++i) {
    callers.emplace_back([&, i] { ok += layers[i % 3]->EnsureReady().ok(); });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(ok.load(), 6);
}

}  // namespace
}  // namespace regfs
