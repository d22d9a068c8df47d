// UniqueFd: owns one file descriptor and closes it on scope exit, so that no
// error path can leak it. Move-only. close() errors are ignored (the fd is
// gone either way).
#ifndef REGFS_READER_BASE_UNIQUE_FD_H_
#define REGFS_READER_BASE_UNIQUE_FD_H_

#include <unistd.h>

namespace regfs {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace regfs

#endif  // REGFS_READER_BASE_UNIQUE_FD_H_
