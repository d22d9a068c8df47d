// RegistryClient and ResolveImage against the real docker-registry
// (distribution 2.8) in each auth mode, with images built and pushed by the
// test: OCI manifest, Docker schema 2, OCI index, Docker manifest list.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>

#include "reader/base/digest.h"
#include "reader/http/registry_client.h"
#include "reader/image/reference.h"
#include "reader/base/file_util.h"
#include "tests/support/fault_server.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {
namespace {

class RealRegistry : public FdCheckedTest {
 protected:
  void TearDown() override {
    if (registry_) registry_->Stop();
    registry_.reset();
    FdCheckedTest::TearDown();
  }

  // False (with the test skipped) when the registry binary is missing.
  bool StartRegistry(RegistryAuth auth) {
    if (!std::filesystem::exists("/usr/bin/docker-registry")) return false;
    TestRegistryOptions o;
    o.auth = auth;
    registry_ = std::make_unique<TestRegistry>(o);
    Status st = registry_->Start();
    EXPECT_OK(st);
    return st.ok();
  }

  RegistryClientOptions Options(bool with_creds) const {
    RegistryClientOptions o;
    o.tls_verify = false;
    o.credentials.use_env = false;
    if (with_creds) {
      o.credentials.explicit_creds =
          Credentials{registry_->options().username, registry_->options().password, "test"};
    }
    return o;
  }

  static ImageSpec Spec(const std::string& arch, ManifestFormat format, const std::string& tag) {
    ImageSpec s;
    s.platform = Platform{"linux", arch, arch == "arm64" ? "v8" : ""};
    s.format = format;
    LayerSpec l;
    l.entries = SampleEntries(tag);
    s.layers.push_back(l);
    return s;
  }

  // Resolves `tag` and checks it against `image`, reading its first layer
  // whole and by ranges.
  void ExpectResolves(RegistryClient& client, const std::string& tag, const BuiltImage& image,
                      const std::optional<Platform>& platform = std::nullopt) {
    auto ref = ParseReference(registry_->Ref("test/img", tag));
    ASSERT_OK(ref);
    auto img = ResolveImage(client, *ref, platform);
    ASSERT_OK(img);
    EXPECT_EQ(img->manifest_digest, image.manifest_descriptor.digest) << tag;
    EXPECT_EQ(img->manifest_bytes, image.manifest);
    EXPECT_EQ(img->config_bytes, image.config);
    EXPECT_EQ(img->platform.architecture, image.platform.architecture);
    ASSERT_EQ(img->manifest.layers.size(), image.layers.size());
    const BuiltLayer& layer = image.layers[0];
    std::vector<uint8_t> whole(layer.blob.size());
    ASSERT_OK(client.ReadAt(img->manifest.layers[0], 0, whole));
    EXPECT_EQ(std::string(whole.begin(), whole.end()), layer.blob);
    if (layer.blob.size() > 20) {
      std::vector<uint8_t> part(10);
      ASSERT_OK(client.ReadAt(img->manifest.layers[0], 7, part));
      EXPECT_EQ(std::string(part.begin(), part.end()), layer.blob.substr(7, 10));
    }
  }

