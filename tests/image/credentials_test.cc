#include "reader/image/credentials.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

namespace fs = std::filesystem;

// "user:pass" base64 for the auth files.
std::string B64(std::string_view in) {
  static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

class CredentialsTest : public testing::FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    std::string tmpl = fs::temp_directory_path().string() + "/regfs-creds-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    fs::create_directories(dir_ + "/home/.docker");
    fs::create_directories(dir_ + "/xdg/containers");
    fs::create_directories(dir_ + "/bin");
    opts_.use_env = false;  // never read the real environment
    opts_.home = dir_ + "/home";
    opts_.xdg_runtime_dir = dir_ + "/xdg";
    opts_.helper_path = dir_ + "/bin";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    FdCheckedTest::TearDown();
  }
  void Write(const std::string& rel, const std::string& text) {
    std::ofstream(dir_ + "/" + rel) << text;
  }
  // A fake docker-credential-<name>: a shell script.
  void Helper(const std::string& name, const std::string& body) {
    std::string path = dir_ + "/bin/docker-credential-" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body;
    ::chmod(path.c_str(), 0755);
  }
  std::optional<Credentials> Lookup(std::string_view registry) {
    auto r = LookupCredentials(registry, opts_);
    EXPECT_OK(r);
    return r.ok() ? *r : std::nullopt;
  }

  std::string dir_;
  CredentialOptions opts_;
};

TEST_F(CredentialsTest, NoFilesMeansAnonymous) { EXPECT_FALSE(Lookup("quay.io").has_value()); }

TEST_F(CredentialsTest, AuthsWithBase64AndFields) {
  Write("home/.docker/config.json",
        R"({"auths":{"quay.io":{"auth":")" + B64("alice:s3cr:et") +
            R"("},"https://example.com/v1/":{"username":"bob","password":"pw"},)"
            R"("tok.io":{"identitytoken":"idtok"}}})");
  auto a = Lookup("quay.io");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->username, "alice");
  EXPECT_EQ(a->password, "s3cr:et");  // only the first ':' splits
  EXPECT_EQ(a->source, dir_ + "/home/.docker/config.json");
  auto b = Lookup("example.com");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->username, "bob");
  EXPECT_EQ(b->password, "pw");
  auto t = Lookup("tok.io");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->username, "<token>");
  EXPECT_EQ(t->password, "idtok");
  EXPECT_FALSE(Lookup("other.io").has_value());
}

TEST_F(CredentialsTest, DockerHubAliases) {
  for (std::string key :
       {"https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"}) {
    Write("home/.docker/config.json",
          R"({"auths":{")" + key + R"(":{"auth":")" + B64("hub:pw") + R"("}}})");
    auto c = Lookup("docker.io");
    ASSERT_TRUE(c.has_value()) << key;
    EXPECT_EQ(c->username, "hub");
  }
}

TEST_F(CredentialsTest, FileOrder) {
  Write("explicit.json", R"({"auths":{"r.io":{"auth":")" + B64("explicit:1") + R"("}}})");
  Write("raf.json", R"({"auths":{"r.io":{"auth":")" + B64("raf:2") + R"("}}})");
  Write("xdg/containers/auth.json", R"({"auths":{"r.io":{"auth":")" + B64("xdg:3") + R"("}}})");
  Write("home/.docker/config.json", R"({"auths":{"r.io":{"auth":")" + B64("home:4") +
                                        R"("},)"
                                        R"("only-home.io":{"auth":")" +
                                        B64("home:5") + R"("}}})");
  opts_.authfile = dir_ + "/explicit.json";
  opts_.registry_auth_file = dir_ + "/raf.json";
  EXPECT_EQ(Lookup("r.io")->username, "explicit");
  opts_.authfile.clear();
  EXPECT_EQ(Lookup("r.io")->username, "raf");
  opts_.registry_auth_file.clear();
  EXPECT_EQ(Lookup("r.io")->username, "xdg");
  fs::remove(dir_ + "/xdg/containers/auth.json");
  EXPECT_EQ(Lookup("r.io")->username, "home");
  // A later file serves a registry the earlier ones lack.
  opts_.authfile = dir_ + "/explicit.json";
  EXPECT_EQ(Lookup("only-home.io")->password, "5");
  // Explicit --creds win over everything.
  opts_.explicit_creds = Credentials{"cli", "pw", "--creds"};
  EXPECT_EQ(Lookup("r.io")->username, "cli");
}

