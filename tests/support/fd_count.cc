#include "tests/support/fd_count.h"

#include <dirent.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace regfs::testing {

int CountOpenFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the DIR's own fd
}

std::string DescribeOpenFds() {
  std::string out;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return "?";
  int self = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.' || std::atoi(e->d_name) == self) continue;
    char target[512];
    std::string path = std::string("/proc/self/fd/") + e->d_name;
    ssize_t len = readlink(path.c_str(), target, sizeof target - 1);
    target[len < 0 ? 0 : len] = 0;
    out += std::string(e->d_name) + " -> " + target + "\n";
  }
  closedir(d);
  return out;
}

void FdCheckedTest::SetUp() {
  fds_before_ = CountOpenFds();
  fds_before_desc_ = DescribeOpenFds();
}

int FdCheckedTest::SettledFdCount(int ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  int n = CountOpenFds();
  while (n > fds_before_ && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    n = CountOpenFds();
  }
  return n;
}

void FdCheckedTest::TearDown() {
  int after = SettledFdCount();
  EXPECT_LE(after, fds_before_) << "open fds grew from " << fds_before_ << " to " << after
                                << "\nbefore:\n" << fds_before_desc_
                                << "after:\n" << DescribeOpenFds();
}

}  // namespace regfs::testing
