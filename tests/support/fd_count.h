// Counting the process's open file descriptors, for leak checks. Every test
// fixture that does I/O records the count in SetUp and compares in TearDown.
#ifndef REGFS_TESTS_SUPPORT_FD_COUNT_H_
#define REGFS_TESTS_SUPPORT_FD_COUNT_H_

#include <gtest/gtest.h>

#include <string>

namespace regfs::testing {

// Number of entries in /proc/self/fd (excluding the directory's own fd).
int CountOpenFds();
// "3 -> /dev/null\n4 -> socket:[123]\n..." for failure messages.
std::string DescribeOpenFds();

// Base fixture: fails a test whose fds grow. Derived fixtures that start
// servers must start them after FdCheckedTest::SetUp() only if those servers
// are also stopped before FdCheckedTest::TearDown() runs.
class FdCheckedTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // Let asynchronous closes (curl's connection cache, threads) settle: polls
  // up to `ms` for the count to return to the baseline.
  int SettledFdCount(int ms = 2000);

  int fds_before_ = 0;
  std::string fds_before_desc_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_FD_COUNT_H_
