// `regfs inspect` for real against docker-registry: OCI manifests, Docker
// schema 2, OCI indexes and Docker manifest lists; --platform; basic and
// token auth with --creds and an auth file; https with the registry's own CA.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "reader/image/manifest.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT

ImageSpec Spec(const char* tag, Platform p, ManifestFormat f = ManifestFormat::kOci) {
  ImageSpec s;
  s.layers.push_back({SampleEntries(tag), Compression::kGzip});
  s.layers.push_back({SampleEntries(std::string(tag) + "2"), Compression::kZstd});
  s.platform = p;
  s.format = f;
  return s;
}

class InspectTest : public FdCheckedTest {
 protected:
  CommandResult Inspect(const std::string& ref, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {REGFS_BINARY, "inspect", "--json", "--tls-verify=false",
                                     "--retry-timeout", "5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(ref);
    return RunCommand(argv);
  }
  static nlohmann::json Json(const CommandResult& r) {
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    return j.is_discarded() ? nlohmann::json::object() : j;
  }
  static void ExpectImage(const nlohmann::json& j, const BuiltImage& img) {
    EXPECT_EQ(j["digest"], img.manifest_descriptor.digest);
    EXPECT_EQ(j["mediaType"], img.manifest_descriptor.media_type);
    EXPECT_EQ(j["config"]["digest"], img.config_descriptor.digest);
    ASSERT_EQ(j["layers"].size(), img.layers.size());
    for (size_t i = 0; i < img.layers.size(); ++i) {
      EXPECT_EQ(j["layers"][i]["digest"], img.layers[i].descriptor.digest);
      EXPECT_EQ(j["layers"][i]["mediaType"], img.layers[i].descriptor.media_type);
      EXPECT_EQ(j["layers"][i]["size"], img.layers[i].descriptor.size);
      EXPECT_EQ(j["layers"][i]["diffID"], img.layers[i].diff_id);
    }
  }
};

TEST_F(InspectTest, ManifestKindsAndPlatforms) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  Platform amd64{"linux", "amd64", ""}, arm64{"linux", "arm64", "v8"};
  BuiltImage oci = BuildImage(Spec("oci", amd64));
  BuiltImage docker = BuildImage(Spec("docker", amd64, ManifestFormat::kDocker));
  ASSERT_OK(pusher.PushImage("t/oci", "v1", oci));
  ASSERT_OK(pusher.PushImage("t/docker", "v1", docker));
  IndexSpec is;
  is.images = {Spec("i-amd64", amd64), Spec("i-arm64", arm64)};
  is.add_unknown_media_type_entry = true;
  BuiltIndex oci_index = BuildIndex(is);
  ASSERT_OK(pusher.PushIndex("t/ociindex", "v1", oci_index));
  is.format = ManifestFormat::kDocker;
  is.add_unknown_media_type_entry = false;
  BuiltIndex list = BuildIndex(is);
  ASSERT_OK(pusher.PushIndex("t/list", "v1", list));

