// `regfs mount` and `regfs store` as library calls: resolve the image, open
// the cache, mount, serve until unmounted, reporting readiness (or why not)
// through a DaemonReady. Process concerns (forking, detaching, the log file)
// belong to the command line (cli/daemon.h).
#ifndef REGFS_FS_MOUNT_H_
#define REGFS_FS_MOUNT_H_

#include <functional>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/image_fs.h"
#include "fs/options.h"
#include "fs/session_holder.h"
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

// Resolves `ref` through its pull sources (registries.conf's mirrors, then
// the primary; see MakeMirrorSet) with clients built from the flags.
// `client_out`, if given, receives them (for the mount's reads); `cancel`,
// if given, becomes every client's cancel flag (RegistryClientOptions).
Result<ResolvedImage> ResolveFromFlags(const CommonOptions& o, const RegistriesConf& conf,
                                       const Reference& ref,
                                       std::unique_ptr<MirrorSet>* client_out,
                                       const std::atomic<bool>* cancel = nullptr);

// `name` as the user spelled it: a short name resolves as `podman pull`
// resolves it under registries.conf (ResolveShortName), each candidate
// tried in order until one resolves. `how`, if given, says how the name
// was resolved. On failure *client_out is the first candidate's set (or
// null when none could be made).
Result<ResolvedImage> ResolveNameFromFlags(const CommonOptions& o, const RegistriesConf& conf,
                                           const std::string& name,
                                           std::unique_ptr<MirrorSet>* client_out,
                                           const std::atomic<bool>* cancel = nullptr,
                                           std::string* how = nullptr);

// The daemon's half of the readiness report: Send("OK") or an error, once.
class DaemonReady {
 public:
  virtual ~DaemonReady() = default;
  virtual void Send(const std::string& msg) = 0;
};

// Mounts mo.ref on mo.mountpoint and serves until unmounted (or a signal).
// `ready` (nullptr in the foreground) hears "OK" once the mount is live, or
// the startup error. Returns the exit status.
int ServeMount(MountOptions mo, DaemonReady* ready);

// Pieces `regfs mount` and `regfs store` share.
//
// Moves regfs's own keys (tls-verify=, cert-dir=, platform=, cache-dir=,
// cache-max-size=, authfile=, registries-conf=) out of -o into `common`;
// drops rw/ro.
void TakeOwnOptions(MountOptions* mo);
// The endpoints' reports (registries.conf mirrors and the primary) for
// status.json and `regfs inspect --json`.
nlohmann::json EndpointsJson(const MirrorSet& set);
// Keeps the whole chunks a pull-through cache's 200 answers carried besides
// the range asked for (RegistryClient::SetSpareChunkHandler) in `db`, for
// blobs not yet verified (a verified blob's chunks are refetched and checked
// by the cache itself). `db` must outlive `set`'s reads.
void KeepSpareChunks(MirrorSet* set, ChunkCache* db);
// Opens the chunk cache --cache-dir / --cache-max-size name.
Result<std::unique_ptr<ChunkCache>> OpenCache(const CommonOptions& o);
// Layer indexes kept in the cache's table (failures logged, never fatal).
IndexStore CacheIndexStore(ChunkCache* db);
// How a FUSE daemon reads blobs through the cache: FUSE delivers concurrent
// reads out of order, so blobs are verified in the background once the
// cache holds all of them (in-order hashing would rarely complete and would
// sit on the read path), and small random reads fetch only their bytes.
CachedSourceOptions DaemonCacheOptions();
// Reports a startup failure: to the waiting parent through `ready`, or on
// stderr in the foreground (ready == nullptr). Returns the exit status, 1.
int FailStartup(DaemonReady* ready, const std::string& what, const Status& s);
// The cache remembers what a reference resolved to (manifest, config and
// index bytes, and the reference -> digests mapping; failures are logged),
// so that an image seen before is served while the registry is unreachable:
// RecallResolution returns it, checked against its digests again.
void RememberResolution(ChunkCache* db, const ResolvedImage& img, const CommonOptions& o);
Result<ResolvedImage> RecallResolution(ChunkCache* db, const Reference& ref,
                                       const CommonOptions& o);
// OK when `path` is a directory to mount on.
Status CheckMountpoint(const std::string& path);
// How a daemon starts: under a holder (fs/session_holder.h), the session a
// dead daemon left for this successor to take over, withdrawn from the
// holder; none for a first daemon (or without a holder), which checks
// `mountpoint` (CheckMountpoint). A successor does not check it: its
// mountpoint is the live mount it is to serve, and a stat() of it may be a
// request (the root's attributes not fetched yet, or expired) that only this
// process could answer. On failure `*what` names the step, for FailStartup.
Result<std::optional<HeldSession>> WithdrawSessionOrCheckMountpoint(const std::string& mountpoint,
                                                                    std::string* what);
// Tests only: with REGFS_TEST_DIE_BEFORE_LOOP=1 in the environment, a first
// daemon (not a successor) kills itself once its mount is ready, before it
// serves: before it read the kernel's INIT request.
void MaybeDieBeforeLoopForTest(bool successor);

}  // namespace regfs

#endif  // REGFS_FS_MOUNT_H_
