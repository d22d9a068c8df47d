// Running regfs as a daemon: the log file, the fork into a detached child,
// and the readiness pipe through which the child tells the waiting parent
// that the mount is live (or why it is not), so that `regfs mount` exits 0
// only with a working mount and nonzero with nothing left mounted.
#ifndef REGFS_CLI_DAEMON_H_
#define REGFS_CLI_DAEMON_H_

#include <functional>
#include <string>

#include "fs/mount.h"

namespace regfs {

// Opens `log_file` (if any), then runs `serve` in the foreground (ready =
// nullptr) or in a forked child, which detaches from the terminal once it
// reports "OK"; the parent waits for that report, prints an error and
// returns 1 if it is not "OK". In the foreground under systemd
// ($NOTIFY_SOCKET), "OK" is sd_notify's READY=1 and the end STOPPING=1.
// With `hold`, the daemon runs under a holder (fs/session_holder.h) that
// keeps its mount alive and starts a successor if it dies by a signal: the
// process itself in the foreground, the detached child otherwise (where a
// successor's startup errors go to the log).
int RunDaemon(const std::string& log_file, bool foreground,
              const std::function<int(DaemonReady*)>& serve, bool hold = false);

}  // namespace regfs

#endif  // REGFS_CLI_DAEMON_H_
