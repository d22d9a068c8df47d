// Manifest fetching, digest verification and ResolveImage against the fault
// server acting as a registry.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/http/reader_fixture.h"

namespace regfs::testing {
namespace {

using nlohmann::json;

class Resolve : public ReaderTest {
 protected:
  // Registers a config + manifest for `arch`; returns the manifest digest.
  std::string AddImage(const std::string& arch, std::string* manifest_bytes = nullptr) {
    json config = {{"architecture", arch},
                   {"os", "linux"},
                   {"rootfs", {{"type", "layers"}, {"diff_ids", {Sha256Digest("layer-" + arch)}}}}};
    std::string config_bytes = config.dump();
    std::string config_digest = Sha256Digest(config_bytes);
    server_.AddResource(BlobPath(config_digest), config_bytes);
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", std::string(kMediaTypeOciManifest)},
                     {"config",
                      {{"mediaType", std::string(kMediaTypeOciConfig)},
                       {"digest", config_digest},
                       {"size", config_bytes.size()}}},
                     {"layers",
                      {{{"mediaType", std::string(kMediaTypeOciLayerGzip)},
                        {"digest", blob_.digest},
                        {"size", blob_.size}}}}};
    std::string bytes = manifest.dump();
    std::string digest = Sha256Digest(bytes);
    server_.AddResource(ManifestPath(digest), bytes, std::string(kMediaTypeOciManifest));
    if (manifest_bytes) *manifest_bytes = bytes;
    return digest;
  }
  static std::string ManifestPath(const std::string& ref) {
    return std::string("/v2/") + kRepo + "/manifests/" + ref;
  }
};

TEST_F(Resolve, SingleManifestByTag) {
  std::string bytes;
  std::string digest = AddImage("amd64", &bytes);
  server_.AddResource(ManifestPath("latest"), bytes, std::string(kMediaTypeOciManifest),
                      {{"Docker-Content-Digest", digest}});
  auto img = ResolveImage(client(), Ref());
  ASSERT_OK(img);
  EXPECT_EQ(img->manifest_digest, digest);
  EXPECT_EQ(img->manifest_bytes, bytes);
  EXPECT_FALSE(img->index_bytes);
  EXPECT_EQ(img->platform.architecture, "amd64");
  ASSERT_EQ(img->manifest.layers.size(), 1u);
  EXPECT_EQ(img->manifest.layers[0].digest, blob_.digest);
  // The manifest request Accepts all four manifest types.
  for (const auto& r : server_.requests()) {
    if (r.path == ManifestPath("latest")) {
      std::string accept = r.Header("accept");
      for (auto mt : {kMediaTypeOciIndex, kMediaTypeOciManifest, kMediaTypeDockerManifestList,
                      kMediaTypeDockerManifest}) {
        EXPECT_NE(accept.find(mt), std::string::npos) << mt;
      }
    }
  }
}

TEST_F(Resolve, IndexPicksRequestedPlatformAndSkipsUnknownTypes) {
  std::string amd_bytes, arm_bytes;
  std::string amd = AddImage("amd64", &amd_bytes), arm = AddImage("arm64", &arm_bytes);
  json index = {
      {"schemaVersion", 2},
      {"mediaType", std::string(kMediaTypeOciIndex)},
      {"manifests",
       {{{"mediaType", "application/vnd.example.unknown+json"},
         {"digest", Sha256Digest("x")},
         {"size", 1},
         {"platform", {{"os", "linux"}, {"architecture", "arm64"}}}},
        {{"mediaType", std::string(kMediaTypeOciManifest)},
         {"digest", amd},
         {"size", amd_bytes.size()},
         {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}},
        {{"mediaType", std::string(kMediaTypeOciManifest)},
         {"digest", arm},
         {"size", arm_bytes.size()},
         {"platform", {{"os", "linux"}, {"architecture", "arm64"}, {"variant", "v8"}}}}}}};
  std::string bytes = index.dump();
  server_.AddResource(ManifestPath("latest"), bytes, std::string(kMediaTypeOciIndex));
  Platform want;
  want.os = "linux";
  want.architecture = "arm64";
  auto img = ResolveImage(client(), Ref(), want);
  ASSERT_OK(img);
  EXPECT_EQ(img->manifest_digest, arm);
  ASSERT_TRUE(img->index_bytes);
  EXPECT_EQ(*img->index_bytes, bytes);
  EXPECT_EQ(img->index_digest, Sha256Digest(bytes));
  EXPECT_EQ(img->platform.architecture, "arm64");
  EXPECT_EQ(img->config.platform.architecture, "arm64");

  want.architecture = "s390x";
  auto none = ResolveImage(client(), Ref(), want);
  EXPECT_EQ(none.status().code(), Code::kNotFound);
}

TEST_F(Resolve, TagDigestHeaderMismatchIsCorrupt) {
  std::string bytes;
  AddImage("amd64", &bytes);
  server_.AddResource(ManifestPath("latest"), bytes, std::string(kMediaTypeOciManifest),
                      {{"Docker-Content-Digest", Sha256Digest("something else")}});
  auto m = client().GetManifest("latest");
  EXPECT_EQ(m.status().code(), Code::kCorrupt);
}

TEST_F(Resolve, ManifestByDigestIsVerified) {
  std::string digest = AddImage("amd64");
  server_.AddResource(ManifestPath(digest), "{\"tampered\":true}",
                      std::string(kMediaTypeOciManifest));
  auto m = client().GetManifest(digest);
  EXPECT_EQ(m.status().code(), Code::kCorrupt);
}

TEST_F(Resolve, ConfigBlobIsVerified) {
  BlobDescriptor d;
  d.digest = Sha256Digest("real config");
  d.size = 11;
  server_.AddResource(BlobPath(d.digest), "fake config");  // same size, other bytes
  EXPECT_EQ(client().GetBlob(d).status().code(), Code::kCorrupt);
  server_.AddResource(BlobPath(d.digest), "real config");
  auto ok = client().GetBlob(d);
  ASSERT_OK(ok);
  EXPECT_EQ(*ok, "real config");
}

// A config whose DiffIDs do not pair with the manifest's layers: a layer
// without its DiffID could not be checked against it, so the image is
// refused (as the store already refused it).
TEST_F(Resolve, DiffIdCountMustMatchTheLayers) {
  std::string bytes;
  AddImage("amd64", &bytes);
  json manifest = json::parse(bytes);
  manifest["layers"].push_back(manifest["layers"][0]);  // two layers, one DiffID
  std::string two = manifest.dump();
  server_.AddResource(ManifestPath("latest"), two, std::string(kMediaTypeOciManifest));
  auto img = ResolveImage(client(), Ref());
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), Code::kCorrupt) << img.status().ToString();
  EXPECT_NE(img.status().message().find("diff_ids"), std::string::npos) << img.status().ToString();
}

TEST_F(Resolve, UnknownManifestIsNotFound) {
  auto m = client().GetManifest("nosuchtag");
  EXPECT_EQ(m.status().code(), Code::kNotFound);
  EXPECT_NE(m.status().message().find("MANIFEST_UNKNOWN"), std::string::npos);
  EXPECT_EQ(client().GetManifest("bad tag!").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace regfs::testing
