#include "reader/image/manifest.h"

#include <gtest/gtest.h>
#include <sys/utsname.h>

#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using nlohmann::json;

std::string D(char c) { return "sha256:" + std::string(64, c); }

TEST(ManifestTest, AcceptHeaderNamesAllFourTypes) {
  std::string a = ManifestAcceptHeader();
  for (auto mt : {kMediaTypeOciIndex, kMediaTypeOciManifest, kMediaTypeDockerManifestList,
                  kMediaTypeDockerManifest}) {
    EXPECT_NE(a.find(mt), std::string::npos) << mt;
  }
}

TEST(ManifestTest, ParsePlatform) {
  struct Case {
    std::string in, os, arch, variant;
  };
  for (const Case& c :
       {Case{"linux/amd64", "linux", "amd64", ""}, Case{"linux/arm64/v8", "linux", "arm64", "v8"},
        Case{"linux/arm/v7", "linux", "arm", "v7"}, Case{"Linux/AMD64", "linux", "amd64", ""},
        Case{"linux/x86_64", "linux", "amd64", ""}, Case{"linux/aarch64", "linux", "arm64", ""},
        Case{"linux/armhf", "linux", "arm", "v7"}, Case{"linux/arm/7", "linux", "arm", "v7"},
        Case{"linux/i386", "linux", "386", ""}, Case{"windows/amd64", "windows", "amd64", ""}}) {
    auto p = ParsePlatform(c.in);
    ASSERT_OK(p);
    EXPECT_EQ(p->os, c.os) << c.in;
    EXPECT_EQ(p->architecture, c.arch) << c.in;
    EXPECT_EQ(p->variant, c.variant) << c.in;
  }
  for (std::string bad : {"", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux//v8",
                          "linux/am d64", "linux/amd64/"}) {
    auto p = ParsePlatform(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(ParsePlatform("linux/arm64/v8")->ToString(), "linux/arm64/v8");
  EXPECT_EQ(ParsePlatform("linux/amd64")->ToString(), "linux/amd64");
}

TEST(ManifestTest, HostPlatformUsesGoNames) {
  Platform p = HostPlatform();
  EXPECT_EQ(p.os, "linux");
  utsname u{};
  ASSERT_EQ(uname(&u), 0);
  std::string m = u.machine;
  if (m == "x86_64") {
    EXPECT_EQ(p.architecture, "amd64");
    EXPECT_EQ(p.variant, "");
  } else if (m == "aarch64") {
    EXPECT_EQ(p.architecture, "arm64");
    EXPECT_EQ(p.variant, "v8");
  } else {
    EXPECT_FALSE(p.architecture.empty());
  }
}

TEST(ManifestTest, CompressionOfMediaType) {
  EXPECT_EQ(CompressionOfMediaType(kMediaTypeOciLayerGzip), LayerCompression::kGzip);
  EXPECT_EQ(CompressionOfMediaType(kMediaTypeOciLayerZstd), LayerCompression::kZstd);
  EXPECT_EQ(CompressionOfMediaType(kMediaTypeOciLayerTar), LayerCompression::kNone);
  EXPECT_EQ(CompressionOfMediaType(kMediaTypeDockerLayerGzip), LayerCompression::kGzip);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.docker.image.rootfs.diff.tar"),
            LayerCompression::kNone);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            LayerCompression::kGzip);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            LayerCompression::kGzip);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"),
            LayerCompression::kZstd);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.oci.image.layer.nondistributable.v1.tar"),
            LayerCompression::kNone);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            LayerCompression::kUnknown);
  EXPECT_EQ(CompressionOfMediaType("application/vnd.cncf.helm.chart.content.v1.tar+gzip"),
            LayerCompression::kUnknown);
  EXPECT_EQ(CompressionOfMediaType(""), LayerCompression::kUnknown);
}

json Desc(std::string_view mt, char c, uint64_t size) {
  return {{"mediaType", mt}, {"digest", D(c)}, {"size", size}};
}

