// MirrorSet: manifests from the first endpoint that has them, blob reads
// that fail on one endpoint continuing on the next, a failed endpoint tried
// last for a while. Two fault servers play a mirror and the primary.
#include "reader/http/mirror_set.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>

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
      auto s = MirrorSet::Create({m, p});
      EXPECT_OK(s);
      if (s.ok()) set_ = std::move(*s);
    }
    return *set_;
  }

  int MirrorBlobRequests() const { return mirror_.RequestCount(MirrorPath("blobs/" + blob_.digest)); }
  int PrimaryBlobRequests() const { return server_.RequestCount(PrimaryPath("blobs/" + blob_.digest)); }

  Status ReadSet(uint64_t offset, size_t len, std::string* out) {
    out->assign(len, '\0');
    return Set().ReadAt(blob_, offset,
                        std::span<uint8_t>(reinterpret_cast<uint8_t*>(out->data()), len));
  }

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
    EXPECT_EQ(r.Header("range"), "bytes=" + std::to_string(off + from_mirror) + "-" +
                                     std::to_string(off + len - 1));
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
  Status st = Set().ReadStream(blob_, 0, 1 << 20, [](std::span<const uint8_t>) {
    return Status::IoError("disk full");
  });
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_EQ(PrimaryBlobRequests(), 0);
  EXPECT_EQ(Set().Endpoints()[0].failures, 0u);
}

}  // namespace
}  // namespace regfs::testing
