// Redirects followed by hand, bearer and basic auth, TLS/scheme choice.
#include <gtest/gtest.h>

#include <cstdio>
#include <thread>

#include "reader/base/log.h"
#include "tests/http/reader_fixture.h"

namespace regfs::testing {
namespace {

class Redirect : public ReaderTest {
 protected:
  void SetUp() override {
    ReaderTest::SetUp();
    ASSERT_OK(cdn_.Start());
    cdn_.RejectAuthorization(true);  // like S3 with a presigned URL
    cdn_.AddResource("/cdn/blob", blob_data_);
  }
  void TearDown() override {
    client_.reset();
    int open = -1;
    for (int i = 0; i < 200 && (open = cdn_.open_connections()) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(open, 0);
    EXPECT_LE(cdn_.peak_connections(), options_.pool_size);
    cdn_.Stop();  // before the fd check in ReaderTest::TearDown
    ReaderTest::TearDown();
  }
  std::string cdn_url() const { return cdn_.url() + "/cdn/blob?sig=secret"; }
  FaultServer cdn_;
};

TEST_F(Redirect, FollowedAndCachedPerBlob) {
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirect, -1, cdn_url()});
  std::string got;
  ASSERT_OK(Read(10, 1000, &got));
  EXPECT_EQ(got, Expected(10, 1000));
  ASSERT_OK(Read(5000, 1000, &got));
  EXPECT_EQ(got, Expected(5000, 1000));
  EXPECT_EQ(server_.RequestCount(blob_path()), 1);  // the second read went to the cache
  EXPECT_EQ(cdn_.RequestCount("/cdn/blob"), 2);
  EXPECT_EQ(client().Counters().redirects, 1u);
  EXPECT_EQ(cdn_.requests().back().Header("range"), "bytes=5000-5999");
}

TEST_F(Redirect, DropsAuthorizationToOtherHost) {
  server_.RequireBearer(300, std::chrono::seconds(300));
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirect, -1, cdn_url()});
  std::string got;
  ASSERT_OK(Read(0, 4096, &got));
  EXPECT_EQ(got, Expected(0, 4096));
  // The registry saw the token; the other host saw neither it nor Accept.
  bool registry_saw_token = false;
  for (const auto& r : server_.requests()) {
    if (r.path == blob_path() && r.Header("authorization").rfind("Bearer ", 0) == 0) {
      registry_saw_token = true;
    }
  }
  EXPECT_TRUE(registry_saw_token);
  for (const auto& r : cdn_.requests()) {
    EXPECT_EQ(r.Header("authorization"), "");
    EXPECT_EQ(r.status, 206);
  }
}

TEST_F(Redirect, DropsAuthorizationToOtherPortOfSameHost) {
  // Same host name (127.0.0.1), different port: a different origin.
  options_.credentials.explicit_creds = Credentials{"user", "pw-secret", "test"};
  server_.RequireBasic("user", "pw-secret");
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirect, -1, cdn_url()});
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  for (const auto& r : cdn_.requests()) EXPECT_EQ(r.Header("authorization"), "");
}

TEST_F(Redirect, DropsAuthorizationToOtherHostNameOnSamePort) {
  // "localhost" and "127.0.0.1" reach the same server but are different
  // origins: no credentials cross, even when the target asks for them.
  options_.credentials.explicit_creds = Credentials{"user", "pw-secret", "test"};
  server_.RequireBasic("user", "pw-secret");
  server_.AddFault(blob_path(),
                   Fault{FaultKind::kRedirect, -1,
                         "http://localhost:" + std::to_string(server_.port()) + blob_path()});
  std::string got;
  EXPECT_EQ(Read(0, 100, &got).code(), Code::kUnauthorized);
  int to_localhost = 0;
  for (const auto& r : server_.requests()) {
    if (r.Header("host").rfind("localhost", 0) == 0) {
      ++to_localhost;
      EXPECT_EQ(r.Header("authorization"), "");
    }
  }
  EXPECT_GE(to_localhost, 1);
}

TEST_F(Redirect, ManifestAcceptHeaderStaysWithRegistry) {
  std::string manifest = R"({"schemaVersion":2})";
  std::string path = std::string("/v2/") + kRepo + "/manifests/latest";
  server_.AddResource(path, manifest);
  cdn_.AddResource("/cdn/manifest", manifest);
  server_.AddFault(path, Fault{FaultKind::kRedirect, -1, cdn_.url() + "/cdn/manifest"});
  auto m = client().GetManifest("latest");
  ASSERT_OK(m);
  EXPECT_EQ(m->digest, Sha256Digest(manifest));
  ASSERT_EQ(cdn_.requests().size(), 1u);
  EXPECT_EQ(cdn_.requests()[0].Header("accept").find("vnd.oci"), std::string::npos);
  EXPECT_NE(server_.requests().back().Header("accept").find("vnd.oci"), std::string::npos);
}

