// `regfs store`: an additional layer store for podman and CRI-O
// (containers/storage's "additionallayerstores", the MOUNTPOINT:ref form).
//
// containers/storage looks for MOUNTPOINT/<base64 of the reference>/<layer
// digest>/{diff,info,blob}. A lookup of NAME in the root, the base64
// (standard alphabet, padded) of an image reference, resolves the reference
// on demand; NAME is then a symbolic link to `.layers`, which holds one
// directory per layer digest, shared by every image that has the layer:
//   diff/  the layer's tree, whiteouts in overlayfs form, filled when first
//          looked into (its index loaded from the cache or built by one pass
//          over the blob), or, with index_on_pull, built in the background
//          from the first read of the layer's info (podman reads it during
//          `podman pull`);
//   info   JSON: diff-digest, compressed-diff-digest, compressed-size,
//          diff-size (once known), compression (0 none, 2 gzip, 4 zstd);
//   blob   the compressed blob, through the chunk cache.
// A layer is one Layer (fs/layer_set.h) and one tree however many images
// share it. Creating <layer>/use counts a use and answers ENOENT; rmdir of
// <layer> counts a release and answers ENOENT (the protocol's
// "notification-aware store" answers). .regfs/status.json shows the counts.
//
// A layer with a TOC (eStargz, zstd:chunked) is also looked up by its TOC
// digest (containers/storage 1.54+): .layers/<TOC digest> is then a
// directory of its own whose diff, info and blob link to the layer's.
//
// Idle layers are released (CommonOptions::idle_timeout_s): a layer nobody
// has used for that long, and of which the kernel holds no inode (no open
// file, no cwd, no overlay lowerdir: KernelRefs), loses its directory and
// tree, its Layer handle (index, reader, decoders) and, once no layer reads
// through it, its repository's registry client. The kernel is first asked
// to drop the dentries it caches for the layer (those in use stay). Kept
// per layer digest: its descriptor and DiffID (so a later lookup of
// .layers/<digest>, a released image looked up again, makes it again from
// the cached index, without the network), and per image its symlink.
//
// Restarts: `regfs store` runs under a holder (fs/session_holder.h), as
// `regfs mount` does. Every change to the tree (an image's link, a layer's
// directory, a TOC-digest directory, a release) is written to a journal
// (fs/store_journal.h) before the kernel can learn of it; a successor
// replays the journal before it serves, so each inode number the kernel
// holds names what it named before (a layer's tree is numbered in its own
// segment when it is filled again). Layers live at a takeover are not
// released as idle by that successor: which of their inodes the kernel
// holds died with the predecessor.
//
// Failure: a reference that does not decode, parse or resolve is ENOENT
// (podman then pulls that layer itself); a transient failure is not
// remembered by the kernel, so the next lookup tries again. Index or read
// errors become errnos on the files concerned, never a crash of the store.
#ifndef REGFS_FS_STORE_H_
#define REGFS_FS_STORE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <thread>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/fuse_daemon.h"
#include "fs/image_fs.h"
#include "fs/layer_set.h"
#include "fs/prefetcher.h"
#include "fs/mount.h"
#include "fs/options.h"
#include "fs/store_journal.h"
#include "fs/tree.h"
#include "reader/layer/layer_reader.h"

namespace regfs {

struct StoreCounters {
  uint64_t images = 0;    // references resolved
  uint64_t layers = 0;    // layer directories shown
  uint64_t uses = 0;      // `use` notifications
  uint64_t releases = 0;  // rmdir notifications
  uint64_t indexed = 0;   // layers whose diff/ is filled
  uint64_t live = 0;      // layers shown now (not released)
  uint64_t released = 0;  // idle layers released
};

class LayerStore : public FsContent {
 public:
  // `cache` must outlive this. `common` gives auth, TLS and platform.
  LayerStore(ChunkCache* cache, CommonOptions common, IndexStore index_store,
             bool index_on_pull = false);
  ~LayerStore() override;

  using Clock = std::chrono::steady_clock;

