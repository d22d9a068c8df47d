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

TEST(DigestTest, ChainGivesTheDigestAndResumesFromItsState) {
  std::string msg;
  for (int i = 0; i < 1000; ++i) msg += static_cast<char>(i * 7 + 3);
  Sha256Chain whole;
  whole.Update(msg.data(), 320);
  const std::string state = whole.State();
  ASSERT_EQ(state.size(), Sha256Chain::kStateBytes);
  EXPECT_EQ(whole.bytes(), 320u);
  whole.Update(msg.data() + 320, msg.size() - 320);
  EXPECT_TRUE(whole.State().empty());  // 1000 is not at a block boundary
  EXPECT_EQ(whole.FinishDigest(), Sha256Digest(msg));

  // Resumed from the state after 320 bytes, the rest gives the same digest.
  auto resumed = Sha256Chain::Resume(state, 320);
  ASSERT_OK(resumed.status());
  resumed->Update(msg.data() + 320, msg.size() - 320);
  EXPECT_EQ(resumed->FinishDigest(), Sha256Digest(msg));

  // A state taken at 640 bytes from the resumed hash is the one a fresh pass
  // reaches; a change in the bytes between gives another state.
  auto a = Sha256Chain::Resume(state, 320);
  ASSERT_OK(a.status());
  a->Update(msg.data() + 320, 320);
  Sha256Chain fresh;
  fresh.Update(msg.data(), 640);
  EXPECT_EQ(a->State(), fresh.State());
  std::string changed = msg;
  changed[500] ^= 1;
  auto b = Sha256Chain::Resume(state, 320);
  ASSERT_OK(b.status());
  b->Update(changed.data() + 320, 320);
  EXPECT_NE(b->State(), fresh.State());
  // The same bytes resumed at another length give another digest (the
  // length is part of the padding).
  auto c = Sha256Chain::Resume(state, 384);
  ASSERT_OK(c.status());
  c->Update(msg.data() + 320, msg.size() - 320);
  EXPECT_NE(c->FinishDigest(), Sha256Digest(msg));
}

TEST(DigestTest, ChainResumeRejectsBadStates) {
  auto short_state = Sha256Chain::Resume(std::string(31, 'x'), 64);
  EXPECT_EQ(short_state.status().code(), Code::kInvalidArgument);
  auto mid_block = Sha256Chain::Resume(std::string(32, 'x'), 65);
  EXPECT_EQ(mid_block.status().code(), Code::kInvalidArgument);
  auto ok = Sha256Chain::Resume(std::string(32, 'x'), 1u << 20);
  EXPECT_OK(ok.status());
}

}  // namespace
}  // namespace regfs
