// MirrorSet: manifests from the first endpoint that has them, blob reads
// that fail on one endpoint continuing on the next, a failed endpoint tried
// last for a while. Two fault servers play a mirror and the primary.
#include "reader/http/mirror_set.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/http/reader_fixture.h"

namespace regfs::testing {
namespace {

using nlohmann::json;

constexpr const char* kMirrorRepo = "cache/test/repo";  // the mirror's namespace

class MirrorSetTest : public ReaderTest {
 protected:
  void SetUp() override {
    ReaderTest::SetUp();
    ASSERT_OK(mirror_.Start());
    SetBlob(RandomBytes(3 << 20, 5));
    mirror_.AddResource(MirrorPath("blobs/" + blob_.digest), blob_data_);
  }
  void TearDown() override {
    set_.reset();
    for (int i = 0; i < 200 && mirror_.open_connections() != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(mirror_.open_connections(), 0);
    mirror_.Stop();
    ReaderTest::TearDown();
  }
  static std::string MirrorPath(const std::string& rest) {
    return std::string("/v2/") + kMirrorRepo + "/" + rest;
  }
  static std::string PrimaryPath(const std::string& rest) {
    return std::string("/v2/") + kRepo + "/" + rest;
  }

  // An image whose one layer is blob_, on the primary and (when `on_mirror`)
  // on the mirror, by tag "latest".
  void AddImage(bool on_mirror) {
    json config = {{"architecture", "amd64"},
                   {"os", "linux"},
                   {"rootfs", {{"type", "layers"}, {"diff_ids", {Sha256Digest("x")}}}}};
    config_ = config.dump();
    const std::string config_digest = Sha256Digest(config_);
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", std::string(kMediaTypeOciManifest)},
                     {"config",
                      {{"mediaType", std::string(kMediaTypeOciConfig)},
                       {"digest", config_digest},
                       {"size", config_.size()}}},
                     {"layers",
                      {{{"mediaType", std::string(kMediaTypeOciLayerGzip)},
                        {"digest", blob_.digest},
                        {"size", blob_.size}}}}};
    manifest_ = manifest.dump();
    server_.AddResource(PrimaryPath("blobs/" + config_digest), config_);
    server_.AddResource(PrimaryPath("manifests/latest"), manifest_,
                        std::string(kMediaTypeOciManifest));
    if (on_mirror) {
      mirror_.AddResource(MirrorPath("blobs/" + config_digest), config_);
      mirror_.AddResource(MirrorPath("manifests/latest"), manifest_,
                          std::string(kMediaTypeOciManifest));
    }
  }

  MirrorSet& Set() {
    if (!set_) {
      MirrorEndpoint m;
      m.location = mirror_.host_port() + "/cache";
      m.mirror = true;
      m.ref = Ref();
      m.ref.registry = mirror_.host_port();
      m.ref.repository = kMirrorRepo;
      m.options = options_;
      MirrorEndpoint p;
      p.location = server_.host_port();
      p.ref = Ref();
      p.options = options_;
      auto s = MirrorSet::Create({m, p}, fill_);
      EXPECT_OK(s);
      if (s.ok()) set_ = std::move(*s);
    }
    return *set_;
  }

  int MirrorBlobRequests() const {
    return mirror_.RequestCount(MirrorPath("blobs/" + blob_.digest));
  }
  int PrimaryBlobRequests() const {
    return server_.RequestCount(PrimaryPath("blobs/" + blob_.digest));
  }

  Status ReadSet(uint64_t offset, size_t len, std::string* out) {
    out->assign(len, '\0');
    return Set().ReadAt(blob_, offset,
                        std::span<uint8_t>(reinterpret_cast<uint8_t*>(out->data()), len));
  }

