// The test registry fixture and the image builder against the real
// docker-registry, in each auth mode; manifests fetched back with plain
// libcurl; pushed images checked with skopeo and umoci.
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "reader/base/digest.h"
#include "reader/image/manifest.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {
namespace {

struct CurlFree {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistFree {
  void operator()(curl_slist* s) const { curl_slist_free_all(s); }
};

size_t Append(char* p, size_t s, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, s * n);
  return s * n;
}

struct Fetched {
  long status = 0;
  std::string body;
  std::string headers;
};

// Plain libcurl GET with optional basic credentials or bearer token.
Fetched CurlGet(const std::string& url, const std::string& accept, const std::string& userpwd = "",
                const std::string& bearer = "") {
  Fetched f;
  std::unique_ptr<CURL, CurlFree> c(curl_easy_init());
  std::unique_ptr<curl_slist, SlistFree> h;
  auto add = [&](const std::string& s) {
    curl_slist* n = curl_slist_append(h.get(), s.c_str());
    (void)h.release();
    h.reset(n);
  };
  if (!accept.empty()) add("Accept: " + accept);
  if (!bearer.empty()) add("Authorization: Bearer " + bearer);
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, h.get());
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &f.body);
  curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, Append);
  curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, &f.headers);
  if (!userpwd.empty()) {
    curl_easy_setopt(c.get(), CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c.get(), CURLOPT_USERPWD, userpwd.c_str());
  }
  if (curl_easy_perform(c.get()) == CURLE_OK) {
    curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &f.status);
  }
  return f;
}

// Runs a shell command; returns its exit status and stdout+stderr.
std::pair<int, std::string> RunShell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

ImageSpec TwoLayerSpec(ManifestFormat format, Compression c1, Compression c2) {
  ImageSpec spec;
  spec.format = format;
  LayerSpec base;
  base.entries = SampleEntries("base");
  base.compression = c1;
  LayerSpec top;
  top.entries = {TarEntry::File("etc/hostname", "top\n"), TarEntry::Whiteout("bin/tool-link"),
                 TarEntry::Dir("tmp"), TarEntry::OpaqueWhiteout("tmp")};
  top.compression = c2;
  top.zstd_frame_bytes = 1024;
  spec.layers = {base, top};
  return spec;
}

class RegistryTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    if (::access("/usr/bin/docker-registry", X_OK) != 0) {
      GTEST_SKIP() << "/usr/bin/docker-registry is missing (apt-get install docker-registry)";
    }
  }
};

TEST_F(RegistryTest, AnonymousPushAndFetchBack) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  EXPECT_GT(reg.port(), 0);
  EXPECT_EQ(reg.HostPort(), "127.0.0.1:" + std::to_string(reg.port()));
  ImagePusher pusher(reg);
  BuiltImage img =
      BuildImage(TwoLayerSpec(ManifestFormat::kOci, Compression::kGzip, Compression::kZstd));
  ASSERT_OK(pusher.PushImage("test/oci", "v1", img));

  Fetched f = CurlGet(reg.Url() + "/v2/test/oci/manifests/v1", ManifestAcceptHeader());
  ASSERT_EQ(f.status, 200) << f.body;
  EXPECT_EQ(f.body, img.manifest);
  EXPECT_EQ(Sha256Digest(f.body), img.manifest_descriptor.digest);
  EXPECT_NE(f.headers.find(img.manifest_descriptor.digest), std::string::npos) << f.headers;
  auto m = ParseManifest(f.body, kMediaTypeOciManifest);
  ASSERT_OK(m);
  ASSERT_EQ(m->layers.size(), 2u);
  EXPECT_EQ(m->layers[1].media_type, kMediaTypeOciLayerZstd);

  // Layer blobs round-trip and decompress to the tar whose digest is the diff_id.
  Fetched b0 = CurlGet(reg.Url() + "/v2/test/oci/blobs/" + img.layers[0].descriptor.digest, "");
  ASSERT_EQ(b0.status, 200);
  EXPECT_EQ(b0.body, img.layers[0].blob);
  EXPECT_EQ(Sha256Digest(GunzipForTest(b0.body)), img.layers[0].diff_id);
  Fetched b1 = CurlGet(reg.Url() + "/v2/test/oci/blobs/" + img.layers[1].descriptor.digest, "");
  ASSERT_EQ(b1.status, 200);
  EXPECT_EQ(Sha256Digest(UnzstdForTest(b1.body)), img.layers[1].diff_id);
  Fetched cfg = CurlGet(reg.Url() + "/v2/test/oci/blobs/" + img.config_descriptor.digest, "");
  ASSERT_EQ(cfg.status, 200);
  auto c = ParseConfig(cfg.body);
  ASSERT_OK(c);
  EXPECT_EQ(c->diff_ids, (std::vector<std::string>{img.layers[0].diff_id, img.layers[1].diff_id}));

  // The access log saw the manifest GET.
  int seen = 0;
  for (int i = 0; i < 100 && seen == 0; ++i) {
    seen = reg.CountRequests("GET", "/manifests/v1");
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(seen, 1);
  reg.Stop();
  EXPECT_FALSE(reg.running());
}

