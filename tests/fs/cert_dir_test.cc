// ReadCertDir: containers/image's certificate directory layout (*.crt CAs,
// X.cert + X.key client pairs).
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "fs/options.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/status_matchers.h"

namespace regfs::testing {
namespace {

class CertDirTest : public FdCheckedTest {
 protected:
  void Put(const std::string& name, const std::string& text) {
    std::ofstream(dir_.Sub(name)) << text;
  }
  TempDir dir_{"regfs-certdir"};
};

TEST_F(CertDirTest, EmptyDirectoryHasNothing) {
  auto c = ReadCertDir(dir_.path());
  ASSERT_OK(c);
  EXPECT_EQ(c->ca_pem, "");
  EXPECT_EQ(c->client_cert_pem, "");
  EXPECT_EQ(c->client_key_pem, "");
}

TEST_F(CertDirTest, CasAreConcatenatedInNameOrderAndTheFirstClientPairIsUsed) {
  Put("b.crt", "CA-B");
  Put("a.crt", "CA-A");
  Put("other.pem", "ignored");
  Put("z.cert", "CERT-Z");
  Put("z.key", "KEY-Z");
  Put("m.cert", "CERT-M");
  Put("m.key", "KEY-M");
  auto c = ReadCertDir(dir_.path());
  ASSERT_OK(c);
  EXPECT_EQ(c->ca_pem, "CA-A\nCA-B\n");
  EXPECT_EQ(c->client_cert_pem, "CERT-M");
  EXPECT_EQ(c->client_key_pem, "KEY-M");
}

TEST_F(CertDirTest, ACertificateWithoutItsKeyIsAnError) {
  Put("client.cert", "CERT");
  auto c = ReadCertDir(dir_.path());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
  EXPECT_NE(c.status().message().find("client.cert has no key client.key"), std::string::npos);
}

TEST_F(CertDirTest, AKeyWithoutItsCertificateIsAnError) {
  Put("client.key", "KEY");
  auto c = ReadCertDir(dir_.path());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
}

TEST_F(CertDirTest, AMissingDirectoryIsNotFound) {
  EXPECT_EQ(ReadCertDir(dir_.Sub("missing")).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace regfs::testing
