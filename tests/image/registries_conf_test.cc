// registries.conf rules, checked against containers/image 5.23's
// pkg/sysregistriesv2 and pkg/shortnames behaviour.
#include "reader/image/registries_conf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RegistriesConf Parse(const std::string& text) {
  Result<RegistriesConf> c = ParseRegistriesConf(text, "test.conf");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : RegistriesConf{};
}

std::vector<std::string> Sources(const RegistriesConf& conf, const std::string& ref_text) {
  Result<Reference> ref = ParseReference(ref_text);
  EXPECT_TRUE(ref.ok()) << ref.status().ToString();
  Result<std::vector<PullSource>> s = PullSources(conf, *ref);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  std::vector<std::string> out;
  if (!s.ok()) return out;
  for (const PullSource& p : *s) out.push_back(p.ref.Normalized() + (p.mirror ? " (mirror)" : ""));
  return out;
}

TEST(RefMatchingPrefixTest, BoundariesAndWildcards) {
  EXPECT_EQ(RefMatchingPrefix("example.com/foo", "example.com"), 11);
  EXPECT_EQ(RefMatchingPrefix("example.com", "example.com"), 11);
  EXPECT_EQ(RefMatchingPrefix("example.com:5000/foo", "example.com"), 11);  // as c/image
  EXPECT_EQ(RefMatchingPrefix("example.com/foo@sha256:00", "example.com/foo"), 15);
  EXPECT_EQ(RefMatchingPrefix("example.comx/foo", "example.com"), -1);
  EXPECT_EQ(RefMatchingPrefix("example.com/foobar", "example.com/foo"), -1);
  EXPECT_EQ(RefMatchingPrefix("example.co", "example.com"), -1);
  EXPECT_EQ(RefMatchingPrefix("a.example.com/foo", "*.example.com"), 13);
  EXPECT_EQ(RefMatchingPrefix("a.b.example.com/foo", "*.example.com"), 15);
  EXPECT_EQ(RefMatchingPrefix("example.com/foo", "*.example.com"), -1);
  EXPECT_EQ(RefMatchingPrefix("other.com/a.example.com", "*.example.com"), -1);
  EXPECT_EQ(RefMatchingPrefix("a.example.community/x", "*.example.com"), -1);
}

TEST(RegistriesConfTest, LongestPrefixWins) {
  RegistriesConf conf = Parse(R"(
[[registry]]
location = "example.com"
[[registry]]
prefix = "example.com/team"
location = "mirror.example.net/team"
[[registry]]
prefix = "*.example.org"
location = "wild.example.net"
[[registry]]
prefix = "api.example.org"
location = "exact.example.net"
)");
  ASSERT_EQ(conf.registries.size(), 4u);
  EXPECT_EQ(FindRegistry(conf, "example.com/other/x")->prefix, "example.com");
  EXPECT_EQ(FindRegistry(conf, "example.com/team/app")->prefix, "example.com/team");
  EXPECT_EQ(FindRegistry(conf, "example.com/teamx/app")->prefix, "example.com");
  EXPECT_EQ(FindRegistry(conf, "api.example.org/app")->prefix, "api.example.org");
  // Equal lengths: the first in prefix order wins, as in containers/image.
  EXPECT_EQ(FindRegistry(conf, "a.example.org/app")->prefix, "*.example.org");
  EXPECT_EQ(FindRegistry(conf, "b.example.org/app")->prefix, "*.example.org");
  EXPECT_EQ(FindRegistry(conf, "quay.io/app"), nullptr);
  EXPECT_THAT(Sources(conf, "example.com/team/app:1"),
              ElementsAre("mirror.example.net/team/app:1"));
  EXPECT_THAT(Sources(conf, "b.example.org/ns/app:2"), ElementsAre("wild.example.net/ns/app:2"));
  EXPECT_THAT(Sources(conf, "quay.io/x/y:3"), ElementsAre("quay.io/x/y:3"));
}

