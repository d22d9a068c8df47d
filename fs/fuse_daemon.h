// The FUSE daemon: libfuse3's low-level API over a Tree, multi-threaded.
// Metadata comes from the Tree (memory); bytes come from an FsContent. Every
// callback runs inside one exception barrier and replies exactly once; a
// failure becomes an errno (fs/errno_map.h) and a log line, never a crash.
// File handles are ids into immutable metadata: they own no connection, no fd
// (a dynamic file, such as status.json, owns a snapshot of its bytes).
#ifndef REGFS_FS_FUSE_DAEMON_H_
#define REGFS_FS_FUSE_DAEMON_H_

#include <sys/types.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fs/tree.h"
#include "reader/base/status.h"

struct fuse_session;

namespace regfs {

// What the daemon asks for bytes. Implemented by the image filesystem.
class FsContent {
 public:
  virtual ~FsContent() = default;
  // Reads bytes [offset, offset + out.size()) of a regular file, clamped to
  // its size; returns the count (0 at or past EOF).
  virtual Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) = 0;
  // A kDynamic file's bytes, generated when it is opened.
  virtual Result<std::string> Generate(const Node& node) = 0;
  // Blocks until the pending directory `id` is filled in (a layer's index is
  // ready), or fails. Called before a lookup in, or listing of, such a dir.
  virtual Status Populate(uint32_t id) = 0;
  // A lookup found no `name` in `parent`: the content may add it (a layer
  // store resolves references on demand). Ok means "look again"; any error is
  // answered as is. `cache_negative` (initially true) may be cleared so that
  // the kernel does not remember the miss.
  virtual Status LookupMiss(Ino /*parent*/, std::string_view /*name*/, bool* /*cache_negative*/) {
    return Status::NotFound("no such entry");
  }
  // Creating `name` in `parent` (open O_CREAT, mknod) and removing the
  // directory `name`: the errno to answer. The tree never changes by these.
  virtual int CreateErrno(Ino /*parent*/, std::string_view /*name*/) { return EROFS; }
  virtual int RmdirErrno(Ino /*parent*/, std::string_view /*name*/) { return EROFS; }
};

// The kernel's references to inodes (FUSE's lookup counts): every entry a
// reply hands out (lookup, readdirplus) is one, forget drops them. An open
// file or a cwd keeps its inode referenced, and so does a dentry the kernel
// caches (which pins its parents'). A content that frees inodes (the store's
// idle layers, Tree::RemoveSubtree) frees only those with no reference, and
// holds HandOutLock exclusively meanwhile: replies hold it shared from the
// tree lookup until the count is taken, so no inode is handed out between
// the check and the free.
class KernelRefs {
 public:
  void Add(Ino ino, uint64_t n = 1);
  void Forget(Ino ino, uint64_t n);
  bool Known(Ino ino) const;
  size_t Size() const;  // inodes with a reference
  std::shared_mutex& HandOutLock() { return handout_mu_; }

 private:
  std::shared_mutex handout_mu_;
  mutable std::mutex mu_;  // guards counts_; taken inside the tree's lock by Known
  std::unordered_map<Ino, uint64_t> counts_;
};

struct FuseOptions {
  std::string mountpoint;
  std::string fsname = "regfs";
  std::vector<std::string> mount_opts;  // extra -o options: allow_other, ...
  int max_threads = 16;
  double timeout_s = 86400;  // entry and attr timeouts: everything is immutable
  bool debug = false;
  unsigned read_ahead_kb = 4096;  // the kernel's read-ahead on this mount; 0 = leave it
  // Mount "ro". A layer store mounts rw so that create/rmdir notifications
  // reach CreateErrno/RmdirErrno; nothing is writable either way.
  bool read_only = true;
  // Called once when the session ends (unmounted, or a signal), while
  // requests may still be running: the content stops its downloads and
  // index builds there, so that those requests end and the loop returns
  // promptly. May be empty.
  std::function<void()> on_session_end;
  // Callers (the request's uid) who may make the content do work on their
  // behalf: LookupMiss (a layer store resolves a reference, with its
  // credentials, over the network), Populate (indexes a layer) and the
  // create/rmdir notifications. Anyone else gets ENOENT for a miss (not
  // cached, so a trusted caller's lookup of the same name still asks),
  // EACCES for the rest, and the content is not called. Empty: everyone.
  // Reads are not checked: a container's process may fault pages of a
  // layer file in with its own uid, not overlayfs's mounter's.
  std::vector<uid_t> trusted_uids;

  // Restarts (fs/session_holder.h). A successor of a dead daemon takes its
  // session over instead of mounting: `takeover_fd` (owned by the daemon
  // from then on) is the live session's /dev/fuse descriptor, and
  // `takeover_init` the kernel's INIT request as the first daemon read it
  // (the kernel does not send INIT again: it is replayed to libfuse).
  // An empty `takeover_init`: the dead daemon never answered INIT, so the
  // successor reads it from the session as a first daemon does (on_init is
  // then called, as for a first daemon).
  int takeover_fd = -1;
  std::string takeover_init;
  // Requests the dead daemon had read but not answered wait in the kernel
  // until the connection ends; a successor asks the kernel to send them
  // again (FUSE_NOTIFY_RESEND, Linux 6.9). False only to show the limit.
  bool resend_in_flight = true;
  // Called once a first daemon's INIT is done (not after a takeover), from
  // a loop thread, with the session's fd and the INIT request: what a
  // holder keeps for a successor. May be empty.
  std::function<void(int fd, const std::string& init)> on_init;
  // When set, lookup counts are kept there (and forgets applied), for a
  // content that frees inodes. Must outlive the daemon.
  KernelRefs* refs = nullptr;
};

class FuseDaemon {
 public:
  FuseDaemon(Tree* tree, FsContent* content, FuseOptions opts);
  ~FuseDaemon();  // unmounts if still mounted
  FuseDaemon(const FuseDaemon&) = delete;
  FuseDaemon& operator=(const FuseDaemon&) = delete;

  // Creates the session and mounts (or takes over opts.takeover_fd). Fails
  // (nothing left mounted) if the mountpoint is unusable.
  Status Mount();
  // Serves requests until unmounted, or SIGTERM/SIGINT/SIGHUP when
  // `install_signal_handlers`. Returns after the session ends.
  Status Loop(bool install_signal_handlers);
  // Ends the loop from another thread (tests).
  void Exit();
  // Unmounts (idempotent).
  void Unmount();
  // The session's /dev/fuse descriptor once mounted (owned by the daemon),
  // or -1: what a holder keeps (fs/session_holder.h).
  int SessionFd() const;
  // Asks the kernel to drop its dentry of `name` in `parent` and the unused
  // ones below it (their inodes are forgotten; entries in use stay). Not
  // from a request handler (the kernel takes the parent's lock). Best
  // effort: false when the kernel did not know the name.
  bool InvalidateEntry(Ino parent, std::string_view name);

  // Called by the C callbacks.
  struct Impl;

 private:
  Status TakeOver();
  std::unique_ptr<Impl> impl_;
};

// Unmounts `mountpoint` with fusermount3 -u, falling back to a lazy unmount
// when the daemon is gone and the mount is stale.
Status UnmountPath(const std::string& mountpoint);

}  // namespace regfs

#endif  // REGFS_FS_FUSE_DAEMON_H_