TEST_F(RegistryTest, BasicAuthRequiresCredentials) {
  TestRegistryOptions o;
  o.auth = RegistryAuth::kBasic;
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  BuiltImage img =
      BuildImage(TwoLayerSpec(ManifestFormat::kDocker, Compression::kGzip, Compression::kGzip));
  ASSERT_OK(pusher.PushImage("basic/img", "latest", img));

  std::string url = reg.Url() + "/v2/basic/img/manifests/latest";
  Fetched anon = CurlGet(url, ManifestAcceptHeader());
  EXPECT_EQ(anon.status, 401);
  EXPECT_NE(anon.headers.find("Basic realm"), std::string::npos) << anon.headers;
  Fetched wrong = CurlGet(url, ManifestAcceptHeader(), o.username + ":wrong");
  EXPECT_EQ(wrong.status, 401);
  Fetched ok = CurlGet(url, ManifestAcceptHeader(), o.username + ":" + o.password);
  ASSERT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, img.manifest);
  EXPECT_NE(ok.headers.find(std::string(kMediaTypeDockerManifest)), std::string::npos);
}

TEST_F(RegistryTest, TokenAuthIssuesWorkingTokens) {
  TestRegistryOptions o;
  o.auth = RegistryAuth::kToken;
  o.anonymous_pull = true;
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  ASSERT_NE(reg.token_server(), nullptr);
  ImagePusher pusher(reg);
  BuiltImage img =
      BuildImage(TwoLayerSpec(ManifestFormat::kOci, Compression::kNone, Compression::kGzip));
  ASSERT_OK(pusher.PushImage("tok/img", "t1", img));
  EXPECT_GE(reg.token_server()->tokens_issued(), 1);

  std::string url = reg.Url() + "/v2/tok/img/manifests/t1";
  Fetched anon = CurlGet(url, ManifestAcceptHeader());
  ASSERT_EQ(anon.status, 401);
  EXPECT_NE(anon.headers.find("Bearer realm=\"" + reg.token_server()->RealmUrl()),
            std::string::npos)
      << anon.headers;

  // Anonymous pull token from the token endpoint.
  Fetched tok =
      CurlGet(reg.token_server()->RealmUrl() + "?service=" + reg.token_server()->service() +
                  "&scope=repository:tok/img:pull",
              "");
  ASSERT_EQ(tok.status, 200) << tok.body;
  auto j = nlohmann::json::parse(tok.body);
  std::string token = j["token"].get<std::string>();
  EXPECT_EQ(j["expires_in"].get<int>(), o.token_lifetime_s);
  Fetched ok = CurlGet(url, ManifestAcceptHeader(), "", token);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.body, img.manifest);

  // An anonymous token cannot push.
  Fetched bad_creds =
      CurlGet(reg.token_server()->RealmUrl() + "?service=" + reg.token_server()->service() +
                  "&scope=repository:tok/img:pull",
              "", o.username + ":nope");
  EXPECT_EQ(bad_creds.status, 401);

  // Tokens whose exp is past the registry's 60 s leeway are refused.
  reg.token_server()->set_exp_skew_s(-(o.token_lifetime_s + 600));
  Fetched old_tok =
      CurlGet(reg.token_server()->RealmUrl() + "?service=" + reg.token_server()->service() +
                  "&scope=repository:tok/img:pull",
              "");
  ASSERT_EQ(old_tok.status, 200);
  std::string expired = nlohmann::json::parse(old_tok.body)["token"].get<std::string>();
  Fetched refused = CurlGet(url, ManifestAcceptHeader(), "", expired);
  EXPECT_EQ(refused.status, 401);
  EXPECT_GE(reg.token_server()->requests(), 3);
}

TEST_F(RegistryTest, TokenAuthWithoutAnonymousPullNeedsUser) {
  TestRegistryOptions o;
  o.auth = RegistryAuth::kToken;
  TestRegistry reg(o);
  ASSERT_OK(reg.Start());
  Fetched anon =
      CurlGet(reg.token_server()->RealmUrl() + "?service=" + reg.token_server()->service() +
                  "&scope=repository:x/y:pull",
              "");
  EXPECT_EQ(anon.status, 401);
  ImagePusher nobody(reg.Url());
  auto r = nobody.Get("/v2/x/y/manifests/latest", ManifestAcceptHeader());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnauthorized) << r.status().ToString();
}