TEST_F(Redirect, ReResolvedWhenCachedTargetRefuses) {
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirect, -1, cdn_url()}, 2);
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  cdn_.AddFault("/cdn/blob", Fault{FaultKind::kForbidden});  // an expired presigned URL
  ASSERT_OK(Read(100, 100, &got));
  EXPECT_EQ(got, Expected(100, 100));
  EXPECT_EQ(server_.RequestCount(blob_path()), 2);  // asked the registry again
}

TEST_F(Redirect, LoopStopsAfterTenHops) {
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirectLoop}, 1000);
  std::string got;
  Status st = Read(0, 100, &got);
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_NE(st.message().find("redirects"), std::string::npos);
  EXPECT_EQ(server_.RequestCount(blob_path()), 11);
}

TEST_F(Redirect, NonHttpSchemeRefused) {
  server_.AddFault(blob_path(), Fault{FaultKind::kRedirect, -1, "file:///etc/passwd"});
  std::string got;
  EXPECT_EQ(Read(0, 100, &got).code(), Code::kInvalidArgument);
}

TEST(RedirectCheck, NeverFromHttpsToPlainHttp) {
  Status st = CheckRedirect("https://registry.example.com/v2/a/blobs/sha256:1",
                            "http://storage.example.com/blob?sig=secret");
  EXPECT_EQ(st.code(), Code::kProtocol);
  EXPECT_NE(st.message().find("https to plain http"), std::string::npos) << st.message();
  EXPECT_EQ(st.message().find("secret"), std::string::npos) << st.message();
  EXPECT_OK(CheckRedirect("http://127.0.0.1:5000/v2/", "https://storage.example.com/b"));
  EXPECT_OK(CheckRedirect("https://r.example.com/v2/", "https://storage.example.com/b"));
  EXPECT_OK(CheckRedirect("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5001/b"));
}

TEST(RealmCheck, BasicCredentialsOnlyOverTlsOrToThePlainRegistryItself) {
  // https: any realm host, as containers/image and docker send them.
  EXPECT_TRUE(MaySendBasicToRealm("https://auth.example.com/t", "https://r.example.com", false));
  EXPECT_TRUE(MaySendBasicToRealm("https://auth.example.com/t", "http://127.0.0.1:5000", true));
  // plain http: only when the registry was made insecure (--tls-verify=false),
  // and only to its own host (a token server on another port beside it).
  EXPECT_TRUE(MaySendBasicToRealm("http://127.0.0.1:5000/t", "http://127.0.0.1:5000", true));
  EXPECT_TRUE(MaySendBasicToRealm("http://127.0.0.1:5001/t", "http://127.0.0.1:5000", true));
  EXPECT_TRUE(MaySendBasicToRealm("http://r.example.com/t", "https://r.example.com", true));
  EXPECT_FALSE(MaySendBasicToRealm("http://r.example.com/t", "https://r.example.com", false));
  EXPECT_FALSE(MaySendBasicToRealm("http://localhost:5000/t", "http://127.0.0.1:5000", true));
  EXPECT_FALSE(MaySendBasicToRealm("http://auth.example.com/t", "https://r.example.com", true));
  EXPECT_FALSE(MaySendBasicToRealm("http://auth.example.com/t", "", true));
  EXPECT_FALSE(MaySendBasicToRealm("ftp://r.example.com/t", "https://r.example.com", true));
}

using Auth = ReaderTest;

int CountStatus(const FaultServer& s, int status) {
  int n = 0;
  for (const auto& r : s.requests()) n += r.status == status;
  return n;
}

TEST_F(Auth, AnonymousBearerTokenFetchedOnceAndCached) {
  server_.RequireBearer(300, std::chrono::seconds(300));
  std::string got;
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK(Read(i * 100, 100, &got));
    EXPECT_EQ(got, Expected(i * 100, 100));
  }
  EXPECT_EQ(server_.token_requests(), 1u);
  EXPECT_EQ(client().Counters().token_fetches, 1u);
  EXPECT_EQ(CountStatus(server_, 401), 1);
  bool scoped = false;
  for (const auto& r : server_.requests()) {
    if (r.path == "/token")
      scoped = r.target.find("scope=repository%3Atest%2Frepo%3Apull") != std::string::npos;
  }
  EXPECT_TRUE(scoped);
}

TEST_F(Auth, TokenRefreshedBeforeExpiry) {
  // expires_in=2: the client refreshes after half the lifetime, before the
  // server would refuse the token; no request is answered 401 after the first.
  server_.RequireBearer(2, std::chrono::seconds(60));
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  ASSERT_OK(Read(0, 100, &got));
  EXPECT_EQ(server_.token_requests(), 2u);
  EXPECT_EQ(CountStatus(server_, 401), 1);
}