  // Short waits: the fault server's mirror is never really filling.
  MirrorFillOptions fill_ = [] {
    MirrorFillOptions f;
    f.assumed_bytes_per_s = 1e12;
    f.min_interval = std::chrono::milliseconds(10);
    f.max_interval = std::chrono::milliseconds(20);
    f.unproven_wait = std::chrono::milliseconds(60000);
    return f;
  }();
  FaultServer mirror_;
  std::unique_ptr<MirrorSet> set_;
  std::string config_, manifest_;
};

TEST_F(MirrorSetTest, MirrorServesManifestAndBlobs) {
  AddImage(/*on_mirror=*/true);
  auto img = Set().Resolve(Ref(), std::nullopt);
  ASSERT_OK(img);
  EXPECT_EQ(img->ref.registry, server_.host_port());  // the name as the user gave it
  EXPECT_EQ(Set().ManifestEndpoint(), mirror_.host_port() + "/cache");
  std::string got;
  ASSERT_OK(ReadSet(1000, 2 << 20, &got));
  EXPECT_EQ(got, Expected(1000, 2 << 20));
  EXPECT_EQ(server_.total_requests(), 0u) << "the primary must not be asked";
  EXPECT_EQ(MirrorBlobRequests(), 1);
  auto served = Set().ServedBy(blob_.digest);
  ASSERT_EQ(served.size(), 1u);
  EXPECT_EQ(served[mirror_.host_port() + "/cache"], uint64_t{2} << 20);
}

TEST_F(MirrorSetTest, MirrorWithoutTheManifestIsSkipped) {
  AddImage(/*on_mirror=*/false);
  auto img = Set().Resolve(Ref(), std::nullopt);
  ASSERT_OK(img);
  EXPECT_EQ(Set().ManifestEndpoint(), server_.host_port());
  std::string got;
  ASSERT_OK(ReadSet(0, 4096, &got));
  EXPECT_EQ(got, Expected(0, 4096));
  EXPECT_EQ(PrimaryBlobRequests(), 1);
  auto eps = Set().Endpoints();
  ASSERT_EQ(eps.size(), 2u);
  EXPECT_TRUE(eps[0].mirror);
  EXPECT_EQ(eps[0].failures, 1u);
  EXPECT_NE(eps[0].last_error.find("manifest"), std::string::npos) << eps[0].last_error;
  EXPECT_TRUE(eps[1].preferred);
}

TEST_F(MirrorSetTest, AllFailingSaysWhatEachSaid) {
  auto img = Set().Resolve(Ref(), std::nullopt);
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), Code::kNotFound);
  EXPECT_NE(img.status().message().find("mirrors also failed"), std::string::npos)
      << img.status().ToString();
  EXPECT_NE(img.status().message().find(kMirrorRepo), std::string::npos);
}

TEST_F(MirrorSetTest, ReadFailsOverToTheNextEndpointAndAvoidsTheDeadOneAfterwards) {
  AddImage(/*on_mirror=*/true);
  ASSERT_OK(Set().Resolve(Ref(), std::nullopt));
  const uint64_t before = mirror_.total_requests();
  // The mirror dies after the resolution.
  mirror_.Stop();
  std::string got;
  ASSERT_OK(ReadSet(100, 1 << 20, &got));
  EXPECT_EQ(got, Expected(100, 1 << 20));
  EXPECT_EQ(PrimaryBlobRequests(), 1);
  auto eps = Set().Endpoints();
  EXPECT_TRUE(eps[0].cooling_down);
  EXPECT_GE(eps[0].failures, 1u);
  // While it cools down, reads go to the primary first.
  ASSERT_OK(ReadSet(2 << 20, 4096, &got));
  EXPECT_EQ(got, Expected(2 << 20, 4096));
  EXPECT_EQ(PrimaryBlobRequests(), 2);
  EXPECT_EQ(mirror_.total_requests(), before);
  EXPECT_EQ(Set().ServedBy(blob_.digest)[server_.host_port()], (1u << 20) + 4096);
}

