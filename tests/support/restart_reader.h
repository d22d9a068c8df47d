// What the restart tests (tests/integration/restart_test.cc for `regfs
// mount`, store_restart_test.cc for `regfs store`) share: a reader process
// that reads files through the mount in a loop while the test SIGKILLs the
// daemon under its holder (fs/session_holder.h), the checks it makes, and
// the holder and its daemon as /proc shows them.
#ifndef REGFS_TESTS_SUPPORT_RESTART_READER_H_
#define REGFS_TESTS_SUPPORT_RESTART_READER_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace regfs::testing {

// What the reader process reports, in memory shared with the test.
struct ReaderShared {
  std::atomic<uint64_t> iterations{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> first_errno{0};
  std::atomic<int> first_check{0};
  std::atomic<uint64_t> max_iteration_ns{0};
  std::atomic<bool> stop{false};

  // Counts a failed check; the first one's number and errno (0: wrong or
  // short bytes) are kept.
  void Fail(int check, int err);
};

// In the reader (only system calls and memcmp: it is forked from a process
// with threads). Runs `iteration(i)` for i = 0, 1, ... until the test says
// stop, counting the iterations and keeping the longest.
void RunIterations(ReaderShared* sh, const std::function<void(uint64_t)>& iteration);

// `want` read through `fd` at `off` (len bytes), with the page cache of the
// file dropped first so that the read reaches the daemon. 0 when right, else
// the errno (or -1 for wrong bytes or a short read).
int CheckPread(int fd, const std::string& want, size_t off, size_t len, char* buf);
// Check `check`: 64 KiB of `want` through the open `fd`, at an offset that
// moves with the iteration `i`. `buf` holds at least 64 KiB.
void CheckPreadAt(ReaderShared* sh, int check, int fd, const std::string& want, uint64_t i,
                  char* buf);
// Check `check`: `path` opened (relative to the cwd, or absolute) and read
// from its start, up to `buf_size` bytes of `want`, and closed again.
void CheckOpenAndRead(ReaderShared* sh, int check, const char* path, const std::string& want,
                      char* buf, size_t buf_size);

// The reader process and the memory it reports in. On a failed assertion
// the destructor kills it, so that it does not keep the mount busy.
class ReaderProcess {
 public:
  ReaderProcess();
  ~ReaderProcess();
  ReaderProcess(const ReaderProcess&) = delete;
  ReaderProcess& operator=(const ReaderProcess&) = delete;

  // False when the shared memory could not be mapped.
  bool mapped() const { return sh_ != nullptr; }
  ReaderShared* shared() { return sh_; }
  pid_t pid() const { return pid_; }

  // Forks the reader, which runs `body` (and exits 0 if it returns). False
  // when fork failed.
  bool Start(const std::function<void(ReaderShared*)>& body);
  // Waits (bounded: `limit_s`) until the reader has done `n` more
  // iterations; gives up early on a failed check.
  bool WaitIterations(uint64_t n, double limit_s);
  // Tells the reader to stop and reaps it: false when waitpid failed, else
  // its wait status in `*status`.
  bool Stop(int* status);
  // "reader: N iterations, longest S s, errors E" on stdout.
  void PrintFigures() const;
  // "first failed check N: <strerror of its errno>".
  std::string FirstFailure() const;

 private:
  ReaderShared* sh_ = nullptr;
  pid_t pid_ = -1;
};

// SIGKILLs `daemon` and waits (bounded: 60 s) until `progress` has moved
// twice past its value at the kill (the reader goes on once a successor
// serves: the second step is an iteration that started after the kill), or
// until `failed`. Returns the seconds from the kill to then, or -1 when the
// kill failed (a failure is recorded) or `progress` did not move twice.
double KillAndWaitForProgress(pid_t daemon, const std::function<uint64_t()>& progress,
                              const std::function<bool()>& failed);

// Waits (bounded: 30 s) until `log()` holds `line`.
bool WaitForLogLine(const std::function<std::string()>& log, const std::string& line);
// Once `log()` says that the holder of the mount on `mnt` keeps the session
// (bounded wait: 30 s; before that a kill ends the mount), SIGKILLs the
// daemon under the holder. Returns its pid; -1 when a step failed (the
// failure is recorded, with `log()`).
pid_t KillTheDaemonOnceHeld(const std::string& mnt, const std::function<std::string()>& log);
// Runs `call`, a request to the mount on `mnt`, on a thread and waits for it
// (bounded: 30 s). When it is not answered by then, kills the mount's holder
// and its daemon: with no descriptor of the session left the kernel aborts
// the mount, which ends the call. Returns whether it was answered in time.
bool AnsweredWithin30s(const std::string& mnt, const std::function<void()>& call);

// Processes from /proc: the parent of `pid` (-1 if unknown); the holder's
// current daemon, its one child (-1 if none); a process's name.
pid_t ParentOf(pid_t pid);
pid_t ChildOf(pid_t holder);
std::string Comm(pid_t pid);
// The holder of the mount on `mnt`: a "regfs-holder" whose command line
// names it. -1 if none.
pid_t HolderOf(const std::string& mnt);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_RESTART_READER_H_