  Tree& tree() { return tree_; }
  Ino layers_dir() const { return layers_dir_; }
  // The kernel's references (the daemon counts them) and how to ask the
  // kernel to drop a dentry (FuseDaemon::InvalidateEntry). Without them
  // nothing is released. Call before serving; both must outlive Stop().
  void AttachKernel(KernelRefs* refs, std::function<bool(Ino, std::string_view)> invalidate);
  // Starts the thread that releases idle layers (when the idle timeout is
  // not 0); Stop() ends it.
  void StartReaper();
  // One pass of it, as of `now`: releases the idle layers the kernel holds
  // nothing of, and asks the kernel to drop its entries of the others.
  // Returns the number of layers released.
  size_t ReleaseIdle(Clock::time_point now);
  // The mount is going away: downloads, index builds and the reaper stop
  // (without waiting for it). Idempotent.
  void Stop();
  // Stop(), then waits for the reaper to end. Idempotent.
  void JoinReaper();
  StoreCounters Counters() const;
  std::string StatusJson() const;
  // Every change to the tree is written to `journal` first (nullptr: none).
  // Call before serving; `journal` must outlive the store.
  void SetJournal(StoreJournal* journal) { journal_ = journal; }
  // A successor's start, before serving: makes the tree its predecessors
  // had from their journal's records, without the network (a layer's index
  // comes from the cache when the layer is looked into). Fails on a record
  // it cannot apply (the successor must not serve a different tree).
  Status Replay(const std::vector<nlohmann::json>& records);

  Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::string> Generate(const Node& node) override;
  Status Populate(uint32_t id) override;
  Status LookupMiss(Ino parent, std::string_view name, bool* cache_negative) override;
  int CreateErrno(Ino parent, std::string_view name) override;
  int RmdirErrno(Ino parent, std::string_view name) override;

 private:
  // A registry client and its cached view, per registry/repository; shared
  // by the live layers that read through it (and resolutions in progress).
  struct Repo {
    // The pull sources (registries.conf mirrors, then the registry).
    std::unique_ptr<MirrorSet> client;
    std::unique_ptr<CachedBlobSource> cached;
  };
  // A layer shown now: its directory is in the tree.
  struct StoreLayer {
    std::string digest;
    std::shared_ptr<Layer> layer;
    std::shared_ptr<Repo> repo;  // the one whose source `layer` reads
    Ino dir = 0, diff = 0;
    bool queued = false;  // a background build was asked for (index_on_pull)
    bool inherited = false;  // live at a takeover: never released (see above)
    int busy = 0;         // Populate calls in progress
    std::vector<std::string> toc_names;  // its .layers/<TOC digest> directories
    Clock::time_point last_used;
    Clock::time_point invalidated;  // when the kernel was last asked to drop it
  };
  // Every layer digest seen, kept after a release (a few hundred bytes).
  static constexpr uint32_t kNoId = 0xffffffffu;
  struct KnownLayer {
    BlobDescriptor blob;
    std::string diff_id;
    std::string repo_key;
    Annotations annotations;  // the manifest's, for the layer's TOC
    std::string toc_digest;   // the TOC the annotations name, if any
    uint32_t id = kNoId;  // in live_, or kNoId once released
    uint64_t uses = 0, releases = 0, released = 0;
  };
  // A released layer's handle may still be held for a moment (a background
  // build that locked it): its repository lives until the handle is gone.
  struct Retired {
    std::weak_ptr<Layer> layer;
    std::shared_ptr<Repo> repo;
  };
  // Read-ahead jobs name a blob, not a repository: they read through the
  // live layer's repository of that digest, or fail if it was released.
  class ReadAheadSource;