TEST_F(MirrorSetTest, StreamContinuesOnTheNextEndpointAfterTheBytesDelivered) {
  AddImage(/*on_mirror=*/true);
  ASSERT_OK(Set().Resolve(Ref(), std::nullopt));
  // The mirror sends half the range and resets; every later try fails.
  mirror_.AddFault(MirrorPath("blobs/" + blob_.digest), Fault{FaultKind::kResetMidBody});
  std::atomic<int> seen{0};
  mirror_.SetFaultPicker([&](const RecordedRequest& r) {
    if (r.path == MirrorPath("blobs/" + blob_.digest) && seen++ >= 0) {
      return Fault{FaultKind::kInternalError};
    }
    return Fault{};
  });
  std::string got;
  const uint64_t off = 12345, len = 2 << 20;
  ASSERT_OK(Set().ReadStream(blob_, off, len, [&](std::span<const uint8_t> b) {
    got.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  }));
  EXPECT_EQ(got, Expected(off, len));
  auto served = Set().ServedBy(blob_.digest);
  const uint64_t from_mirror = served[mirror_.host_port() + "/cache"];
  const uint64_t from_primary = served[server_.host_port()];
  EXPECT_GT(from_mirror, 0u);
  EXPECT_EQ(from_mirror + from_primary, len);
  // The primary was asked only for what the mirror had not delivered.
  bool found = false;
  for (const RecordedRequest& r : server_.requests()) {
    if (r.path != PrimaryPath("blobs/" + blob_.digest)) continue;
    found = true;
    EXPECT_EQ(r.Header("range"),
              "bytes=" + std::to_string(off + from_mirror) + "-" + std::to_string(off + len - 1));
  }
  EXPECT_TRUE(found);
}

TEST_F(MirrorSetTest, ARangeOutsideTheBlobFailsWithoutBlamingAnEndpoint) {
  AddImage(/*on_mirror=*/true);
  ASSERT_OK(Set().Resolve(Ref(), std::nullopt));
  std::string got;
  EXPECT_EQ(ReadSet(blob_.size - 10, 20, &got).code(), Code::kRangeNotSatisfiable);
  for (const EndpointReport& e : Set().Endpoints()) {
    EXPECT_EQ(e.failures, 0u) << e.location;
    EXPECT_FALSE(e.cooling_down) << e.location;
  }
}

TEST_F(MirrorSetTest, ASinkErrorIsNotRetriedElsewhere) {
  AddImage(/*on_mirror=*/true);
  ASSERT_OK(Set().Resolve(Ref(), std::nullopt));
  Status st = Set().ReadStream(
      blob_, 0, 1 << 20, [](std::span<const uint8_t>) { return Status::IoError("disk full"); });
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_EQ(PrimaryBlobRequests(), 0);
  EXPECT_EQ(Set().Endpoints()[0].failures, 0u);
}

// A pull-through cache still filling its copy answers a Range request with
// the whole blob (200), streamed from the upstream for this request alone:
// regfs drops such an answer at its headers and asks again once the mirror
// should have the blob, taking nothing from the whole answers.
TEST_F(MirrorSetTest, AFillingMirrorIsAskedAgainNotStreamedFrom) {
  const std::string path = MirrorPath("blobs/" + blob_.digest);
  mirror_.AddFault(path, Fault{FaultKind::kIgnoreRange}, 2);
  std::string got;
  ASSERT_OK(ReadSet(1 << 20, 4096, &got));
  EXPECT_EQ(got, Expected(1 << 20, 4096));
  std::vector<int> statuses;
  for (const RecordedRequest& r : mirror_.requests()) {
    if (r.path == path) statuses.push_back(r.status);
  }
  EXPECT_EQ(statuses, (std::vector<int>{200, 200, 206}));
  EXPECT_EQ(Set().Counters().bytes, 4096u) << "bytes taken from the whole answers";
  EXPECT_EQ(server_.total_requests(), 0u);
  const EndpointReport e = Set().Endpoints()[0];
  EXPECT_EQ(e.filling_answers, 2u);
  EXPECT_EQ(e.fills_waited, 1u);
  EXPECT_EQ(e.failures, 0u);
  // Served now: a later read asks once.
  ASSERT_OK(ReadSet(2 << 20, 4096, &got));
  EXPECT_EQ(got, Expected(2 << 20, 4096));
  EXPECT_EQ(MirrorBlobRequests(), 4);
}

