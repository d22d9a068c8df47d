// ASSERT_OK / EXPECT_OK that print the Status on failure (leveldb's idea).
#ifndef REGFS_TESTS_SUPPORT_STATUS_MATCHERS_H_
#define REGFS_TESTS_SUPPORT_STATUS_MATCHERS_H_

#include <gtest/gtest.h>

#include "reader/base/status.h"

namespace regfs::testing {
inline const Status& AsStatus(const Status& s) { return s; }
template <typename T>
const Status& AsStatus(const Result<T>& r) { return r.status(); }
}  // namespace regfs::testing

#define EXPECT_OK(expr)                                                   \
  do {                                                                    \
    const auto& regfs_e_ = (expr);                                        \
    EXPECT_TRUE(::regfs::testing::AsStatus(regfs_e_).ok())                \
        << #expr << " -> " << ::regfs::testing::AsStatus(regfs_e_).ToString(); \
  } while (0)
#define ASSERT_OK(expr)                                                   \
  do {                                                                    \
    const auto& regfs_e_ = (expr);                                        \
    ASSERT_TRUE(::regfs::testing::AsStatus(regfs_e_).ok())                \
        << #expr << " -> " << ::regfs::testing::AsStatus(regfs_e_).ToString(); \
  } while (0)

#endif  // REGFS_TESTS_SUPPORT_STATUS_MATCHERS_H_