std::string OciManifest() {
  json m = {{"schemaVersion", 2},
            {"mediaType", kMediaTypeOciManifest},
            {"config", Desc(kMediaTypeOciConfig, 'c', 123)},
            {"layers",
             {Desc(kMediaTypeOciLayerGzip, '1', 1000), Desc(kMediaTypeOciLayerZstd, '2', 2000)}}};
  return m.dump();
}

TEST(ManifestTest, ParseManifestOciAndDocker) {
  auto m = ParseManifest(OciManifest(), kMediaTypeOciManifest);
  ASSERT_OK(m);
  EXPECT_EQ(m->media_type, kMediaTypeOciManifest);
  EXPECT_EQ(m->config.digest, D('c'));
  EXPECT_EQ(m->config.size, 123u);
  ASSERT_EQ(m->layers.size(), 2u);
  EXPECT_EQ(m->layers[1].media_type, kMediaTypeOciLayerZstd);
  EXPECT_EQ(m->layers[1].size, 2000u);
  // Content-Type with parameters, and an empty Content-Type.
  EXPECT_OK(ParseManifest(OciManifest(), std::string(kMediaTypeOciManifest) + "; charset=utf-8"));
  EXPECT_OK(ParseManifest(OciManifest(), ""));
  EXPECT_OK(ParseManifest(OciManifest(), "application/json"));

  json d = {{"schemaVersion", 2},
            {"mediaType", kMediaTypeDockerManifest},
            {"config", Desc(kMediaTypeDockerConfig, 'c', 5)},
            {"layers", {Desc(kMediaTypeDockerLayerGzip, '1', 7)}}};
  auto dm = ParseManifest(d.dump(), kMediaTypeDockerManifest);
  ASSERT_OK(dm);
  EXPECT_EQ(dm->media_type, kMediaTypeDockerManifest);

  // OCI manifests may omit mediaType.
  json no_mt = json::parse(OciManifest());
  no_mt.erase("mediaType");
  auto nm = ParseManifest(no_mt.dump(), "");
  ASSERT_OK(nm);
  EXPECT_EQ(nm->media_type, kMediaTypeOciManifest);
}

TEST(ManifestTest, ParseManifestRejectsBadInput) {
  auto expect_code = [](std::string_view body, std::string_view mt, Code code) {
    auto r = ParseManifest(body, mt);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), code) << body << " -> " << r.status().ToString();
  };
  expect_code("", kMediaTypeOciManifest, Code::kCorrupt);
  expect_code("{", kMediaTypeOciManifest, Code::kCorrupt);
  expect_code("[]", kMediaTypeOciManifest, Code::kCorrupt);
  expect_code("null", kMediaTypeOciManifest, Code::kCorrupt);
  expect_code(R"({"schemaVersion":1,"fsLayers":[]})", "", Code::kUnsupported);
  expect_code(R"({"schemaVersion":"2"})", "", Code::kCorrupt);
  // Content-Type and body disagree.
  expect_code(OciManifest(), kMediaTypeDockerManifest, Code::kCorrupt);
  // An index is not a manifest.
  expect_code(OciManifest(), kMediaTypeOciIndex, Code::kCorrupt);
  expect_code(OciManifest(), "application/vnd.example+json", Code::kCorrupt);
  json m = json::parse(OciManifest());
  for (const char* field : {"config", "layers"}) {
    json x = m;
    x.erase(field);
    expect_code(x.dump(), "", Code::kCorrupt);
  }
  json x = m;
  x["layers"][0]["size"] = -1;
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["layers"][0]["size"] = "12";
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["layers"][0].erase("digest");
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["layers"][0]["digest"] = "sha256:xyz";
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["layers"][0]["digest"] = "sha512:" + std::string(128, 'a');
  expect_code(x.dump(), "", Code::kUnsupported);
  x = m;
  x["config"] = "nope";
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["layers"] = json::object();
  expect_code(x.dump(), "", Code::kCorrupt);
  x = m;
  x["mediaType"] = 5;
  expect_code(x.dump(), "", Code::kCorrupt);
  // Deeply nested garbage never throws out of the parser.
  std::string deep(100000, '[');
  expect_code(deep, "", Code::kCorrupt);
}