// Readers of a blob the mirror is filling wait for one asker's answer
// instead of asking (and costing the upstream a fetch) each.
TEST_F(MirrorSetTest, ReadersOfAFillingBlobAskOneAtATime) {
  const std::string path = MirrorPath("blobs/" + blob_.digest);
  std::atomic<int> whole_answers{0};
  mirror_.SetFaultPicker([&](const RecordedRequest& r) {
    if (r.path == path && whole_answers.load() < 3) {
      ++whole_answers;
      return Fault{FaultKind::kIgnoreRange};
    }
    return Fault{};
  });
  constexpr int kReaders = 4;
  constexpr size_t kLen = 256 << 10;
  std::vector<std::string> got(kReaders);
  std::vector<Status> st(kReaders);
  Set();
  std::vector<std::thread> threads;
  for (int i = 0; i < kReaders; ++i) {
    threads.emplace_back(
        [&, i] { st[i] = ReadSet(static_cast<uint64_t>(i) * kLen, kLen, &got[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kReaders; ++i) {
    ASSERT_OK(st[i]);
    EXPECT_EQ(got[i], Expected(static_cast<uint64_t>(i) * kLen, kLen)) << i;
  }
  int whole = 0, ranged = 0;
  for (const RecordedRequest& r : mirror_.requests()) {
    if (r.path != path) continue;
    (r.status == 200 ? whole : ranged)++;
  }
  EXPECT_EQ(whole, 3);
  EXPECT_EQ(ranged, kReaders);
  EXPECT_EQ(Set().Counters().bytes, uint64_t{kReaders} * kLen);
}

// A mirror that goes on answering whole: one answer is read to its end
// (a cache that fills its copy from the answer it streams needs that), its
// bytes outside the range kept as spare chunks; after that the mirror is
// taken for one without ranges, and its answers windowed at once.
TEST_F(MirrorSetTest, AMirrorThatNeverServesRangesIsReadWholeOnceThenWindowed) {
  fill_.unproven_wait = std::chrono::milliseconds(50);
  const std::string path = MirrorPath("blobs/" + blob_.digest);
  mirror_.SetFaultPicker([&](const RecordedRequest& r) {
    return r.path == path ? Fault{FaultKind::kIgnoreRange} : Fault{};
  });
  std::mutex mu;
  std::set<uint64_t> spare;
  Set().SetSpareChunkHandler(
      1 << 20, [&](const BlobDescriptor&, uint64_t offset, std::span<const uint8_t> bytes) {
        std::lock_guard lock(mu);
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                  Expected(offset, bytes.size()));
        spare.insert(offset);
      });
  std::string got;
  ASSERT_OK(ReadSet((1 << 20) + 10, 4096, &got));
  EXPECT_EQ(got, Expected((1 << 20) + 10, 4096));
  {
    std::lock_guard lock(mu);
    // Chunks 0 and 2 were whole in the answer; chunk 1 holds the range.
    EXPECT_EQ(spare, (std::set<uint64_t>{0, 2 << 20}));
  }
  EXPECT_GE(Set().Endpoints()[0].filling_answers, 2u);
  // Still whole after the read: waited for up to twice as long, then windowed.
  ASSERT_OK(ReadSet(5000, 4096, &got));
  EXPECT_EQ(got, Expected(5000, 4096));
  // From now on windowed at once: one request per read.
  const int before = MirrorBlobRequests();
  ASSERT_OK(ReadSet(7000, 4096, &got));
  EXPECT_EQ(got, Expected(7000, 4096));
  EXPECT_EQ(MirrorBlobRequests(), before + 1);
  EXPECT_EQ(server_.total_requests(), 0u);
}

}  // namespace
}  // namespace regfs::testing