  CommandResult r = Inspect(reg.Ref("t/oci", "v1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), oci);
  r = Inspect(reg.Ref("t/docker", "v1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), docker);
  EXPECT_EQ(Json(r)["mediaType"], std::string(kMediaTypeDockerManifest));
  // By digest, too.
  r = Inspect(reg.Ref("t/oci", oci.manifest_descriptor.digest));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), oci);

  for (const BuiltIndex* idx : {&oci_index, &list}) {
    std::string repo = idx == &list ? "t/list" : "t/ociindex";
    SCOPED_TRACE(repo);
    r = Inspect(reg.Ref(repo, "v1"), {"--platform", "linux/amd64"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    nlohmann::json j = Json(r);
    ExpectImage(j, idx->images[0]);
    EXPECT_EQ(j["index"]["digest"], idx->descriptor.digest);
    r = Inspect(reg.Ref(repo, "v1"), {"--platform", "linux/arm64"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    j = Json(r);
    ExpectImage(j, idx->images[1]);
    EXPECT_EQ(j["platform"]["architecture"], "arm64");
    r = Inspect(reg.Ref(repo, "v1"), {"--platform", "linux/s390x"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.output.find("linux/arm64"), std::string::npos) << "lists what is on offer: "
                                                               << r.output;
  }
  // The human form names the platform and every layer.
  r = RunCommand({REGFS_BINARY, "inspect", "--tls-verify=false", reg.Ref("t/list", "v1"),
                  "--platform", "linux/arm64/v8"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("linux/arm64"), std::string::npos) << r.output;
  for (const auto& l : list.images[1].layers) {
    EXPECT_NE(r.output.find(l.descriptor.digest), std::string::npos) << r.output;
  }
}

// An https registry whose certificate is its own (self-signed), as private
// registries often have. Verification is on by default and fails with a
// clear message; --cert-dir with the registry's CA, or --tls-verify=false,
// reads it; so does a mount with --cert-dir.
TEST_F(InspectTest, HttpsRegistryWithItsOwnCertificate) {
  TestRegistryOptions o;
  o.tls = true;
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  ASSERT_EQ(reg.Url().substr(0, 8), "https://");
  BuiltImage img = BuildImage(Spec("tls", Platform{"linux", "amd64", ""}));
  ASSERT_OK(ImagePusher(reg).PushImage("tls/app", "v1", img));
  const std::string ref = reg.Ref("tls/app", "v1");
  TempDir tmp("regfs-tls");
  const std::string certs = tmp.Sub("certs"), other = tmp.Sub("other");
  ASSERT_EQ(mkdir(certs.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(other.c_str(), 0755), 0);
  {
    std::ifstream in(reg.tls_cert_path());
    std::ofstream out(certs + "/ca.crt");
    out << in.rdbuf();
  }
  auto inspect = [&](std::vector<std::string> flags) {
    std::vector<std::string> argv = {REGFS_BINARY, "inspect", "--json", "--retry-timeout", "5"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back(ref);
    return RunCommand(argv);
  };
  CommandResult r = inspect({});
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("certificate"), std::string::npos) << r.output;
  r = inspect({"--cert-dir", other});  // a directory without the CA: still refused
  EXPECT_NE(r.exit_code, 0) << r.output;
  r = inspect({"--cert-dir", certs});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), img);
  r = inspect({"--tls-verify=false"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), img);
  r = inspect({"--cert-dir", tmp.Sub("missing")});
  EXPECT_NE(r.exit_code, 0) << r.output;

  if (std::string why = FuseUnavailableReason(); !why.empty()) {
    GTEST_SKIP() << "the mount part needs FUSE: " << why;
  }
  const std::string mnt = tmp.Sub("mnt");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  CommandResult m = RunCommand({REGFS_BINARY, "mount", "--cert-dir", certs, "--cache-dir",
                                tmp.Sub("cache"), ref, mnt});
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const BuiltLayer& l = img.layers[0];
  CommandResult sum = RunCommand({"sha256sum", mnt + "/blobs/" + l.descriptor.digest});
  EXPECT_EQ(sum.output.substr(0, 64), l.descriptor.digest.substr(7)) << sum.output;
  EXPECT_EQ(RunCommand({REGFS_BINARY, "umount", mnt}).exit_code, 0);
  EXPECT_FALSE(IsMountPoint(mnt));
}

// A registry that asks for a client certificate, as containers/image reads
// it from a certificate directory: X.cert with its key X.key.
TEST_F(InspectTest, HttpsRegistryThatRequiresAClientCertificate) {
  TestRegistryOptions o;
  o.tls = true;
  o.require_client_cert = true;
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  BuiltImage img = BuildImage(Spec("mtls", Platform{"linux", "amd64", ""}));
  ASSERT_OK(ImagePusher(reg).PushImage("mtls/app", "v1", img));
  const std::string ref = reg.Ref("mtls/app", "v1");
  TempDir tmp("regfs-mtls");
  auto copy = [](const std::string& from, const std::string& to) {
    std::ifstream in(from);
    std::ofstream out(to);
    out << in.rdbuf();
  };
  const std::string ca_only = tmp.Sub("ca-only"), full = tmp.Sub("full"),
                    no_key = tmp.Sub("no-key");
  for (const std::string& d : {ca_only, full, no_key}) {
    ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
    copy(reg.tls_cert_path(), d + "/ca.crt");
  }
  copy(reg.client_cert_path(), full + "/client.cert");
  copy(reg.client_key_path(), full + "/client.key");
  copy(reg.client_cert_path(), no_key + "/client.cert");
  auto inspect = [&](const std::string& certs) {
    return RunCommand({REGFS_BINARY, "inspect", "--json", "--retry-timeout", "5", "--cert-dir",
                       certs, ref});
  };
  CommandResult r = inspect(ca_only);  // the server refuses the handshake
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("refused the client certificate"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("retry budget"), std::string::npos) << r.output;
  r = inspect(no_key);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("client.cert has no key client.key"), std::string::npos) << r.output;
  r = inspect(full);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), img);
}

class AuthInspectTest : public InspectTest,
                        public ::testing::WithParamInterface<RegistryAuth> {};

TEST_P(AuthInspectTest, CredentialsFromFlagAndAuthFile) {
  TestRegistryOptions o;
  o.auth = GetParam();
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  BuiltImage img = BuildImage(Spec("auth", Platform{"linux", "amd64", ""}));
  ASSERT_OK(pusher.PushImage("t/private", "v1", img));
  std::string ref = reg.Ref("t/private", "v1");

  CommandResult r = Inspect(ref);
  EXPECT_NE(r.exit_code, 0) << "anonymous access must be refused: " << r.output;
  EXPECT_NE(r.output.find("Unauthorized"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(o.password), std::string::npos);

  r = Inspect(ref, {"--creds", o.username + ":" + o.password});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), img);

  r = Inspect(ref, {"--creds", o.username + ":wrong-password"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.output.find("wrong-password"), std::string::npos) << "a secret in output";

  TempDir dir;
  std::string authfile = dir.Sub("auth.json");
  std::string userpass = o.username + ":" + o.password;
  // base64 of user:pass, as podman login writes it.
  CommandResult b64 = RunShell("printf '%s' '" + userpass + "' | base64 -w0");
  nlohmann::json auth = {{"auths", {{reg.HostPort(), {{"auth", b64.output}}}}}};
  std::ofstream(authfile) << auth.dump();
  r = Inspect(ref, {"--authfile", authfile});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectImage(Json(r), img);
}

INSTANTIATE_TEST_SUITE_P(Modes, AuthInspectTest,
                         ::testing::Values(RegistryAuth::kBasic, RegistryAuth::kToken),
                         [](const auto& p) {
                           return p.param == RegistryAuth::kBasic ? "Basic" : "Token";
                         });

}  // namespace
}  // namespace regfs
