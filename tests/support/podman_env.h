// A private podman configuration for tests and benchmarks of `regfs store`:
// storage.conf (driver overlay, graphroot/runroot in a temp dir, optionally
// an additional layer store), containers.conf (default_ulimits = [],
// cgroupfs, file events, tmp_dir in the temp dir) and registries.conf, passed
// to podman through CONTAINERS_STORAGE_CONF / CONTAINERS_CONF /
// CONTAINERS_REGISTRIES_CONF, so the machine's own podman storage is never
// touched. Also the smallest runnable image content: the host's cat and
// what it links to.
//
// Failure: commands report their exit status and output (CommandResult);
// nothing here throws or aborts.
#ifndef REGFS_TESTS_SUPPORT_PODMAN_ENV_H_
#define REGFS_TESTS_SUPPORT_PODMAN_ENV_H_

#include <string>
#include <vector>

#include "tests/support/run_command.h"
#include "tests/support/tar_writer.h"

namespace regfs::testing {

// 'text' quoted for sh.
std::string ShellQuote(const std::string& text);
// The whole file, or "" if unreadable.
std::string ReadHostFile(const std::string& path);
// bin/cat, lib/x86_64-linux-gnu/libc.so.6, lib64/ld-linux-x86-64.so.2 from
// the host, with their directories and etc/.
std::vector<TarEntry> HostCatEntries();
// True when podman and /usr/sbin/runc are installed.
bool HavePodman();

class PodmanEnv {
 public:
  // Writes the configuration under `dir` (created, mode 0700). An empty
  // `store_mountpoint` means no additional layer store.
  PodmanEnv(std::string dir, const std::string& store_mountpoint);
  // Removes containers and images, and the overlay mount containers/storage
  // leaves on graphroot/overlay.
  ~PodmanEnv();
  PodmanEnv(const PodmanEnv&) = delete;
  PodmanEnv& operator=(const PodmanEnv&) = delete;

  // `podman ARGS` (ARGS is shell text) with this configuration.
  CommandResult Run(const std::string& args, int timeout_s = 300) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_PODMAN_ENV_H_
