// The manager's end of $NOTIFY_SOCKET for tests that run regfs as systemd
// runs a Type=notify unit.
#ifndef REGFS_TESTS_PACKAGING_NOTIFY_SOCKET_H_
#define REGFS_TESTS_PACKAGING_NOTIFY_SOCKET_H_

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>

namespace regfs::testing {

// A datagram socket bound at `path`, collecting what the daemon sends.
class NotifySocket {
 public:
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    bound_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) close(fd_);
    unlink(path_.c_str());
  }
  bool ok() const { return bound_; }

  // Messages until one contains `want` (returned with all before it), or
  // the deadline; a deadline, not a timing assertion: a daemon that never
  // says `want` fails the test after it.
  std::string WaitFor(const std::string& want, int deadline_s = 60) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(deadline_s);
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) continue;
      got_.append(buf, static_cast<size_t>(n)).append("\n");
      if (got_.find(want) != std::string::npos) return got_;
    }
    return got_;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
  std::string got_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_PACKAGING_NOTIFY_SOCKET_H_