TEST_F(Auth, TokenRefreshedOn401) {
  server_.RequireBearer(300, std::chrono::seconds(300));
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  server_.ExpireTokens();
  ASSERT_OK(Read(100, 100, &got));
  EXPECT_EQ(got, Expected(100, 100));
  EXPECT_EQ(server_.token_requests(), 2u);
}

TEST_F(Auth, TokenRefreshedOn403) {
  server_.RequireBearer(300, std::chrono::seconds(300));
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  server_.AddFault(blob_path(), Fault{FaultKind::kForbidden});
  ASSERT_OK(Read(100, 100, &got));
  EXPECT_EQ(server_.token_requests(), 2u);
}

TEST_F(Auth, PersistentForbiddenIsUnauthorized) {
  server_.RequireBearer(300, std::chrono::seconds(300));
  server_.AddFault(blob_path(), Fault{FaultKind::kForbidden}, 100);
  std::string got;
  EXPECT_EQ(Read(0, 100, &got).code(), Code::kUnauthorized);
  EXPECT_LE(server_.RequestCount(blob_path()), 4);  // bounded auth rounds
}

TEST_F(Auth, BasicCredentials) {
  options_.credentials.explicit_creds = Credentials{"alice", "pw-secret", "test"};
  server_.RequireBasic("alice", "pw-secret");
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  EXPECT_EQ(got, Expected(0, 100));
  ASSERT_OK(Read(100, 100, &got));
  EXPECT_EQ(CountStatus(server_, 401), 1);  // basic is sent up front once known
}

TEST_F(Auth, BasicWithoutCredentialsIsUnauthorized) {
  server_.RequireBasic("alice", "pw-secret");
  std::string got;
  Status st = Read(0, 100, &got);
  EXPECT_EQ(st.code(), Code::kUnauthorized);
  EXPECT_NE(st.message().find("credentials"), std::string::npos) << st.message();
}

TEST_F(Auth, CredentialedTokenEndpoint) {
  options_.credentials.explicit_creds = Credentials{"bob", "tok-secret", "test"};
  server_.RequireBearer(300, std::chrono::seconds(300));
  server_.RequireBasicForToken("bob", "tok-secret");
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  EXPECT_EQ(server_.token_requests(), 1u);
}

TEST_F(Auth, BasicCredentialsWithheldFromPlainHttpRealmOnOtherHost) {
  // The registry names a token realm on another host ("localhost" is another
  // origin than "127.0.0.1") over plain http: the password would cross the
  // network in clear to a host it was not given for. The token is fetched
  // anonymously instead.
  options_.credentials.explicit_creds = Credentials{"bob", "tok-secret", "test"};
  server_.RequireBearer(300, std::chrono::seconds(300));
  server_.SetTokenRealm("http://localhost:" + std::to_string(server_.port()) + "/token");
  std::string got;
  ASSERT_OK(Read(0, 100, &got));
  EXPECT_EQ(got, Expected(0, 100));
  int token_requests = 0;
  for (const auto& r : server_.requests()) {
    if (r.path != "/token") continue;
    ++token_requests;
    EXPECT_EQ(r.Header("host").rfind("localhost", 0), 0u);
    EXPECT_EQ(r.Header("authorization"), "");
  }
  EXPECT_GE(token_requests, 1);
}

TEST_F(Auth, SecretsNeverInErrorsOrLogs) {
  options_.credentials.explicit_creds = Credentials{"alice", "hunter2-secret", "test"};
  server_.RequireBasic("alice", "other");
  std::FILE* log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  LogLevel old = GetLogLevel();
  SetLogLevel(LogLevel::kDebug);
  SetLogFile(log);
  std::string got;
  Status st = Read(0, 100, &got);
  SetLogFile(nullptr);
  SetLogLevel(old);
  EXPECT_EQ(st.code(), Code::kUnauthorized);
  EXPECT_EQ(st.ToString().find("hunter2"), std::string::npos) << st.ToString();
  std::string logged(8192, '\0');
  std::rewind(log);
  logged.resize(std::fread(logged.data(), 1, logged.size(), log));
  std::fclose(log);
  EXPECT_EQ(logged.find("hunter2"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("aHVudGVy"), std::string::npos);  // nor its base64
}

using Tls = ReaderTest;

TEST_F(Tls, VerifyOffFallsBackToPlainHttp) {
  std::string got;
  ASSERT_OK(Read(0, 10, &got));
  EXPECT_EQ(client().BaseUrl(), "http://" + server_.host_port());
}

TEST_F(Tls, VerifyOnNeverFallsBackToPlainHttp) {
  options_.tls_verify = true;
  std::string got;
  Status st = Read(0, 10, &got);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(client().BaseUrl(), "https://" + server_.host_port());
  for (const auto& r : server_.requests()) EXPECT_NE(r.path, blob_path());
}

}  // namespace
}  // namespace regfs::testing
