#include "reader/base/base64.h"

#include <gtest/gtest.h>

namespace regfs {
namespace {

TEST(Base64Test, Rfc4648Vectors) {
  const std::pair<const char*, const char*> kVectors[] = {
      {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},         {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : kVectors) {
    EXPECT_EQ(Base64Encode(plain), enc);
    EXPECT_EQ(Base64Decode(enc), std::string(plain));
  }
}

TEST(Base64Test, UrlAlphabetUnpadded) {
  std::string bytes("\xfb\xff\xbf", 3);
  EXPECT_EQ(Base64Encode(bytes), "+/+/");
  EXPECT_EQ(Base64Encode(bytes, true), "-_-_");
  EXPECT_EQ(Base64Encode("f", true), "Zg");
  EXPECT_EQ(Base64Decode("-_-_"), bytes);
}

TEST(Base64Test, LenientAndStrict) {
  EXPECT_EQ(Base64Decode("Zm9v\nYmFy\r\n"), "foobar");
  EXPECT_FALSE(Base64Decode("Zm9v!").has_value());
  EXPECT_EQ(Base64DecodeStrict("Zm8="), "fo");
  EXPECT_FALSE(Base64DecodeStrict("Zm8").has_value());
  EXPECT_FALSE(Base64DecodeStrict("Z=m8").has_value());
  EXPECT_FALSE(Base64DecodeStrict("Zm-_").has_value());
  EXPECT_FALSE(Base64DecodeStrict("Z===").has_value());
  EXPECT_FALSE(Base64DecodeStrict("").has_value());
}

}  // namespace
}  // namespace regfs
