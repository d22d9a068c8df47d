#include "fs/session_holder.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "reader/base/log.h"

namespace regfs {
namespace {

// Messages (one SOCK_SEQPACKET datagram each):
//   daemon -> holder: 'P' u32 init_len, init, state  + the session fd   (deposit)
//                     'G'                                              (withdraw)
//   holder -> daemon: 'S' u32 init_len, init, state  + the session fd   (a session)
//                     'N'                                              (none)
// A session's journal fd, if any, rides after the session fd.
constexpr size_t kMaxMessage = 64 * 1024;

HolderLink* g_link = nullptr;
volatile sig_atomic_t g_daemon_pid = 0;  // the holder's current daemon

void ForwardSignal(int sig) {
  if (g_daemon_pid > 0) kill(g_daemon_pid, sig);
}

constexpr int kForwarded[] = {SIGTERM, SIGINT, SIGHUP};

std::string Pack(char type, std::string_view init, std::string_view state) {
  std::string m(1, type);
  uint32_t n = static_cast<uint32_t>(init.size());
  m.append(reinterpret_cast<const char*>(&n), sizeof n);
  m.append(init);
  m.append(state);
  return m;
}

bool Unpack(const std::string& m, std::string* init, std::string* state) {
  uint32_t n;
  if (m.size() < 1 + sizeof n) return false;
  std::memcpy(&n, m.data() + 1, sizeof n);
  if (n > m.size() - 1 - sizeof n) return false;
  *init = m.substr(1 + sizeof n, n);
  *state = m.substr(1 + sizeof n + n);
  return true;
}

constexpr size_t kMaxFds = 2;  // the session's, and its journal's

// Sends `msg`, with `fd` (and then `fd2`) attached when >= 0.
Status SendMsg(int sock, const std::string& msg, int fd, int fd2 = -1) {
  iovec iov{const_cast<char*>(msg.data()), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))];
  int fds[kMaxFds];
  size_t nfds = 0;
  for (int f : {fd, fd2}) {
    if (f >= 0) fds[nfds++] = f;
  }
  if (nfds > 0) {
    std::memset(control, 0, sizeof control);
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  ssize_t n;
  while ((n = sendmsg(sock, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n < 0) return Status::IoError(std::string("holder socket: ") + std::strerror(errno));
  return Status::Ok();
}

// Receives one message and the fds attached to it, if any (the first in
// `fd`, a second in `fd2`). 0 bytes: EOF.
Result<std::string> RecvMsg(int sock, UniqueFd* fd, UniqueFd* fd2 = nullptr) {
  std::string buf(kMaxMessage, '\0');
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))];
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n;
  while ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n < 0) return Status::IoError(std::string("holder socket: ") + std::strerror(errno));
  std::vector<UniqueFd> got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
        got.emplace_back(f);  // owned, so that an unexpected one is closed
      }
    }
  }
  if (got.size() > 0) *fd = std::move(got[0]);
  if (got.size() > 1 && fd2) *fd2 = std::move(got[1]);
  buf.resize(static_cast<size_t>(n));
  return buf;
}

// Answers one daemon's messages until it closes its end (it died or exited).
void ServeDaemon(int sock, std::optional<HeldSession>* held) {
  for (;;) {
    UniqueFd fd, journal;
    Result<std::string> m = RecvMsg(sock, &fd, &journal);
    if (!m.ok() || m->empty()) return;
    if ((*m)[0] == 'P') {
      HeldSession s;
      if (!fd.valid() || !Unpack(*m, &s.init, &s.state)) {
        LOG_WARN("holder: a malformed deposit, ignored");
        continue;
      }
      s.fd = std::move(fd);
      s.journal = std::move(journal);
      *held = std::move(s);
    } else if ((*m)[0] == 'G') {
      Status sent = *held ? SendMsg(sock, Pack('S', (*held)->init, (*held)->state),
                                    (*held)->fd.get(), (*held)->journal.get())
                          : SendMsg(sock, "N", -1);
      if (!sent.ok()) return;
    }
  }
}

}  // namespace

Status HolderLink::Deposit(int fuse_fd, std::string_view init, std::string_view state,
                           int journal_fd) {
  return SendMsg(sock_.get(), Pack('P', init, state), fuse_fd, journal_fd);
}

