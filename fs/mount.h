// `regfs mount`: resolve the image, open the cache, mount, serve. Without -f
// the process forks first (before any thread exists); the parent waits on a
// pipe until the child says the mount is ready or why it failed, prints the
// error and exits nonzero, so nothing is left mounted on failure.
#ifndef REGFS_FS_MOUNT_H_
#define REGFS_FS_MOUNT_H_

#include <functional>
#include <string>
#include <vector>

#include "fs/options.h"
#include "reader/http/registry_client.h"

namespace regfs {

struct MountOptions {
  CommonOptions common;
  std::string ref;
  std::string mountpoint;
  std::vector<std::string> fuse_opts;  // -o; regfs's own keys are taken out
  bool foreground = false;
  bool fuse_debug = false;
  bool overlay_whiteouts = false;  // --whiteouts=overlay
  std::string log_file;
};

// Resolves `ref` with a client built from the flags. `client_out`, if given,
// receives the client (for the mount's reads).
Result<ResolvedImage> ResolveFromFlags(const CommonOptions& o, const Reference& ref,
                                       std::unique_ptr<RegistryClient>* client_out);

// Returns the exit status.
int RunMount(MountOptions mo);

}  // namespace regfs

#endif  // REGFS_FS_MOUNT_H_
