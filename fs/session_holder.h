// Keeping a mount alive across its daemon's death. When a FUSE daemon dies
// (SIGKILL, a crash, OOM), the kernel aborts the connection once the last
// descriptor of /dev/fuse for it is closed: every open file, every cwd on
// the mount, every overlay lowerdir on it then gets ENOTCONN. A holder keeps
// a descriptor of the session, so the connection outlives the daemon, and
// starts a new daemon that takes the session over (no new mount; see
// FuseOptions::takeover): readers see a delay, not an error.
//
// The holder is the daemon's parent: RunHeld forks the daemon, receives its
// session descriptor (SCM_RIGHTS over a socketpair) with the kernel's INIT
// request and the daemon's own state (what the successor must know to show
// the same inodes), and forks a successor when the daemon dies by a signal.
// It never starts threads, so forking from it is safe; it does no I/O but
// the socket.
//
// Failure: a daemon that exits by itself (unmounted, SIGTERM, a startup
// error) ends the holder with its exit status. A daemon that dies by a
// signal before it deposited a session, or successors that keep dying at
// once, end it too; the mount then goes as it would without a holder.
#ifndef REGFS_FS_SESSION_HOLDER_H_
#define REGFS_FS_SESSION_HOLDER_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "reader/base/status.h"
#include "reader/base/unique_fd.h"

namespace regfs {

// A session as the holder keeps it.
struct HeldSession {
  UniqueFd fd;        // the /dev/fuse descriptor of the live mount
  std::string init;   // the kernel's FUSE_INIT request, as the first daemon read it
  std::string state;  // opaque to the holder: what the daemon left for its successor
  // Optional, opaque to the holder: a file the daemons keep writing their
  // state to while they serve (the store's journal, fs/store_journal.h),
  // shared by the first daemon and its successors; it lives as long as the
  // holder, that is as long as the session.
  UniqueFd journal;
};

// A daemon's end of its holder's socket.
class HolderLink {
 public:
  explicit HolderLink(UniqueFd sock) : sock_(std::move(sock)) {}
  // Gives the holder a copy of `fuse_fd` with `init` and `state` (and of
  // `journal_fd` when >= 0); a later deposit replaces an earlier one.
  Status Deposit(int fuse_fd, std::string_view init, std::string_view state,
                 int journal_fd = -1);
  // The session the holder keeps, if any (none: this is the first daemon).
  Result<std::optional<HeldSession>> Withdraw();
  // Until its mount is live a daemon dies with its holder (a killed
  // `regfs mount` leaves nothing behind); from then on it outlives it, as
  // the mount must. Call from the main thread (the parent-death signal
  // belongs to the thread the holder forked).
  void MountIsLive();

 private:
  UniqueFd sock_;
};

// The link of this process, when a holder started it; nullptr otherwise.
HolderLink* CurrentHolderLink();

struct HolderOptions {
  // Successors that die within `quick_death_s` of their start, one after
  // another, before the holder gives up.
  int max_quick_deaths = 10;
  double quick_death_s = 2;
  // The holder's process name (prctl PR_SET_NAME), as `ps` shows it;
  // empty: unchanged.
  std::string name = "regfs-holder";
  // Runs in the holder once the first daemon is forked (the holder closes
  // its copy of the readiness pipe there, and detaches).
  std::function<void()> after_first_fork;
  // Tests: runs in the holder right after each fork, before the holder knows
  // its new daemon's pid (a signal raised here must still reach the daemon).
  std::function<void()> right_after_fork;
};

// Runs `serve` in a child process under a holder (this process) and returns
// the exit status of the last daemon. SIGTERM, SIGINT and SIGHUP sent to
// the holder go to the daemon (which unmounts and exits).
// Its own status when it exited, 1 (or 128 + signal) when the holder gave up. `serve(first)` is false for successors.
int RunHeld(const std::function<int(bool first)>& serve, const HolderOptions& opts = {});

}  // namespace regfs

#endif  // REGFS_FS_SESSION_HOLDER_H_
