#include "tests/support/fuse_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace regfs::testing {

std::string FuseUnavailableReason() {
  if (access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is missing or not accessible";
  if (system("command -v fusermount3 >/dev/null 2>&1") != 0) return "fusermount3 not found";
  return "";
}

TempDir::TempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "-XXXXXX";
  if (!mkdtemp(templ.data())) std::abort();
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  // Never recurse into a live mount.
  for (auto it = std::filesystem::recursive_directory_iterator(
           path_, std::filesystem::directory_options::skip_permission_denied, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec) && IsMountPoint(it->path().string())) {
      std::string cmd = "fusermount3 -u -z -q '" + it->path().string() + "' 2>/dev/null";
      (void)!system(cmd.c_str());
      it.disable_recursion_pending();
    }
  }
  std::filesystem::remove_all(path_, ec);
}

bool IsMountPoint(const std::string& path) {
  struct stat a, b;
  if (stat(path.c_str(), &a) != 0) return errno == ENOTCONN;  // a dead FUSE mount
  std::string parent = std::filesystem::path(path).parent_path().string();
  if (stat(parent.c_str(), &b) != 0) return false;
  return a.st_dev != b.st_dev;
}

bool ReadWholeFile(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out->append(buf, static_cast<size_t>(n));
  close(fd);
  return n == 0;
}

long GetxattrAs(uid_t uid, const std::string& path, const std::string& name) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -errno;
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(fds[0]);
    close(fds[1]);
    return -e;
  }
  if (pid == 0) {
    // The child of a threaded process: system calls only, then _exit.
    long r;
    char v[256];
    if (chdir(dir.c_str()) != 0 || setgid(uid) != 0 || setuid(uid) != 0) {
      r = -errno;
    } else {
      ssize_t n = lgetxattr(base.c_str(), name.c_str(), v, sizeof v);
      r = n < 0 ? -errno : n;
    }
    ssize_t w = write(fds[1], &r, sizeof r);
    _exit(w == static_cast<ssize_t>(sizeof r) ? 0 : 1);
  }
  close(fds[1]);
  long r = -EIO;
  ssize_t n;
  do {
    n = read(fds[0], &r, sizeof r);
  } while (n < 0 && errno == EINTR);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return -EIO;
  }
  return r;
}

}  // namespace regfs::testing
