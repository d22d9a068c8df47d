#include "reader/image/reference.h"

#include <gtest/gtest.h>

#include <cctype>
#include <ostream>
#include <string>

#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

const std::string kHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const std::string kDigest = "sha256:" + kHex;

struct Good {
  std::string in, registry, repository, tag, digest, normalized;
};

// Test names shown by ctest: the input, shortened, with only safe characters.
std::string SafeName(const std::string& in) {
  std::string out = in.empty() ? "(empty)" : in.substr(0, 48);
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != ':' && c != '/' &&
        c != '-' && c != '@' && c != '(' && c != ')') {
      c = '_';
    }
  }
  return out;
}

void PrintTo(const Good& g, std::ostream* os) { *os << SafeName(g.in); }

class ReferenceGoodTest : public ::testing::TestWithParam<Good> {};

TEST_P(ReferenceGoodTest, ParsesAndNormalizes) {
  const Good& g = GetParam();
  auto r = ParseReference(g.in);
  ASSERT_OK(r);
  EXPECT_EQ(r->registry, g.registry) << g.in;
  EXPECT_EQ(r->repository, g.repository) << g.in;
  EXPECT_EQ(r->tag, g.tag) << g.in;
  EXPECT_EQ(r->digest, g.digest) << g.in;
  EXPECT_EQ(r->Normalized(), g.normalized) << g.in;
  // Normalizing is idempotent.
  auto again = ParseReference(r->Normalized());
  ASSERT_OK(again);
  EXPECT_EQ(again->Normalized(), g.normalized);
}

INSTANTIATE_TEST_SUITE_P(
    Docker, ReferenceGoodTest,
    ::testing::Values(
        Good{"alpine", "docker.io", "library/alpine", "latest", "",
             "docker.io/library/alpine:latest"},
        Good{"alpine:3.19", "docker.io", "library/alpine", "3.19", "",
             "docker.io/library/alpine:3.19"},
        Good{"user/app:1.0", "docker.io", "user/app", "1.0", "", "docker.io/user/app:1.0"},
        Good{"docker.io/alpine", "docker.io", "library/alpine", "latest", "",
             "docker.io/library/alpine:latest"},
        Good{"index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", "",
             "docker.io/library/alpine:latest"},
        Good{"docker.io/library/alpine:edge", "docker.io", "library/alpine", "edge", "",
             "docker.io/library/alpine:edge"},
        Good{"localhost/foo", "localhost", "foo", "latest", "", "localhost/foo:latest"},
        Good{"localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", "tag", "",
             "localhost:5000/foo/bar:tag"},
        Good{"127.0.0.1:5000/a/b:tag", "127.0.0.1:5000", "a/b", "tag", "",
             "127.0.0.1:5000/a/b:tag"},
        Good{"quay.io/coreos/etcd:v3.5.0", "quay.io", "coreos/etcd", "v3.5.0", "",
             "quay.io/coreos/etcd:v3.5.0"},
        Good{"foo.com:8080/bar@" + kDigest, "foo.com:8080", "bar", "", kDigest,
             "foo.com:8080/bar@" + kDigest},
        Good{"foo/bar:tag@" + kDigest, "docker.io", "foo/bar", "tag", kDigest,
             "docker.io/foo/bar:tag@" + kDigest},
        Good{"alpine@" + kDigest, "docker.io", "library/alpine", "", kDigest,
             "docker.io/library/alpine@" + kDigest},
        // A first component with uppercase letters is a host, as docker decides.
        Good{"Foo/bar", "Foo", "bar", "latest", "", "Foo/bar:latest"},
        Good{"a.b/c", "a.b", "c", "latest", "", "a.b/c:latest"},
        Good{"a/b/c/d:t", "docker.io", "a/b/c/d", "t", "", "docker.io/a/b/c/d:t"},
        Good{"foo.bar", "docker.io", "library/foo.bar", "latest", "",
             "docker.io/library/foo.bar:latest"},
        Good{"foo__bar/x-y--z", "docker.io", "foo__bar/x-y--z", "latest", "",
             "docker.io/foo__bar/x-y--z:latest"},
        Good{"foo_bar:_tag", "docker.io", "library/foo_bar", "_tag", "",
             "docker.io/library/foo_bar:_tag"},
        Good{"[::1]:5000/foo:t", "[::1]:5000", "foo", "t", "", "[::1]:5000/foo:t"},
        // No slash: "localhost:5000" is name "localhost" with tag "5000".
        Good{"localhost:5000", "docker.io", "library/localhost", "5000", "",
             "docker.io/library/localhost:5000"},
        Good{"my-registry.example.com/team/app:" + std::string(128, 'x'), "my-registry.example.com",
             "team/app", std::string(128, 'x'), "",
             "my-registry.example.com/team/app:" + std::string(128, 'x')}));

struct Bad {
  std::string in;
  std::string message_part;
};

void PrintTo(const Bad& b, std::ostream* os) { *os << SafeName(b.in); }

class ReferenceBadTest : public ::testing::TestWithParam<Bad> {};

TEST_P(ReferenceBadTest, Rejects) {
  const Bad& b = GetParam();
  auto r = ParseReference(b.in);
  ASSERT_FALSE(r.ok()) << b.in << " parsed as " << r->Normalized();
  EXPECT_TRUE(r.status().code() == Code::kInvalidArgument ||
              r.status().code() == Code::kUnsupported)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find(b.message_part), std::string::npos)
      << b.in << " -> " << r.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Docker, ReferenceBadTest,
    ::testing::Values(
        Bad{"", "empty reference"}, Bad{"Alpine", "lowercase"},
        Bad{"docker.io/Alpine", "lowercase"}, Bad{"quay.io/Org/app", "lowercase"},
        Bad{"alpine:", "empty tag"}, Bad{"alpine:-bad", "must start"},
        Bad{"alpine:ta+g", "character '+'"}, Bad{"alpine:" + std::string(129, 'x'), "129"},
        Bad{"alpine@sha256:abc", "64 hex"}, Bad{"alpine@", "empty digest"},
        Bad{"alpine@sha256:" + std::string(64, 'G'), "hex"}, Bad{"alpine@md5:abc", "not supported"},
        Bad{"alpine/", "ends with '/'"}, Bad{"/alpine", "starts with '/'"},
        Bad{"a//b", "empty path component"}, Bad{"foo_/bar", "path component 'foo_'"},
        Bad{"foo___bar", "path component"}, Bad{"-foo", "path component"}, Bad{kHex, "image ID"},
        Bad{"localhost:abc/foo", "registry host"}, Bad{"example.com:/foo", "registry host"},
        Bad{"bad..host/foo", "registry host"}, Bad{"al pine", "whitespace"},
        Bad{"a/" + std::string(300, 'b'), "longer than 255"},
        Bad{"@" + kDigest, "no repository name"}, Bad{":tag", "no repository name"},
        Bad{"a@" + kDigest + "@" + kDigest, "more than one '@'"}));

TEST(ReferenceTest, ManifestReferenceAndApiHost) {
  auto r = ParseReference("alpine");
  ASSERT_OK(r);
  EXPECT_EQ(r->ManifestReference(), "latest");
  EXPECT_EQ(r->ApiHost(), "registry-1.docker.io");
  auto d = ParseReference("127.0.0.1:5000/a/b:t@" + kDigest);
  ASSERT_OK(d);
  EXPECT_EQ(d->ManifestReference(), kDigest);  // the digest wins over the tag
  EXPECT_EQ(d->ApiHost(), "127.0.0.1:5000");
}

}  // namespace
}  // namespace regfs
