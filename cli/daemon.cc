#include "cli/daemon.h"

#include <fcntl.h>
#include <systemd/sd-daemon.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fs/session_holder.h"
#include "reader/base/log.h"
#include "reader/base/unique_fd.h"

namespace regfs {
namespace {

// After "OK": stdio to /dev/null, cwd to / (the parent has exited).
void DetachFromTerminal() {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);  // logs go to --log-file, if any
    close(null);
  }
  if (chdir("/") != 0) LOG_WARN("chdir / failed");
}

// The child's half of the readiness pipe: "OK" or an error message, once.
class ReadyPipe : public DaemonReady {
 public:
  explicit ReadyPipe(int fd) : fd_(fd) {}
  void Send(const std::string& msg) override {
    if (fd_.get() < 0) return;
    (void)!write(fd_.get(), msg.data(), msg.size());
    fd_.Reset();
    if (msg == "OK") DetachFromTerminal();
  }

 private:
  UniqueFd fd_;
};

// A successor's readiness: nobody waits for it; an error goes to the log.
class LogReady : public DaemonReady {
 public:
  void Send(const std::string& msg) override {
    if (msg != "OK") LOG_ERROR("successor daemon: " + msg);
  }
};

// In the foreground under a Type=notify unit ($NOTIFY_SOCKET set): "OK"
// becomes READY=1, so that units ordered after this one (and `systemctl
// start`) wait for a live mount; an error goes to stderr as in the plain
// foreground, and into the unit's status line.
class SystemdReady : public DaemonReady {
 public:
  void Send(const std::string& msg) override {
    if (msg == "OK") {
      sd_notify(0, "READY=1\nSTATUS=serving");
      return;
    }
    std::fprintf(stderr, "regfs: %s\n", msg.c_str());
    sd_notifyf(0, "STATUS=%s", msg.c_str());
  }
};

}  // namespace

int RunDaemon(const std::string& log_file, bool foreground,
              const std::function<int(DaemonReady*)>& serve, bool hold) {
  if (!log_file.empty()) {
    std::FILE* f = std::fopen(log_file.c_str(), "ae");
    if (!f) {
      std::fprintf(stderr, "regfs: cannot open log file %s: %s\n", log_file.c_str(),
                   std::strerror(errno));
      return 1;
    }
    SetLogFile(f);  // lives as long as the process
  }
  if (foreground) {
    if (!std::getenv("NOTIFY_SOCKET")) {
      if (!hold) return serve(nullptr);
      // This process (a terminal's, or a systemd unit's main process) holds;
      // each daemon reports on stderr, as in the foreground.
      return RunHeld([&](bool) { return serve(nullptr); });
    }
    // Under systemd. Held, the daemon that says READY=1 is a child of the
    // unit's main process (the holder): the units say NotifyAccess=all.
    SystemdReady ready;
    int rc = hold ? RunHeld([&](bool) { return serve(&ready); }) : serve(&ready);
    // The mount is gone: systemd shows the unit deactivating, not failed.
    sd_notify(0, "STOPPING=1");
    return rc;
  }

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    std::perror("regfs: pipe");
    return 1;
  }
  UniqueFd rd(fds[0]);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[1]);
    std::perror("regfs: fork");
    return 1;
  }
  if (pid == 0) {
    rd.Reset();
    setsid();
    if (!hold) {
      ReadyPipe ready(fds[1]);
      _exit(serve(&ready));
    }
    HolderOptions ho;
    ho.after_first_fork = [&] {
      close(fds[1]);  // the parent's read ends when the first daemon reports
      DetachFromTerminal();
    };
    _exit(RunHeld(
        [&](bool first) {
          if (first) {
            ReadyPipe ready(fds[1]);
            return serve(&ready);
          }
          LogReady ready;
          return serve(&ready);
        },
        ho));
  }
  close(fds[1]);
  std::string msg;
  char buf[4096];
  ssize_t n;
  while ((n = read(rd.get(), buf, sizeof buf)) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    msg.append(buf, static_cast<size_t>(n));
  }
  if (msg == "OK") return 0;
  int status = 0;
  waitpid(pid, &status, 0);
  if (msg.empty()) msg = "the daemon exited before the mount was ready";
  std::fprintf(stderr, "regfs: %s\n", msg.c_str());
  return 1;
}

}  // namespace regfs