TEST_F(RegistryTest, IndexesWithSeveralPlatforms) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  for (ManifestFormat format : {ManifestFormat::kOci, ManifestFormat::kDocker}) {
    IndexSpec is;
    is.format = format;
    is.add_unknown_media_type_entry = true;
    ImageSpec amd = TwoLayerSpec(format, Compression::kGzip, Compression::kGzip);
    ImageSpec arm = amd;
    arm.platform = {"linux", "arm64", "v8"};
    arm.layers[1].entries.push_back(TarEntry::File("arch", "arm64\n"));
    is.images = {amd, arm};
    BuiltIndex idx = BuildIndex(is);
    std::string repo = format == ManifestFormat::kOci ? "multi/oci" : "multi/docker";
    ASSERT_OK(pusher.PushIndex(repo, "latest", idx));
    Fetched f = CurlGet(reg.Url() + "/v2/" + repo + "/manifests/latest", ManifestAcceptHeader());
    ASSERT_EQ(f.status, 200) << f.body;
    EXPECT_EQ(f.body, idx.body);
    auto parsed = ParseIndex(f.body, idx.descriptor.media_type);
    ASSERT_OK(parsed);
    ASSERT_EQ(parsed->manifests.size(), 3u);
    auto pick = SelectPlatform(*parsed, Platform{"linux", "arm64", ""});
    ASSERT_OK(pick);
    EXPECT_EQ(pick->digest, idx.images[1].manifest_descriptor.digest);
    auto amd_pick = SelectPlatform(*parsed, Platform{"linux", "amd64", ""});
    ASSERT_OK(amd_pick);
    EXPECT_EQ(amd_pick->media_type, idx.images[0].manifest_descriptor.media_type);
    // The per-platform manifest by digest.
    Fetched m =
        CurlGet(reg.Url() + "/v2/" + repo + "/manifests/" + pick->digest, ManifestAcceptHeader());
    ASSERT_EQ(m.status, 200);
    EXPECT_EQ(m.body, idx.images[1].manifest);
  }
}

TEST_F(RegistryTest, MissingBinaryIsAClearError) {
  TestRegistryOptions o;
  o.registry_binary = "/nonexistent/docker-registry";
  TestRegistry reg(o);
  Status st = reg.Start();
  EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
  EXPECT_NE(st.message().find("/nonexistent/docker-registry"), std::string::npos);
  EXPECT_FALSE(reg.running());
}

TEST_F(RegistryTest, RestartKeepsPortAndStorage) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  int port = reg.port();
  ImagePusher pusher(reg);
  BuiltImage img =
      BuildImage(TwoLayerSpec(ManifestFormat::kOci, Compression::kGzip, Compression::kGzip));
  ASSERT_OK(pusher.PushImage("re/start", "v1", img));
  reg.Stop();
  EXPECT_FALSE(reg.running());
  Fetched down = CurlGet(reg.Url() + "/v2/re/start/manifests/v1", ManifestAcceptHeader());
  EXPECT_EQ(down.status, 0);                       // connection refused
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);  // reaped: no child left
  ASSERT_OK(reg.Restart());
  EXPECT_EQ(reg.port(), port);
  Fetched up = CurlGet(reg.Url() + "/v2/re/start/manifests/v1", ManifestAcceptHeader());
  ASSERT_EQ(up.status, 200);
  EXPECT_EQ(up.body, img.manifest);
}

TEST_F(RegistryTest, StreamedRandomBlobRoundTrips) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  const uint64_t kSize = 3 * 1024 * 1024 + 17;  // the bench pushes >=100 MB the same way
  auto d = pusher.PushRandomBlob("rand/blob", kSize, 42);
  ASSERT_OK(d);
  EXPECT_EQ(d->size, kSize);
  Fetched b = CurlGet(reg.Url() + "/v2/rand/blob/blobs/" + d->digest, "");
  ASSERT_EQ(b.status, 200);
  ASSERT_EQ(b.body.size(), kSize);
  EXPECT_EQ(Sha256Digest(b.body), d->digest);
  std::vector<uint8_t> piece(1000);
  FillDeterministic(42, 123457, piece);
  EXPECT_EQ(0, std::memcmp(piece.data(), b.body.data() + 123457, piece.size()));
  Fetched m = CurlGet(reg.Url() + "/v2/rand/blob/manifests/random", ManifestAcceptHeader());
  EXPECT_EQ(m.status, 200);
}

