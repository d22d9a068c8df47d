// `regfs mount`: resolve the image, open the cache, mount, serve. Without -f
// the process forks first (before any thread exists); the parent waits on a
// pipe until the child says the mount is ready or why it failed, prints the
// error and exits nonzero, so nothing is left mounted on failure.
#ifndef REGFS_FS_MOUNT_H_
#define REGFS_FS_MOUNT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/image_fs.h"
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
  int readahead_threads = 3;       // --readahead-threads: background read-ahead of blobs
  bool index_on_pull = false;      // store --index-on-pull: build indexes from podman's pull
  std::string log_file;
};

// Resolves `ref` with a client built from the flags. `client_out`, if given,
// receives the client (for the mount's reads).
Result<ResolvedImage> ResolveFromFlags(const CommonOptions& o, const Reference& ref,
                                       std::unique_ptr<RegistryClient>* client_out);

// Returns the exit status.
int RunMount(MountOptions mo);

// Pieces `regfs mount` and `regfs store` share.
//
// Moves regfs's own keys (tls-verify=, cert-dir=, platform=, cache-dir=,
// cache-max-size=, authfile=) out of -o into `common`; drops rw/ro.
void TakeOwnOptions(MountOptions* mo);
// Opens the chunk cache --cache-dir / --cache-max-size name.
Result<std::unique_ptr<ChunkCache>> OpenCache(const CommonOptions& o);
// Layer indexes kept in the cache's table (failures logged, never fatal).
IndexStore CacheIndexStore(ChunkCache* db);
// How a FUSE daemon reads blobs through the cache: FUSE delivers concurrent
// reads out of order, so blobs are verified in the background once the
// cache holds all of them (in-order hashing would rarely complete and would
// sit on the read path), and small random reads fetch only their bytes.
CachedSourceOptions DaemonCacheOptions();
// The daemon's half of the readiness pipe: Send("OK") or an error, once.
class DaemonReady {
 public:
  virtual ~DaemonReady() = default;
  virtual void Send(const std::string& msg) = 0;
};

// Reports a startup failure: to the waiting parent through `ready`, or on
// stderr in the foreground (ready == nullptr). Returns the exit status, 1.
int FailStartup(DaemonReady* ready, const std::string& what, const Status& s);
// OK when `path` is a directory to mount on.
Status CheckMountpoint(const std::string& path);

// Opens `log_file` (if any), then runs `serve` in the foreground (ready =
// nullptr) or in a forked, detached child whose parent waits for the
// readiness message, prints an error and exits 1 if it is not "OK".
int RunDaemon(const std::string& log_file, bool foreground,
              const std::function<int(DaemonReady*)>& serve);
// After "OK": stdio to /dev/null, cwd to / (the parent has exited).
void DetachFromTerminal();

}  // namespace regfs

#endif  // REGFS_FS_MOUNT_H_
