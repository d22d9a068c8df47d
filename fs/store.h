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
// Failure: a reference that does not decode, parse or resolve is ENOENT
// (podman then pulls that layer itself); a transient failure is not
// remembered by the kernel, so the next lookup tries again. Index or read
// errors become errnos on the files concerned, never a crash of the store.
#ifndef REGFS_FS_STORE_H_
#define REGFS_FS_STORE_H_

#include <atomic>
#include <cstdint>
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
  // The mount is going away: downloads and index builds stop. Idempotent.
  void Stop();
  StoreCounters Counters() const;
  std::string StatusJson() const;

  Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::string> Generate(const Node& node) override;
  Status Populate(uint32_t id) override;
  Status LookupMiss(Ino parent, std::string_view name, bool* cache_negative) override;
  int CreateErrno(Ino parent, std::string_view name) override;
  int RmdirErrno(Ino parent, std::string_view name) override;

 private:
  struct StoreLayer {
    std::shared_ptr<Layer> layer;
    Ino dir = 0, diff = 0;
    uint64_t uses = 0, releases = 0;
    bool queued = false;  // a background build was asked for (index_on_pull)
  };
  // A registry client and its cached view, per registry/repository.
  struct Repo {
    std::unique_ptr<RegistryClient> client;
    std::unique_ptr<CachedBlobSource> cached;
  };

  Status AddImage(std::string_view name, bool* cache_negative);
  // The layer's directory under .layers, made on first sight of the digest.
  void AddLayer(const BlobDescriptor& blob, const std::string& diff_id, BlobSource* source,
                const Annotations& annotations);
  // A lookup of .layers/<TOC digest> (containers/storage 1.54+ asks by TOC
  // digest): the layer whose TOC that is, once the TOC is fetched and
  // checked, appears there as a link to its directory.
  Status LookupToc(std::string_view name);
  std::string InfoJson(size_t i);
  // A copy of layer i's handle; nullptr for an unknown id.
  std::shared_ptr<Layer> LayerAt(size_t i) const;

  ChunkCache* cache_;
  CommonOptions common_;
  IndexStore index_store_;
  Tree tree_;
  Ino status_file_ = 0;
  Ino layers_dir_ = 0;  // .layers
  const bool index_on_pull_;
  std::atomic<bool> stopping_{false};  // every registry client's cancel flag

  std::mutex resolve_mu_;  // one resolution at a time; guards repos_
  std::map<std::string, Repo> repos_;
  // Declared after repos_ (destroyed before it): layers read through the
  // repositories' sources until their builds are stopped.
  std::unique_ptr<Prefetcher> prefetcher_;
  std::unique_ptr<LayerSet> layer_set_;

  mutable std::mutex mu_;  // guards layers_, by_digest_, layer_dirs_, counters_
  std::deque<StoreLayer> layers_;  // by content id; one per digest
  std::unordered_map<std::string, size_t> by_digest_;
  std::unordered_map<Ino, size_t> layer_dirs_;
  StoreCounters counters_;
};

// `regfs store [options] MOUNTPOINT`: mounts and serves until unmounted;
// `ready` as for ServeMount. Returns the exit status.
int ServeStore(MountOptions mo, DaemonReady* ready);

}  // namespace regfs

#endif  // REGFS_FS_STORE_H_