std::string Index(std::string_view mt, const json& entries) {
  return json{{"schemaVersion", 2}, {"mediaType", mt}, {"manifests", entries}}.dump();
}

json Entry(std::string_view mt, char c, const std::string& os, const std::string& arch,
           const std::string& variant = "") {
  json e = Desc(mt, c, 100);
  e["platform"] = {{"os", os}, {"architecture", arch}};
  if (!variant.empty()) e["platform"]["variant"] = variant;
  return e;
}

TEST(ManifestTest, ParseIndexBothKinds) {
  json entries = {Entry(kMediaTypeOciManifest, 'a', "linux", "amd64"),
                  Entry(kMediaTypeOciManifest, 'b', "linux", "arm64", "v8"),
                  Desc(kMediaTypeOciManifest, 'c', 5)};
  auto idx = ParseIndex(Index(kMediaTypeOciIndex, entries), kMediaTypeOciIndex);
  ASSERT_OK(idx);
  EXPECT_EQ(idx->media_type, kMediaTypeOciIndex);
  ASSERT_EQ(idx->manifests.size(), 3u);
  ASSERT_TRUE(idx->manifests[1].platform.has_value());
  EXPECT_EQ(idx->manifests[1].platform->ToString(), "linux/arm64/v8");
  EXPECT_FALSE(idx->manifests[2].platform.has_value());

  auto list =
      ParseIndex(Index(kMediaTypeDockerManifestList,
                       json::array({Entry(kMediaTypeDockerManifest, 'a', "linux", "amd64")})),
                 "");
  ASSERT_OK(list);
  EXPECT_EQ(list->media_type, kMediaTypeDockerManifestList);
  EXPECT_TRUE(IsIndexMediaType(list->media_type));
  EXPECT_FALSE(IsIndexMediaType(kMediaTypeOciManifest));
  EXPECT_TRUE(IsManifestMediaType(kMediaTypeDockerManifest));
  EXPECT_FALSE(IsManifestMediaType(kMediaTypeOciIndex));

  // Bad indexes.
  EXPECT_EQ(ParseIndex("{}", kMediaTypeOciIndex).status().code(), Code::kCorrupt);
  EXPECT_EQ(ParseIndex("not json", "").status().code(), Code::kCorrupt);
  EXPECT_EQ(ParseIndex(OciManifest(), "").status().code(), Code::kCorrupt);
  json bad_platform = Desc(kMediaTypeOciManifest, 'a', 1);
  bad_platform["platform"] = {{"os", "linux"}};
  EXPECT_EQ(ParseIndex(Index(kMediaTypeOciIndex, json::array({bad_platform})), "").status().code(),
            Code::kCorrupt);
  EXPECT_EQ(ParseIndex(Index(kMediaTypeOciIndex, json::array({"x"})), "").status().code(),
            Code::kCorrupt);
}

TEST(ManifestTest, ParseConfig) {
  json c = {{"architecture", "arm64"},
            {"os", "linux"},
            {"variant", "v8"},
            {"rootfs", {{"type", "layers"}, {"diff_ids", {D('1'), D('2')}}}}};
  auto cfg = ParseConfig(c.dump());
  ASSERT_OK(cfg);
  EXPECT_EQ(cfg->platform.ToString(), "linux/arm64/v8");
  EXPECT_EQ(cfg->diff_ids, (std::vector<std::string>{D('1'), D('2')}));
  for (auto mutate : std::vector<void (*)(json&)>{
           [](json& j) { j.erase("os"); }, [](json& j) { j.erase("architecture"); },
           [](json& j) { j.erase("rootfs"); }, [](json& j) { j["rootfs"]["type"] = "other"; },
           [](json& j) { j["rootfs"]["diff_ids"] = "x"; },
           [](json& j) { j["rootfs"]["diff_ids"] = {1}; },
           [](json& j) { j["rootfs"]["diff_ids"] = {"sha256:zz"}; }}) {
    json x = c;
    mutate(x);
    auto r = ParseConfig(x.dump());
    EXPECT_FALSE(r.ok()) << x.dump();
  }
  EXPECT_EQ(ParseConfig("{").status().code(), Code::kCorrupt);
}