// The benchmark's blob size, streamed (the pusher holds one curl buffer, not
// the blob); checked by digest and by spot ranges fetched with Range.
TEST_F(RegistryTest, HundredMegabyteBlobStreams) {
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  const uint64_t kSize = 100ull * 1024 * 1024 + 12345;
  auto d = pusher.PushRandomBlob("bench/blob", kSize, 2026);
  ASSERT_OK(d);
  EXPECT_EQ(d->size, kSize);
  EXPECT_EQ(d->digest, DeterministicDigest(2026, kSize));
  // HEAD reports the size; a ranged GET near the end returns the right bytes.
  auto head = pusher.Get("/v2/bench/blob/blobs/" + d->digest, "", /*head=*/true);
  ASSERT_OK(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->headers["content-length"], std::to_string(kSize));
  std::unique_ptr<CURL, CurlFree> c(curl_easy_init());
  std::string body;
  std::string url = reg.Url() + "/v2/bench/blob/blobs/" + d->digest;
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_RANGE, "104857000-104857999");
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &body);
  ASSERT_EQ(curl_easy_perform(c.get()), CURLE_OK);
  long code = 0;
  curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &code);
  EXPECT_EQ(code, 206);
  ASSERT_EQ(body.size(), 1000u);
  std::vector<uint8_t> want(1000);
  FillDeterministic(2026, 104857000, want);
  EXPECT_EQ(0, std::memcmp(want.data(), body.data(), want.size()));
}

TEST_F(RegistryTest, SkopeoAndUmociAcceptPushedImages) {
  if (::access("/usr/bin/skopeo", X_OK) != 0) GTEST_SKIP() << "skopeo is not installed";
  TestRegistry reg;
  ASSERT_OK(reg.Start());
  ImagePusher pusher(reg);
  BuiltImage oci =
      BuildImage(TwoLayerSpec(ManifestFormat::kOci, Compression::kGzip, Compression::kZstd));
  ASSERT_OK(pusher.PushImage("tools/oci", "v1", oci));
  BuiltImage docker =
      BuildImage(TwoLayerSpec(ManifestFormat::kDocker, Compression::kGzip, Compression::kGzip));
  ASSERT_OK(pusher.PushImage("tools/docker", "v1", docker));
  IndexSpec is;
  ImageSpec arm = TwoLayerSpec(ManifestFormat::kOci, Compression::kGzip, Compression::kGzip);
  arm.platform = {"linux", "arm64", "v8"};
  is.images = {TwoLayerSpec(ManifestFormat::kOci, Compression::kGzip, Compression::kGzip), arm};
  BuiltIndex idx = BuildIndex(is);
  ASSERT_OK(pusher.PushIndex("tools/index", "v1", idx));

  for (auto [repo, digest] : {std::pair{std::string("tools/oci"), oci.manifest_descriptor.digest},
                              {std::string("tools/docker"), docker.manifest_descriptor.digest}}) {
    auto [rc, out] = RunShell("skopeo inspect --tls-verify=false docker://" + reg.Ref(repo, "v1"));
    ASSERT_EQ(rc, 0) << out;
    auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out;
    EXPECT_EQ(j["Digest"], digest);
    EXPECT_EQ(j["Layers"].size(), 2u);
  }
  auto [rc_raw, raw] =
      RunShell("skopeo inspect --raw --tls-verify=false docker://" + reg.Ref("tools/index", "v1"));
  ASSERT_EQ(rc_raw, 0) << raw;
  EXPECT_EQ(raw, idx.body);
  auto [rc_arm, arm_out] =
      RunShell("skopeo inspect --override-arch arm64 --tls-verify=false docker://" +
               reg.Ref("tools/index", "v1"));
  ASSERT_EQ(rc_arm, 0) << arm_out;
  EXPECT_EQ(nlohmann::json::parse(arm_out, nullptr, false)["Architecture"], "arm64");

  // skopeo copy to an OCI layout (verifies every blob digest) and umoci unpack.
  if (::access("/usr/bin/umoci", X_OK) != 0) return;
  std::string tmp = reg.dir() + "/oci-out";
  auto [rc_copy, copy_out] = RunShell("skopeo copy --src-tls-verify=false docker://" +
                                      reg.Ref("tools/docker", "v1") + " oci:" + tmp + ":img");
  ASSERT_EQ(rc_copy, 0) << copy_out;
  auto [rc_un, un_out] =
      RunShell("umoci unpack --rootless --image " + tmp + ":img " + tmp + "/bundle");
  ASSERT_EQ(rc_un, 0) << un_out;
  std::string rootfs = tmp + "/bundle/rootfs";
  // Upper layer replaced etc/hostname, whited out the symlink, emptied tmp/.
  auto [rc_cat, host] = RunShell("cat " + rootfs + "/etc/hostname");
  EXPECT_EQ(host, "top\n");
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(rootfs + "/bin/tool-link")));
  EXPECT_TRUE(std::filesystem::exists(rootfs + "/bin/tool"));
  EXPECT_FALSE(std::filesystem::exists(rootfs + "/tmp/fifo"));
  EXPECT_TRUE(std::filesystem::exists(rootfs + "/deep/" + std::string(120, 'n')));
}

}  // namespace
}  // namespace regfs::testing