TEST(RegistriesConfTest, MirrorsInOrderThenPrimaryWithDigestAndTagRules) {
  RegistriesConf conf = Parse(R"(
[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
[[registry.mirror]]
location = "m1.example/hub"
[[registry.mirror]]
location = "m2.example:5000"
insecure = true
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m3.example"
pull-from-mirror = "tag-only"
)");
  EXPECT_THAT(Sources(conf, "alpine"),
              ElementsAre("m1.example/hub/library/alpine:latest (mirror)",
                          "m3.example/library/alpine:latest (mirror)",
                          "registry-1.docker.io/library/alpine:latest"));
  const std::string d = "sha256:" + std::string(64, 'a');
  EXPECT_THAT(Sources(conf, "busybox@" + d),
              ElementsAre("m1.example/hub/library/busybox@" + d + " (mirror)",
                          "m2.example:5000/library/busybox@" + d + " (mirror)",
                          "registry-1.docker.io/library/busybox@" + d));
  Result<Reference> ref = ParseReference("busybox@" + d);
  ASSERT_OK(ref.status());
  Result<std::vector<PullSource>> s = PullSources(conf, *ref);
  ASSERT_OK(s.status());
  EXPECT_TRUE((*s)[1].insecure);
  EXPECT_FALSE((*s)[0].insecure);
  EXPECT_EQ((*s)[1].location, "m2.example:5000");
}

TEST(RegistriesConfTest, MirrorByDigestOnly) {
  RegistriesConf conf = Parse(R"(
[[registry]]
location = "example.com"
mirror-by-digest-only = true
mirror = [{location = "m.example"}]
)");
  EXPECT_THAT(Sources(conf, "example.com/a:1"), ElementsAre("example.com/a:1"));
  const std::string d = "sha256:" + std::string(64, 'b');
  EXPECT_THAT(Sources(conf, "example.com/a@" + d),
              ElementsAre("m.example/a@" + d + " (mirror)", "example.com/a@" + d));
}

TEST(RegistriesConfTest, BlockedIsAClearError) {
  RegistriesConf conf = Parse(R"(
[[registry]]
location = "bad.example"
blocked = true
)");
  Result<Reference> ref = ParseReference("bad.example/x:1");
  ASSERT_OK(ref.status());
  Result<std::vector<PullSource>> s = PullSources(conf, *ref);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("registry bad.example is blocked in test.conf"));
}

TEST(RegistriesConfTest, InvalidConfigurationsAreRefused) {
  struct Case {
    const char* text;
    const char* why;
  } cases[] = {
      {"[[registry]]\nlocation = \"https://x.example\"\n", "URI schemes are not supported"},
      {"[[registry]]\ninsecure = true\n", "both location and prefix are unset"},
      {"[[registry]]\nprefix = \"x.example\"\n", "location is unset"},
      {"[[registry]]\nprefix = \"*.x.example/ns\"\n", "wildcarded prefix"},
      {"[[registry]]\nlocation = \"x.example\"\npull-from-mirror = \"all\"\n",
       "non-mirror registry"},
      {"[[registry]]\nlocation = \"x.example\"\n[[registry.mirror]]\nlocation = \"m\"\n"
       "pull-from-mirror = \"sometimes\"\n",
       "unsupported pull-from-mirror"},
      {"[[registry]]\nlocation = \"x.example\"\nmirror-by-digest-only = true\n"
       "[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"tag-only\"\n",
       "at the same time"},
      {"[[registry]]\nlocation = \"x.example\"\ninsecure = true\n[[registry]]\nprefix = "
       "\"x.example/a\"\nlocation = \"x.example\"\n",
       "conflicting 'insecure'"},
      {"short-name-mode = \"sometimes\"\n", "invalid short-name mode"},
      {"[aliases]\n\"quay.io/x\" = \"quay.io/x\"\n", "invalid short name"},
      {"[aliases]\n\"x\" = \"x/y\"\n", "invalid alias"},
      {"[aliases]\n\"x\" = \"quay.io/x:1\"\n", "invalid alias"},
      {"unqualified-search-registries = [\"a/b\"]\n", "unqualified-search-registries"},
      {"[[registry]\nlocation = 1\n", "line 1"},
      {"[[registry]]\nlocation = 1\n", "must be a string"},
      {"[registries.search]\nregistries = [\"a.example\"]\n[[registry]]\nlocation = \"b\"\n",
       "mixing sysregistry v1/v2"},
  };
  for (const Case& c : cases) {
    Result<RegistriesConf> r = ParseRegistriesConf(c.text, "bad.conf");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.text;
    EXPECT_THAT(r.status().message(), HasSubstr(c.why)) << c.text;
    EXPECT_THAT(r.status().message(), HasSubstr("bad.conf")) << c.text;
  }
}

TEST(RegistriesConfTest, V1IsConverted) {
  RegistriesConf conf = Parse(R"(
[registries.search]
registries = ["quay.io", "docker.io"]
[registries.insecure]
registries = ["insecure.example:5000"]
[registries.block]
registries = ["blocked.example"]
)");
  ASSERT_TRUE(conf.unqualified_search_registries);
  EXPECT_THAT(*conf.unqualified_search_registries, ElementsAre("quay.io", "docker.io"));
  ASSERT_NE(FindRegistry(conf, "insecure.example:5000/a"), nullptr);
  EXPECT_TRUE(FindRegistry(conf, "insecure.example:5000/a")->endpoint.insecure);
  EXPECT_TRUE(FindRegistry(conf, "blocked.example/a")->blocked);
  EXPECT_FALSE(ParseRegistriesConf("[registries.search]\nregistries = [\"a\"]\n", "d.conf",
                                   /*force_v2=*/true)
                   .ok());
}