  std::unique_ptr<TestRegistry> registry_;
};

TEST_F(RealRegistry, ResolvesAllFourManifestFormats) {
  if (!StartRegistry(RegistryAuth::kAnonymous)) GTEST_SKIP() << "no /usr/bin/docker-registry";
  ImagePusher pusher(*registry_);
  BuiltImage oci = BuildImage(Spec("amd64", ManifestFormat::kOci, "oci"));
  BuiltImage docker = BuildImage(Spec("amd64", ManifestFormat::kDocker, "docker"));
  ASSERT_OK(pusher.PushImage("test/img", "oci", oci));
  ASSERT_OK(pusher.PushImage("test/img", "docker", docker));
  for (ManifestFormat f : {ManifestFormat::kOci, ManifestFormat::kDocker}) {
    IndexSpec is;
    is.format = f;
    is.add_unknown_media_type_entry = true;
    is.images = {Spec("amd64", f, "idx-amd64"), Spec("arm64", f, "idx-arm64")};
    BuiltIndex index = BuildIndex(is);
    std::string tag = f == ManifestFormat::kOci ? "ociindex" : "dockerlist";
    ASSERT_OK(pusher.PushIndex("test/img", tag, index));
    auto ref = ParseReference(registry_->Ref("test/img", tag));
    ASSERT_OK(ref);
    auto client = RegistryClient::Create(*ref, Options(false));
    ASSERT_OK(client);
    ExpectResolves(**client, tag, index.images[1], Platform{"linux", "arm64", "v8"});
    ExpectResolves(**client, tag, index.images[0], Platform{"linux", "amd64", ""});
    auto img = ResolveImage(**client, *ref, Platform{"linux", "arm64", "v8"});
    ASSERT_OK(img);
    ASSERT_TRUE(img->index_bytes);
    EXPECT_EQ(*img->index_bytes, index.body);
    EXPECT_EQ(img->index_digest, index.descriptor.digest);
  }
  auto ref = ParseReference(registry_->Ref("test/img", "oci"));
  ASSERT_OK(ref);
  auto client = RegistryClient::Create(*ref, Options(false));
  ASSERT_OK(client);
  ExpectResolves(**client, "oci", oci);
  ExpectResolves(**client, "docker", docker);
  // By digest too.
  ExpectResolves(**client, oci.manifest_descriptor.digest, oci);
  EXPECT_EQ((*client)->BaseUrl(), "http://" + registry_->HostPort());
}

TEST_F(RealRegistry, RedirectFromHttpsToPlainHttpRefused) {
  // An https registry whose blobs redirect to plain http (as storage behind
  // a misconfigured CDN would): the blob would cross in clear, and the
  // redirect is not followed at all.
  if (!std::filesystem::exists("/usr/bin/docker-registry")) GTEST_SKIP() << "no docker-registry";
  FaultServer plain;
  ASSERT_OK(plain.Start());
  TestRegistryOptions ro;
  ro.tls = true;
  ro.redirect_base_url = plain.url() + "/";
  registry_ = std::make_unique<TestRegistry>(ro);
  ASSERT_OK(registry_->Start());
  ImagePusher pusher(*registry_);
  BuiltImage img = BuildImage(Spec("amd64", ManifestFormat::kOci, "redirect"));
  ASSERT_OK(pusher.PushImage("test/img", "v1", img));
  auto ref = ParseReference(registry_->Ref("test/img", "v1"));
  ASSERT_OK(ref);
  RegistryClientOptions o;
  o.credentials.use_env = false;
  o.retry.total_budget = std::chrono::milliseconds(10000);
  Result<std::string> ca = ReadFileToString(registry_->tls_cert_path());
  ASSERT_OK(ca);
  o.extra_ca_pem = *ca;
  auto client = RegistryClient::Create(*ref, o);
  ASSERT_OK(client);
  // The manifest is served by the registry itself; the config blob redirects.
  ASSERT_OK((*client)->GetManifest("v1"));
  Result<std::string> config = (*client)->GetBlob(img.config_descriptor);
  EXPECT_EQ(config.status().code(), Code::kProtocol) << config.status().ToString();
  EXPECT_NE(config.status().message().find("https to plain http"), std::string::npos)
      << config.status().ToString();
  EXPECT_EQ(plain.total_requests(), 0u);
  client->reset();
  int open = -1;
  for (int i = 0; i < 200 && (open = plain.open_connections()) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(open, 0);
  plain.Stop();
}

TEST_F(RealRegistry, BasicAuth) {
  if (!StartRegistry(RegistryAuth::kBasic)) GTEST_SKIP() << "no /usr/bin/docker-registry";
  ImagePusher pusher(*registry_);
  BuiltImage oci = BuildImage(Spec("amd64", ManifestFormat::kOci, "basic"));
  ASSERT_OK(pusher.PushImage("test/img", "v1", oci));
  auto ref = ParseReference(registry_->Ref("test/img", "v1"));
  ASSERT_OK(ref);
  auto client = RegistryClient::Create(*ref, Options(true));
  ASSERT_OK(client);
  ExpectResolves(**client, "v1", oci);
  auto anon = RegistryClient::Create(*ref, Options(false));
  ASSERT_OK(anon);
  EXPECT_EQ((*anon)->GetManifest("v1").status().code(), Code::kUnauthorized);
}

TEST_F(RealRegistry, TokenAuth) {
  if (!StartRegistry(RegistryAuth::kToken)) GTEST_SKIP() << "no /usr/bin/docker-registry";
  ImagePusher pusher(*registry_);
  BuiltImage oci = BuildImage(Spec("amd64", ManifestFormat::kOci, "token"));
  ASSERT_OK(pusher.PushImage("test/img", "v1", oci));
  auto ref = ParseReference(registry_->Ref("test/img", "v1"));
  ASSERT_OK(ref);
  auto client = RegistryClient::Create(*ref, Options(true));
  ASSERT_OK(client);
  ExpectResolves(**client, "v1", oci);
  EXPECT_EQ((*client)->Counters().token_fetches, 1u);
  auto anon = RegistryClient::Create(*ref, Options(false));
  ASSERT_OK(anon);
  EXPECT_EQ((*anon)->GetManifest("v1").status().code(), Code::kUnauthorized);
}

}  // namespace
}  // namespace regfs::testing
