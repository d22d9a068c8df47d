#include "tests/support/restart_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <new>
#include <sstream>
#include <thread>

namespace regfs::testing {

using Clock = std::chrono::steady_clock;

void ReaderShared::Fail(int check, int err) {
  if (errors.fetch_add(1) == 0) {
    first_errno = err;
    first_check = check;
  }
}

void RunIterations(ReaderShared* sh, const std::function<void(uint64_t)>& iteration) {
  for (uint64_t i = 0; !sh->stop.load(); ++i) {
    auto t0 = Clock::now();
    iteration(i);
    uint64_t ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (ns > sh->max_iteration_ns.load()) sh->max_iteration_ns = ns;
    sh->iterations.fetch_add(1);
  }
}

int CheckPread(int fd, const std::string& want, size_t off, size_t len, char* buf) {
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ssize_t n = pread(fd, buf, len, static_cast<off_t>(off));
  if (n < 0) return errno;
  if (n != static_cast<ssize_t>(len) || std::memcmp(buf, want.data() + off, len) != 0) return -1;
  return 0;
}

void CheckPreadAt(ReaderShared* sh, int check, int fd, const std::string& want, uint64_t i,
                  char* buf) {
  size_t len = 64 << 10;
  size_t off = static_cast<size_t>((i * 97 * 1024) % (want.size() - len));
  if (int e = CheckPread(fd, want, off, len, buf); e != 0) sh->Fail(check, e < 0 ? 0 : e);
}

void CheckOpenAndRead(ReaderShared* sh, int check, const char* path, const std::string& want,
                      char* buf, size_t buf_size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    sh->Fail(check, errno);
    return;
  }
  size_t len = std::min(want.size(), buf_size);
  if (int e = CheckPread(fd, want, 0, len, buf); e != 0) sh->Fail(check, e < 0 ? 0 : e);
  close(fd);
}

ReaderProcess::ReaderProcess() {
  void* mem = mmap(nullptr, sizeof(ReaderShared), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem != MAP_FAILED) sh_ = new (mem) ReaderShared();
}

ReaderProcess::~ReaderProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (sh_) {
    sh_->~ReaderShared();
    munmap(sh_, sizeof(ReaderShared));
  }
}

bool ReaderProcess::Start(const std::function<void(ReaderShared*)>& body) {
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    body(sh_);
    _exit(0);
  }
  pid_ = pid;
  return true;
}

bool ReaderProcess::WaitIterations(uint64_t n, double limit_s) {
  uint64_t target = sh_->iterations.load() + n;
  auto deadline = Clock::now() + std::chrono::duration<double>(limit_s);
  while (sh_->iterations.load() < target && Clock::now() < deadline && sh_->errors.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return sh_->iterations.load() >= target;
}

bool ReaderProcess::Stop(int* status) {
  sh_->stop = true;
  *status = 0;
  if (waitpid(pid_, status, 0) != pid_) return false;
  pid_ = -1;
  return true;
}

void ReaderProcess::PrintFigures() const {
  std::printf("reader: %llu iterations, longest %.3f s, errors %llu\n",
              static_cast<unsigned long long>(sh_->iterations.load()),
              static_cast<double>(sh_->max_iteration_ns.load()) / 1e9,
              static_cast<unsigned long long>(sh_->errors.load()));
}

std::string ReaderProcess::FirstFailure() const {
  return "first failed check " + std::to_string(sh_->first_check.load()) + ": " +
         std::strerror(sh_->first_errno.load());
}

double KillAndWaitForProgress(pid_t daemon, const std::function<uint64_t()>& progress,
                              const std::function<bool()>& failed) {
  auto t0 = Clock::now();
  int killed = kill(daemon, SIGKILL);
  EXPECT_EQ(killed, 0) << "kill " << daemon << ": " << std::strerror(errno);
  if (killed != 0) return -1;
  uint64_t at_kill = progress();
  auto deadline = t0 + std::chrono::seconds(60);
  while (progress() <= at_kill + 1 && Clock::now() < deadline && !failed()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  double gap = std::chrono::duration<double>(Clock::now() - t0).count();
  return progress() > at_kill + 1 ? gap : -1;
}

bool WaitForLogLine(const std::function<std::string()>& log, const std::string& line) {
  for (int i = 0; i < 3000 && log().find(line) == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return log().find(line) != std::string::npos;
}

pid_t KillTheDaemonOnceHeld(const std::string& mnt, const std::function<std::string()>& log) {
  if (!WaitForLogLine(log, "the holder keeps the session")) {
    ADD_FAILURE() << "the holder has no session\n" << log();
    return -1;
  }
  pid_t holder = HolderOf(mnt);
  EXPECT_GT(holder, 0) << "no holder of " << mnt;
  if (holder <= 0) return -1;
  pid_t daemon = ChildOf(holder);
  EXPECT_GT(daemon, 0) << "no daemon under the holder";
  if (daemon <= 0) return -1;
  int killed = kill(daemon, SIGKILL);
  EXPECT_EQ(killed, 0) << "kill " << daemon << ": " << std::strerror(errno);
  return killed == 0 ? daemon : -1;
}

bool AnsweredWithin30s(const std::string& mnt, const std::function<void()>& call) {
  std::atomic<bool> done{false};
  std::thread caller([&] {
    call();
    done = true;
  });
  for (int i = 0; i < 3000 && !done.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool answered = done.load();
  pid_t holder = HolderOf(mnt);
  if (!answered && holder > 0) {
    pid_t daemon = ChildOf(holder);
    kill(holder, SIGKILL);
    if (daemon > 0) kill(daemon, SIGKILL);
  }
  caller.join();
  return answered;
}

pid_t ParentOf(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(line.substr(close + 2));
  char state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

pid_t ChildOf(pid_t holder) {
  std::ifstream f("/proc/" + std::to_string(holder) + "/task/" + std::to_string(holder) +
                  "/children");
  pid_t p = -1;
  f >> p;
  return p;
}

std::string Comm(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string s;
  std::getline(f, s);
  return s;
}

pid_t HolderOf(const std::string& mnt) {
  DIR* d = opendir("/proc");
  if (!d) return -1;
  pid_t found = -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t pid = std::atoi(e->d_name);
    if (Comm(pid) != "regfs-holder") continue;
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (cmdline.find(std::string(1, '\0') + mnt + std::string(1, '\0')) != std::string::npos) {
      found = pid;
    }
  }
  closedir(d);
  return found;
}

}  // namespace regfs::testing