TEST(RegistriesConfTest, FirstEntryOfAPrefixWinsAndDropInsMergeByPrefix) {
  RegistriesConf base = Parse(R"(
unqualified-search-registries = ["a.example"]
short-name-mode = "permissive"
credential-helpers = ["containers-auth.json", "secretservice"]
[[registry]]
location = "x.example"
mirror = [{location = "m1.example"}]
[[registry]]
location = "x.example"
mirror = [{location = "ignored.example"}]
[[registry]]
location = "y.example"
[aliases]
"app" = "a.example/team/app"
"gone" = "a.example/gone"
)");
  ASSERT_EQ(base.registries.size(), 2u);
  EXPECT_EQ(base.registries[0].mirrors.at(0).location, "m1.example");
  EXPECT_THAT(base.EffectiveCredentialHelpers(),
              ElementsAre("containers-auth.json", "secretservice"));
  Result<RegistriesConf> drop = ParseRegistriesConf(R"(
[[registry]]
location = "x.example"
mirror = [{location = "m2.example"}]
[aliases]
"gone" = ""
"other" = "docker.io/other"
)",
                                                    "drop.conf", true);
  ASSERT_OK(drop.status());
  MergeRegistriesConf(&base, *drop);
  ASSERT_EQ(base.registries.size(), 2u);
  EXPECT_EQ(FindRegistry(base, "x.example/a")->mirrors.at(0).location, "m2.example");
  EXPECT_NE(FindRegistry(base, "y.example/a"), nullptr);
  EXPECT_THAT(*base.unqualified_search_registries, ElementsAre("a.example"));  // kept
  EXPECT_EQ(base.short_name_mode, ShortNameMode::kPermissive);
  EXPECT_EQ(base.aliases.at("other"), "docker.io/library/other");
  EXPECT_EQ(base.aliases.at("gone"), "");
  EXPECT_THAT(base.files, ElementsAre("test.conf", "drop.conf"));
  // An empty list in a later file clears the search registries.
  MergeRegistriesConf(&base, *ParseRegistriesConf("unqualified-search-registries = []\n", "e"));
  EXPECT_TRUE(base.unqualified_search_registries->empty());
}

TEST(ShortNameTest, IsShortName) {
  EXPECT_TRUE(IsShortName("alpine"));
  EXPECT_TRUE(IsShortName("alpine:3"));
  EXPECT_TRUE(IsShortName("team/app"));
  EXPECT_TRUE(IsShortName("team/app@sha256:00"));
  EXPECT_FALSE(IsShortName("localhost/app"));
  EXPECT_FALSE(IsShortName("quay.io/app"));
  EXPECT_FALSE(IsShortName("127.0.0.1:5000/team/app:1"));
  EXPECT_FALSE(IsShortName("host:5000/app"));
}

std::vector<std::string> Candidates(const RegistriesConf& conf, const std::string& in) {
  Result<ShortNameResolution> r = ResolveShortName(conf, in);
  EXPECT_TRUE(r.ok()) << in << ": " << r.status().ToString();
  std::vector<std::string> out;
  if (r.ok()) {
    for (const Reference& c : r->candidates) out.push_back(c.Normalized());
  }
  return out;
}

TEST(ShortNameTest, AliasesSearchRegistriesAndModes) {
  RegistriesConf conf = Parse(R"(
unqualified-search-registries = ["one.example:5000", "docker.io"]
short-name-mode = "permissive"
[aliases]
"app" = "alias.example/team/app"
"team/tool" = "alias.example/tools/tool"
)");
  const std::string d = "sha256:" + std::string(64, 'c');
  EXPECT_THAT(Candidates(conf, "app"), ElementsAre("alias.example/team/app:latest"));
  EXPECT_THAT(Candidates(conf, "app:2"), ElementsAre("alias.example/team/app:2"));
  EXPECT_THAT(Candidates(conf, "app@" + d), ElementsAre("alias.example/team/app@" + d));
  EXPECT_THAT(Candidates(conf, "team/tool:1"), ElementsAre("alias.example/tools/tool:1"));
  EXPECT_THAT(Candidates(conf, "busybox"),
              ElementsAre("one.example:5000/busybox:latest", "docker.io/library/busybox:latest"));
  EXPECT_THAT(Candidates(conf, "quay.io/x:1"), ElementsAre("quay.io/x:1"));
  // Enforcing: ambiguous without a terminal is an error, as podman's.
  conf.short_name_mode = ShortNameMode::kEnforcing;
  Result<ShortNameResolution> r = ResolveShortName(conf, "busybox");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("cannot prompt without a TTY"));
  EXPECT_THAT(Candidates(conf, "app"), ElementsAre("alias.example/team/app:latest"));
  conf.unqualified_search_registries = std::vector<std::string>{"one.example:5000"};
  EXPECT_THAT(Candidates(conf, "busybox:1"), ElementsAre("one.example:5000/busybox:1"));
  // Nothing configured: docker's rule.
  EXPECT_THAT(Candidates(RegistriesConf{}, "busybox"),
              ElementsAre("docker.io/library/busybox:latest"));
}

class LoadRegistriesConfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fds_ = testing::CountOpenFds();
    dir_ = std::filesystem::temp_directory_path() /
           ("regfs-regconf-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "etc/registries.conf.d");
    std::filesystem::create_directories(dir_ / "home/.config/containers");
    paths_.system_file = (dir_ / "etc/registries.conf").string();
    paths_.system_dir = (dir_ / "etc/registries.conf.d").string();
    paths_.home = (dir_ / "home").string();
    paths_.alias_cache_file = (dir_ / "short-name-aliases.conf").string();
  }
  void TearDown() override {
    std::filesystem::remove_all(dir_);
    EXPECT_EQ(testing::CountOpenFds(), fds_);
  }
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::create_directories((dir_ / rel).parent_path());
    std::ofstream(dir_ / rel) << text;
  }
  int fds_ = 0;
  std::filesystem::path dir_;
  RegistriesConfPaths paths_;
};

TEST_F(LoadRegistriesConfTest, SystemFileDropInsAndAliasCache) {
  Write("etc/registries.conf", "unqualified-search-registries = [\"a.example\"]\n");
  Write("etc/registries.conf.d/10-b.conf", "[aliases]\n\"x\" = \"b.example/x\"\n");
  Write("etc/registries.conf.d/20-c.conf", "[aliases]\n\"x\" = \"c.example/x\"\n");
  Write("etc/registries.conf.d/ignored.txt", "not toml [[[");
  Write("home/.config/containers/registries.conf.d/30-user.conf",
        "short-name-mode = \"disabled\"\n");
  Write("short-name-aliases.conf", "[aliases]\n\"y\" = \"cache.example/y\"\n");
  Result<RegistriesConf> c = LoadRegistriesConf(paths_);
  ASSERT_OK(c.status());
  EXPECT_EQ(c->files.size(), 4u);
  EXPECT_EQ(c->aliases.at("x"), "c.example/x");
  EXPECT_EQ(c->aliases.at("y"), "cache.example/y");
  EXPECT_EQ(c->short_name_mode, ShortNameMode::kDisabled);
  EXPECT_THAT(*c->unqualified_search_registries, ElementsAre("a.example"));
}

TEST_F(LoadRegistriesConfTest, UserFileReplacesTheSystemsAndNamedFileMustExist) {
  Write("etc/registries.conf", "unqualified-search-registries = [\"a.example\"]\n");
  Write("etc/registries.conf.d/10-b.conf", "short-name-mode = \"permissive\"\n");
  Write("home/.config/containers/registries.conf",
        "unqualified-search-registries = [\"user.example\"]\n");
  Result<RegistriesConf> c = LoadRegistriesConf(paths_);
  ASSERT_OK(c.status());
  EXPECT_THAT(*c->unqualified_search_registries, ElementsAre("user.example"));
  EXPECT_EQ(c->short_name_mode, ShortNameMode::kUnset);  // the system drop-in is not read

  // $CONTAINERS_REGISTRIES_CONF (or --registries-conf): that file, and the drop-ins.
  Write("env.conf", "unqualified-search-registries = [\"env.example\"]\n");
  paths_.env_file = (dir_ / "env.conf").string();
  c = LoadRegistriesConf(paths_);
  ASSERT_OK(c.status());
  EXPECT_THAT(*c->unqualified_search_registries, ElementsAre("env.example"));
  EXPECT_EQ(c->short_name_mode, ShortNameMode::kPermissive);
  Write("flag.conf", "unqualified-search-registries = [\"flag.example\"]\n");
  paths_.main_file = (dir_ / "flag.conf").string();
  c = LoadRegistriesConf(paths_);
  ASSERT_OK(c.status());
  EXPECT_THAT(*c->unqualified_search_registries, ElementsAre("flag.example"));

  paths_.main_file = (dir_ / "missing.conf").string();
  EXPECT_FALSE(LoadRegistriesConf(paths_).ok());
  // A missing default file is an empty configuration.
  paths_ = RegistriesConfPaths{};
  paths_.system_file = (dir_ / "none.conf").string();
  paths_.system_dir = (dir_ / "none.d").string();
  c = LoadRegistriesConf(paths_);
  ASSERT_OK(c.status());
  EXPECT_TRUE(c->registries.empty());
  EXPECT_TRUE(c->files.empty());
}

}  // namespace
}  // namespace regfs
