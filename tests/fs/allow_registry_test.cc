// RegistryAllowed: which registries `regfs store --allow-registry` lets the
// store resolve images of.
#include <gtest/gtest.h>

#include "fs/options.h"
#include "reader/image/reference.h"

namespace regfs {
namespace {

TEST(RegistryAllowed, EmptyListAllowsAny) {
  CommonOptions o;
  EXPECT_TRUE(RegistryAllowed(o, "docker.io"));
  EXPECT_TRUE(RegistryAllowed(o, "127.0.0.1:5000"));
}

TEST(RegistryAllowed, OnlyListedRegistries) {
  CommonOptions o;
  o.allow_registries = {"quay.io", "127.0.0.1:5000"};
  EXPECT_TRUE(RegistryAllowed(o, "quay.io"));
  EXPECT_TRUE(RegistryAllowed(o, "127.0.0.1:5000"));
  EXPECT_FALSE(RegistryAllowed(o, "docker.io"));
  EXPECT_FALSE(RegistryAllowed(o, "127.0.0.1:5001"));
  EXPECT_FALSE(RegistryAllowed(o, "127.0.0.1"));
  EXPECT_FALSE(RegistryAllowed(o, "quay.io.evil.example"));
  EXPECT_FALSE(RegistryAllowed(o, "evil.quay.io"));
  EXPECT_FALSE(RegistryAllowed(o, ""));
}

TEST(RegistryAllowed, PortMustMatch) {
  CommonOptions o;
  o.allow_registries = {"registry.example"};
  EXPECT_TRUE(RegistryAllowed(o, "registry.example"));
  EXPECT_FALSE(RegistryAllowed(o, "registry.example:5000"));
}

TEST(RegistryAllowed, HostNamesHaveNoCase) {
  CommonOptions o;
  o.allow_registries = {"Registry.Example:5000"};
  EXPECT_TRUE(RegistryAllowed(o, "registry.example:5000"));
  EXPECT_TRUE(RegistryAllowed(o, "REGISTRY.example:5000"));
}

// The flag may name Docker Hub by any of its names; what is checked is the
// registry a parsed reference carries.
TEST(RegistryAllowed, DockerHubByAnyName) {
  for (const char* name : {"docker.io", "index.docker.io", "registry-1.docker.io"}) {
    SCOPED_TRACE(name);
    CommonOptions o;
    o.allow_registries = {name};
    for (const char* ref : {"alpine", "docker.io/library/alpine:3.19", "index.docker.io/a/b"}) {
      Result<Reference> r = ParseReference(ref);
      ASSERT_TRUE(r.ok()) << ref;
      EXPECT_TRUE(RegistryAllowed(o, r->registry)) << ref;
    }
    EXPECT_FALSE(RegistryAllowed(o, "quay.io"));
  }
}

}  // namespace
}  // namespace regfs
