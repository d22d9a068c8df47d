// `regfs store`: an additional layer store for podman and CRI-O
// (containers/storage's "additionallayerstores", the MOUNTPOINT:ref form).
//
// The mount's root lists nothing. A lookup of NAME, the base64 (standard
// alphabet, padded) of an image reference, resolves the reference on demand
// and shows NAME/<layer digest>/ for each layer of the image with
//   diff/  the layer's tree, whiteouts in overlayfs form, indexed (the blob
//          read once through the chunk cache) when first looked into, or,
//          with index_on_pull, in the background from the first read of the
//          layer's info (podman reads it during `podman pull`; the pull then
//          makes the store fetch whole layers, which the default avoids);
//   info   JSON: diff-digest, compressed-diff-digest, compressed-size,
//          diff-size (once known), compression (0 none, 2 gzip, 4 zstd);
//   blob   the compressed blob, through the chunk cache.
// Creating NAME/<digest>/use counts a use and answers ENOENT; rmdir of
// NAME/<digest> counts a release and answers ENOENT (the protocol's
// "notification-aware store" answers). .regfs/status.json shows the counts.
//
// Failure: a reference that does not decode, parse or resolve is ENOENT
// (podman then pulls that layer itself); a transient failure is not
// remembered by the kernel, so the next lookup tries again. Index or read
// errors become errnos on the files concerned, never a crash of the store.
#ifndef REGFS_FS_STORE_H_
#define REGFS_FS_STORE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/fuse_daemon.h"
#include "fs/image_fs.h"
#include "fs/mount.h"
#include "fs/options.h"
#include "fs/tree.h"
#include "reader/layer/layer_reader.h"

namespace regfs {

struct StoreCounters {
  uint64_t images = 0;    // references resolved
  uint64_t layers = 0;    // layer directories shown
  uint64_t uses = 0;      // `use` notifications
  uint64_t releases = 0;  // rmdir notifications
  uint64_t indexed = 0;   // layers whose diff/ is filled
};

class LayerStore : public FsContent {
 public:
  // `cache` must outlive this. `common` gives auth, TLS and platform.
  LayerStore(ChunkCache* cache, CommonOptions common, IndexStore index_store,
             bool index_on_pull = false);
  ~LayerStore() override;

  Tree& tree() { return tree_; }
  StoreCounters Counters() const;
  std::string StatusJson() const;

  Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::string> Generate(const Node& node) override;
  Status Populate(uint32_t id) override;
  Status LookupMiss(Ino parent, std::string_view name, bool* cache_negative) override;
  int CreateErrno(Ino parent, std::string_view name) override;
  int RmdirErrno(Ino parent, std::string_view name) override;

 private:
  struct Layer {
    enum class State { kPending, kBuilding, kReady, kFailed } state = State::kPending;
    BlobDescriptor blob;
    std::string diff_id;
    BlobSource* source = nullptr;  // the image's repository, through the cache
    Ino dir = 0, diff = 0;
    std::optional<uint64_t> diff_size;
    Status error;
    std::unique_ptr<LayerReader> reader;
    uint64_t uses = 0, releases = 0;
    bool queued = false;  // in build_queue_ (or was)
  };
  // A registry client and its cached view, per registry/repository.
  struct Repo {
    std::unique_ptr<RegistryClient> client;
    std::unique_ptr<CachedBlobSource> cached;
  };

  Status AddImage(std::string_view name, bool* cache_negative);
  // Queues layer i for a background build when it is still pending.
  void QueueBuild(size_t i);
  void BuilderLoop();
  void BuildLayer(size_t i);
  std::string InfoJson(size_t i);

  ChunkCache* cache_;
  CommonOptions common_;
  IndexStore index_store_;
  Tree tree_;
  Ino status_file_ = 0;

  const bool index_on_pull_;
  std::mutex resolve_mu_;  // one resolution at a time; guards repos_
  std::map<std::string, Repo> repos_;

  mutable std::mutex mu_;       // guards layers_, layer_dirs_, counters_, build_queue_, builders_
  std::condition_variable cv_;  // a layer's state changed
  std::condition_variable build_cv_;  // build_queue_ grew, or stopping_
  std::deque<size_t> build_queue_;
  std::vector<std::thread> builders_;  // started on demand, up to kBuilders
  // Set by the destructor: builders stop and index builds fail at their next read.
  std::atomic<bool> stopping_{false};
  std::deque<Layer> layers_;  // content ids; never shrinks
  std::unordered_map<Ino, size_t> layer_dirs_;
  StoreCounters counters_;
};

// `regfs store [options] MOUNTPOINT`: mounts and serves until unmounted;
// `ready` as for ServeMount. Returns the exit status.
int ServeStore(MountOptions mo, DaemonReady* ready);

}  // namespace regfs

#endif  // REGFS_FS_STORE_H_