Result<std::optional<HeldSession>> HolderLink::Withdraw() {
  RETURN_IF_ERROR(SendMsg(sock_.get(), "G", -1));
  UniqueFd fd, journal;
  ASSIGN_OR_RETURN(std::string m, RecvMsg(sock_.get(), &fd, &journal));
  if (m == "N") return std::optional<HeldSession>();
  HeldSession s;
  if (m.empty() || m[0] != 'S' || !fd.valid() || !Unpack(m, &s.init, &s.state)) {
    return Status::IoError("holder: malformed answer");
  }
  s.fd = std::move(fd);
  s.journal = std::move(journal);
  return std::optional<HeldSession>(std::move(s));
}

void HolderLink::MountIsLive() { prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0); }

HolderLink* CurrentHolderLink() { return g_link; }

int RunHeld(const std::function<int(bool first)>& serve, const HolderOptions& opts) {
  std::optional<HeldSession> held;
  int quick_deaths = 0;
  bool named = false;
  struct sigaction sa{};
  sa.sa_handler = ForwardSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : kForwarded) sigaction(sig, &sa, nullptr);  // no SA_RESTART: EINTR is handled
  for (bool first = true;; first = false) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      LOG_ERROR(std::string("holder: socketpair: ") + std::strerror(errno));
      return 1;
    }
    auto started = std::chrono::steady_clock::now();
    const pid_t holder_pid = getpid();
    // The forwarded signals stay blocked across fork until each side is set:
    // the holder until g_daemon_pid names the new daemon (a SIGTERM in
    // between was forwarded to nobody and lost), the daemon until its
    // handlers are the defaults again.
    sigset_t forwarded, before;
    sigemptyset(&forwarded);
    for (int sig : kForwarded) sigaddset(&forwarded, sig);
    pthread_sigmask(SIG_BLOCK, &forwarded, &before);
    pid_t pid = fork();
    if (pid < 0) {
      LOG_ERROR(std::string("holder: fork: ") + std::strerror(errno));
      pthread_sigmask(SIG_SETMASK, &before, nullptr);
      close(sv[0]);
      close(sv[1]);
      return 1;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  // until MountIsLive
      if (getppid() != holder_pid) _exit(1);     // the holder is gone already
      for (int sig : kForwarded) signal(sig, SIG_DFL);
      g_daemon_pid = 0;
      pthread_sigmask(SIG_SETMASK, &before, nullptr);
      close(sv[0]);
      held.reset();  // the successor asks for it: one copy, in the holder
      g_link = new HolderLink(UniqueFd(sv[1]));
      _exit(serve(first));
    }
    if (opts.right_after_fork) opts.right_after_fork();
    g_daemon_pid = pid;
    pthread_sigmask(SIG_SETMASK, &before, nullptr);  // one that came meanwhile goes to `pid`
    close(sv[1]);
    if (first && opts.after_first_fork) opts.after_first_fork();
    if (!named && !opts.name.empty()) {
      // The holder's name tells it apart from its daemon in `ps`.
      prctl(PR_SET_NAME, opts.name.c_str(), 0, 0, 0);
      named = true;
    }
    ServeDaemon(sv[0], &held);
    close(sv[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    g_daemon_pid = 0;
    if (WIFEXITED(st)) return WEXITSTATUS(st);  // unmounted, SIGTERM, or a startup error
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    if (!held) {
      LOG_ERROR("holder: the daemon died of signal " + std::to_string(sig) +
                " before its mount was live");
      return 128 + sig;
    }
    double lived =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    quick_deaths = lived < opts.quick_death_s ? quick_deaths + 1 : 0;
    if (quick_deaths > opts.max_quick_deaths) {
      LOG_ERROR("holder: the daemon keeps dying (signal " + std::to_string(sig) +
                "); giving the mount up");
      return 128 + sig;
    }
    LOG_WARN("holder: daemon " + std::to_string(pid) + " died of signal " +
             std::to_string(sig) + " after " + std::to_string(lived) +
             " s; starting a successor to take the mount over");
    // A successor that dies at once must not spin the machine.
    if (quick_deaths > 3) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace regfs