  Status AddImage(std::string_view name, bool* cache_negative);
  // A released layer of a known digest, looked up again in .layers.
  Status AddKnownLayer(std::string_view digest);
  Result<std::shared_ptr<Repo>> GetRepo(const Reference& ref);
  // The layer's directory under .layers, made on first sight of the digest
  // (or again after a release).
  Status AddLayer(const BlobDescriptor& blob, const std::string& diff_id,
                  const std::shared_ptr<Repo>& repo, const Reference& ref,
                  const Annotations& annotations);
  // An image's link in the root (its layers are added first).
  Status AddImageLink(std::string_view name);
  // The directory .layers/<name> of live layer `id` looked up by its TOC
  // digest. Holds add_mu_.
  void AddTocDirLocked(std::string_view name, uint32_t id, const std::string& digest);
  // Takes live layer `id` (of `digest`) out of the bookkeeping once its
  // directory left the tree. Holds add_mu_ and mu_; returns what to destroy
  // after the locks.
  StoreLayer DropLayerLocked(uint32_t id, const std::string& digest);
  // Writes `record` to the journal (if any) before the change it names.
  // False when it could not: the change must not be made. After a failed
  // write of a removal (made already), every later change is refused.
  bool Journal(const nlohmann::json& record);
  // A lookup of .layers/<TOC digest> (containers/storage 1.54+ asks by TOC
  // digest): the layer whose TOC that is, once the TOC is fetched and
  // checked, appears there as a link to its directory.
  Status LookupToc(std::string_view name);
  // A layer's info; by_toc: as read through its TOC-digest directory.
  std::string InfoJson(const std::shared_ptr<Layer>& l, bool by_toc);
  // A copy of live layer id's handle, marking it used; nullptr for an
  // unknown or released id.
  std::shared_ptr<Layer> LayerAt(uint32_t id);
  // The repository a live layer of `digest` reads through, or nullptr.
  std::shared_ptr<Repo> RepoOf(const std::string& digest) const;
  void ReaperLoop();

  ChunkCache* cache_;
  CommonOptions common_;
  // registries.conf, read once at start; a bad file makes every lookup
  // ENOENT (podman then pulls normally) and says why in the log.
  Result<RegistriesConf> registries_conf_;
  IndexStore index_store_;
  Tree tree_;
  Ino status_file_ = 0;
  Ino layers_dir_ = 0;  // .layers
  const bool index_on_pull_;
  const Clock::duration idle_timeout_;  // 0: never release
  std::atomic<bool> stopping_{false};  // every registry client's cancel flag
  KernelRefs* refs_ = nullptr;
  std::function<bool(Ino, std::string_view)> invalidate_;
  StoreJournal* journal_ = nullptr;  // written under add_mu_
  bool journal_broken_ = false;      // guarded by add_mu_
  bool replaying_ = false;           // set by Replay, before serving

  std::mutex resolve_mu_;  // one resolution at a time
  mutable std::mutex repos_mu_;  // guards repos_, repo_refs_
  std::map<std::string, std::weak_ptr<Repo>> repos_;
  std::map<std::string, Reference> repo_refs_;  // to make a released client again
  // Layer ids and directories are made and removed one at a time (a
  // directory is complete before anyone can look it up). Lock order:
  // KernelRefs::HandOutLock, add_mu_, mu_, the tree's lock.
  std::mutex add_mu_;
  std::unique_ptr<ReadAheadSource> read_ahead_source_;
  // Declared after repos_ (destroyed before it): layers read through the
  // repositories' sources until their builds are stopped.
  std::unique_ptr<Prefetcher> prefetcher_;
  std::unique_ptr<LayerSet> layer_set_;

  mutable std::mutex mu_;  // guards everything below
  std::map<uint32_t, StoreLayer> live_;  // by layer id (content_id; pending id - 1)
  uint32_t next_id_ = 0;
  std::unordered_map<std::string, KnownLayer> known_;
  std::vector<std::string> known_order_;  // digests, first seen first
  std::unordered_map<Ino, uint32_t> layer_dirs_;
  std::unordered_map<std::string, Retired> retired_;  // by digest
  StoreCounters counters_;

  std::mutex reaper_mu_;  // guards reaper_stop_
  std::condition_variable reaper_cv_;
  bool reaper_stop_ = false;
  std::thread reaper_;
  std::once_flag reaper_joined_;
};

// `regfs store [options] MOUNTPOINT`: mounts and serves until unmounted;
// `ready` as for ServeMount. Returns the exit status.
int ServeStore(MountOptions mo, DaemonReady* ready);

}  // namespace regfs

#endif  // REGFS_FS_STORE_H_