TEST_F(CredentialsTest, CredHelpersAndCredsStore) {
  // The helper echoes the server it was asked about as the user name.
  Helper("fake",
         "read server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":"
         "\\\"$server\\\",\\\"Secret\\\":\\\"helper-secret\\\"}\"\n");
  Helper("none", "echo 'credentials not found in native keychain'\nexit 1\n");
  Helper("broken", "echo 'boom' >&2\nexit 3\n");
  Helper("garbage", "echo 'not json'\n");
  Helper("slow", "sleep 30\n");
  Write("home/.docker/config.json",
        R"({"credHelpers":{"helped.io":"fake","missing.io":"none","broken.io":"broken",)"
        R"("garbage.io":"garbage","slow.io":"slow","docker.io":"fake","nohelper.io":"absent"},)"
        R"("auths":{"helped.io":{"auth":")" +
            B64("file:pw") +
            R"("}, "store.io":{}},)"
            R"("credsStore":"fake"})");
  auto h = Lookup("helped.io");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->username, "helped.io");  // credHelpers beat auths
  EXPECT_EQ(h->password, "helper-secret");
  EXPECT_EQ(h->source, "docker-credential-fake");
  // docker.io goes to helpers as the legacy index URL.
  EXPECT_EQ(Lookup("docker.io")->username, "https://index.docker.io/v1/");
  // "not found" from a helper means anonymous, not an error.
  EXPECT_FALSE(Lookup("missing.io").has_value());
  // An empty auths entry falls through to credsStore.
  auto s = Lookup("store.io");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->username, "store.io");
  // Failures name the helper.
  auto b = LookupCredentials("broken.io", opts_);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("docker-credential-broken"), std::string::npos);
  EXPECT_NE(b.status().message().find("boom"), std::string::npos);
  auto g = LookupCredentials("garbage.io", opts_);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().message().find("docker-credential-garbage"), std::string::npos);
  auto n = LookupCredentials("nohelper.io", opts_);
  ASSERT_FALSE(n.ok());
  EXPECT_NE(n.status().message().find("docker-credential-absent"), std::string::npos);
  // A helper that hangs is killed after the timeout (bounded, and reaped:
  // the fd check in TearDown and the absence of zombies below prove it).
  opts_.helper_timeout_ms = 300;
  auto slow = LookupCredentials("slow.io", opts_);
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), Code::kTransient);
  EXPECT_NE(slow.status().message().find("timed out"), std::string::npos);
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);  // no unreaped children
}

TEST_F(CredentialsTest, MalformedFilesAreErrorsNamingTheFile) {
  for (const std::string& text :
       std::vector<std::string>{"{", "[]", R"({"auths":[]})", R"({"auths":{"r.io":{"auth":"!!"}}})",
                                R"({"auths":{"r.io":{"auth":")" + B64("nocolon") + R"("}}})",
                                R"({"credHelpers":{"r.io":5}})", R"({"credsStore":1})"}) {
    Write("home/.docker/config.json", text);
    auto r = LookupCredentials("r.io", opts_);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << text;
    EXPECT_NE(r.status().message().find("config.json"), std::string::npos) << r.status().ToString();
  }
}

TEST_F(CredentialsTest, EnvironmentIsUsedWhenAllowed) {
  Write("raf.json", R"({"auths":{"env.io":{"auth":")" + B64("envuser:pw") + R"("}}})");
  std::string old = std::getenv("REGISTRY_AUTH_FILE") ? std::getenv("REGISTRY_AUTH_FILE") : "";
  ::setenv("REGISTRY_AUTH_FILE", (dir_ + "/raf.json").c_str(), 1);
  CredentialOptions env_opts;
  env_opts.home = dir_ + "/home";
  env_opts.xdg_runtime_dir = dir_ + "/xdg";
  auto r = LookupCredentials("env.io", env_opts);
  if (old.empty()) {
    ::unsetenv("REGISTRY_AUTH_FILE");
  } else {
    ::setenv("REGISTRY_AUTH_FILE", old.c_str(), 1);
  }
  ASSERT_OK(r);
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->username, "envuser");
  // With use_env=false the variable is ignored.
  EXPECT_FALSE(Lookup("env.io").has_value());
}

TEST(CredsFlagTest, Parse) {
  auto c = ParseCredsFlag("user:pa:ss");
  ASSERT_OK(c);
  EXPECT_EQ(c->username, "user");
  EXPECT_EQ(c->password, "pa:ss");
  EXPECT_EQ(ParseCredsFlag("user").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseCredsFlag(":pw").status().code(), Code::kInvalidArgument);
  EXPECT_OK(ParseCredsFlag("user:"));
}