TEST(ManifestTest, SelectPlatformRules) {
  json entries = {
      // Unknown media type first, with a matching platform: must be skipped.
      Entry("application/vnd.example.unknown+json", 'e', "linux", "amd64"),
      Entry(kMediaTypeOciManifest, 'a', "linux", "amd64"),
      Entry(kMediaTypeOciManifest, 'b', "linux", "arm64", "v8"),
      Entry(kMediaTypeOciManifest, '7', "linux", "arm", "v7"),
      Entry(kMediaTypeOciManifest, '6', "linux", "arm", "v6"),
      // An attestation manifest (buildx) with unknown/unknown.
      Entry(kMediaTypeOciManifest, 'f', "unknown", "unknown"),
  };
  auto idx = ParseIndex(Index(kMediaTypeOciIndex, entries), "");
  ASSERT_OK(idx);
  auto pick = [&](const Platform& p) { return SelectPlatform(*idx, p); };
  EXPECT_EQ(pick({"linux", "amd64", ""})->digest, D('a'));
  EXPECT_EQ(pick({"linux", "arm64", ""})->digest, D('b'));  // empty means v8 for arm64
  EXPECT_EQ(pick({"linux", "arm64", "v8"})->digest, D('b'));
  EXPECT_EQ(pick({"linux", "arm", "v6"})->digest, D('6'));
  EXPECT_EQ(pick({"linux", "arm", "v7"})->digest, D('7'));
  EXPECT_EQ(pick({"linux", "arm", ""})->digest, D('7'));  // first arm entry
  auto none = pick({"linux", "s390x", ""});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_NE(none.status().message().find("linux/amd64"), std::string::npos)
      << none.status().message();
  EXPECT_NE(none.status().message().find("linux/arm64/v8"), std::string::npos);
  EXPECT_NE(none.status().message().find("linux/s390x"), std::string::npos);
  EXPECT_FALSE(pick({"linux", "arm", "v5"}).ok());
  EXPECT_FALSE(pick({"windows", "amd64", ""}).ok());

  // An entry without a variant serves any wanted variant; an arm64 entry
  // without a variant is v8.
  json loose = {Entry(kMediaTypeDockerManifest, 'c', "linux", "arm64"),
                Entry(kMediaTypeDockerManifest, 'd', "linux", "arm")};
  auto idx2 = ParseIndex(Index(kMediaTypeDockerManifestList, loose), "");
  ASSERT_OK(idx2);
  EXPECT_EQ(SelectPlatform(*idx2, {"linux", "arm64", "v8"})->digest, D('c'));
  EXPECT_EQ(SelectPlatform(*idx2, {"linux", "arm", "v7"})->digest, D('d'));
  // An exact variant beats a variant-less entry.
  json both = {Entry(kMediaTypeOciManifest, '1', "linux", "arm"),
               Entry(kMediaTypeOciManifest, '2', "linux", "arm", "v7")};
  auto idx3 = ParseIndex(Index(kMediaTypeOciIndex, both), "");
  ASSERT_OK(idx3);
  EXPECT_EQ(SelectPlatform(*idx3, {"linux", "arm", "v7"})->digest, D('2'));
  // Only unknown types: NotFound saying so.
  auto idx4 = ParseIndex(
      Index(kMediaTypeOciIndex, json::array({Entry("application/x", '3', "linux", "amd64")})), "");
  ASSERT_OK(idx4);
  auto r4 = SelectPlatform(*idx4, {"linux", "amd64", ""});
  ASSERT_FALSE(r4.ok());
  EXPECT_EQ(r4.status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace regfs
