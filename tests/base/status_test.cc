#include "reader/base/status.h"

#include <gtest/gtest.h>

#include "reader/base/digest.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

Result<int> Half(int x) {
  if (x % 2) return Status::InvalidArgument("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, OkAndErrors) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "OK");
  Status s = Status::NotFound("blob x").Annotate("layer 2");
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_EQ(s.ToString(), "NotFound: layer 2: blob x");
}

TEST(StatusTest, ResultPropagates) {
  ASSERT_OK(Quarter(8));
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST(DigestTest, KnownVectors) {
  EXPECT_EQ(Sha256Digest(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 h;
  h.Update("a");
  h.Update("bc");
  EXPECT_EQ(h.FinishDigest(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(DigestTest, Validate) {
  EXPECT_OK(ValidateDigest(Sha256Digest("x")));
  EXPECT_EQ(ValidateDigest("sha512:abcd").code(), Code::kUnsupported);
  EXPECT_EQ(ValidateDigest("sha256:ABC").code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateDigest("nocolon").code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateDigest("sha256:" + std::string(63, 'a') + "G").code(),
            Code::kInvalidArgument);
}

}  // namespace
}  // namespace regfs