TEST(CredsFlagTest, ToStringRedacts) {
  Credentials c{"alice", "hunter2-very-secret", "/x/auth.json"};
  std::string s = c.ToString();
  EXPECT_EQ(s.find("hunter2"), std::string::npos) << s;
  EXPECT_NE(s.find("alice"), std::string::npos);
  EXPECT_NE(s.find("/x/auth.json"), std::string::npos);
  EXPECT_NE(s.find("redacted"), std::string::npos);
}

TEST(RegistryCredsTest, HostsAsDockerTellsThem) {
  EXPECT_TRUE(LooksLikeRegistryHost("registry.example.com"));
  EXPECT_TRUE(LooksLikeRegistryHost("127.0.0.1:5000"));
  EXPECT_TRUE(LooksLikeRegistryHost("localhost"));
  EXPECT_TRUE(LooksLikeRegistryHost("myhost:443"));
  EXPECT_TRUE(LooksLikeRegistryHost("[::1]:5000"));
  EXPECT_FALSE(LooksLikeRegistryHost("alice"));
  EXPECT_FALSE(LooksLikeRegistryHost("alice:pw"));  // a port is digits
  EXPECT_FALSE(LooksLikeRegistryHost("a b.com"));
  EXPECT_FALSE(LooksLikeRegistryHost(""));
  EXPECT_FALSE(LooksLikeRegistryHost("host:"));
}

TEST(RegistryCredsTest, EntriesAreBoundToTheirRegistry) {
  auto a = ParseRegistryCreds("Reg.Example.com=alice:pw=with=equals", "");
  ASSERT_OK(a);
  EXPECT_EQ(a->registry, "reg.example.com");
  EXPECT_EQ(a->creds.username, "alice");
  EXPECT_EQ(a->creds.password, "pw=with=equals");

  auto b = ParseRegistryCreds("127.0.0.1:5000=bob:x:y", "");
  ASSERT_OK(b);
  EXPECT_EQ(b->registry, "127.0.0.1:5000");
  EXPECT_EQ(b->creds.username, "bob");
  EXPECT_EQ(b->creds.password, "x:y");

  // Plain USER:PASSWORD is for the default registry (the mounted image's),
  // also when the password holds '='.
  auto c = ParseRegistryCreds("carol:se=cret", "quay.io");
  ASSERT_OK(c);
  EXPECT_EQ(c->registry, "quay.io");
  EXPECT_EQ(c->creds.password, "se=cret");
  EXPECT_EQ(CredsEntryUserStart("carol:se=cret"), 0u);
  EXPECT_EQ(CredsEntryUserStart("quay.io=carol:x"), 8u);
}

TEST(RegistryCredsTest, PlainEntryWithoutRegistryIsRefused) {
  auto r = ParseRegistryCreds("alice:hunter2-secret", "");
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("HOST=USER:PASSWORD"), std::string::npos);
  EXPECT_EQ(r.status().ToString().find("hunter2"), std::string::npos);
  auto bad = ParseRegistryCreds("quay.io=hunter2-secret", "");
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.status().ToString().find("hunter2"), std::string::npos);
}

TEST(RegistryCredsTest, EachRegistryGetsOnlyItsOwn) {
  std::vector<RegistryCredentials> entries;
  for (const char* e : {"a.example.com=alice:pa", "b.example.com:5000=bob:pb",
                        "a.example.com=later:ignored", "docker.io=dan:pd"}) {
    auto rc = ParseRegistryCreds(e, "");
    ASSERT_OK(rc);
    entries.push_back(*rc);
  }
  auto a = CredentialsForRegistry(entries, "A.example.com");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->username, "alice");  // the first given wins
  auto b = CredentialsForRegistry(entries, "b.example.com:5000");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->username, "bob");
  EXPECT_FALSE(CredentialsForRegistry(entries, "b.example.com").has_value());  // other port
  EXPECT_FALSE(CredentialsForRegistry(entries, "c.example.com").has_value());
  auto hub = CredentialsForRegistry(entries, "index.docker.io");
  ASSERT_TRUE(hub.has_value());
  EXPECT_EQ(hub->username, "dan");
}

TEST(RegistryCredsTest, SplitEntries) {
  EXPECT_EQ(SplitCredsEntries("# comment\n\n  a.io=u:p  \r\nu2:p2\n"),
            (std::vector<std::string>{"a.io=u:p", "u2:p2"}));
  EXPECT_TRUE(SplitCredsEntries("").empty());
}

}  // namespace
}  // namespace regfs
