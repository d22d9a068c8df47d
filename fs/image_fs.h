// The filesystem of one mounted image: builds the Tree (manifest.json,
// config.json, index.json, blobs/, .regfs/status.json; layers/ and rootfs/
// come from the layer index) and serves bytes for it as an FsContent.
//
// Blob reads go through a BlobSource (the chunk cache in front of the
// registry). Sequential reads of a blob are detected per inode and read ahead
// with a growing window; random reads fetch only what they ask for.
// Failure: a read error is returned as a Status for the daemon to map to an
// errno; nothing here retries (the reader below does).
#ifndef REGFS_FS_IMAGE_FS_H_
#define REGFS_FS_IMAGE_FS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fs/fuse_daemon.h"
#include "fs/layer_tree.h"
#include "fs/rootfs_merge.h"
#include "fs/prefetcher.h"
#include "fs/tree.h"
#include "reader/base/blob_source.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_reader.h"

namespace regfs {

struct ImageFsInput {
  std::string manifest_bytes;
  std::string config_bytes;
  std::optional<std::string> index_bytes;  // when the reference went through an index
  std::vector<BlobDescriptor> layers;      // bottom first
  std::vector<std::string> diff_ids;       // config rootfs.diff_ids, bottom first
  int64_t mtime_sec = 0;                   // for the top-level files (image creation time)
};

// Where layer indexes persist (the chunk cache's table), by layer digest.
// Either function may be empty; a failing put only costs a rebuild later.
struct IndexStore {
  std::function<std::optional<std::string>(const std::string& digest)> get;
  std::function<void(const std::string& digest, const std::string& bytes)> put;
};

// The index of `blob`: the stored one when `store` holds a valid index of
// this digest (then *from_store is set), else one built by a pass over
// `source` and stored. A stored index that does not parse or names another
// blob is rebuilt, with a warning. Used by `mount` (ImageFs) and `store`.
Result<LayerIndex> LoadOrBuildLayerIndex(const IndexStore& store, BlobSource* source,
                                         const BlobDescriptor& blob,
                                         const IndexBuildOptions& build, bool* from_store);
// What a LayerReader needs of an index whose entries now live in a tree:
// everything but the entries (the restart points). Move the index in where
// it is no longer needed, to avoid copying its entries.
std::shared_ptr<const LayerIndex> IndexForReader(LayerIndex index);

// What .regfs/status.json says of one layer's index.
struct LayerIndexStatus {
  std::string state;         // "pending", "building", "ready", "failed"
  double percent = 0;        // of the blob read by the index pass
  bool from_cache = false;   // the index came from the cache database
  uint64_t entries = 0;
  uint64_t skipped = 0;
  bool sequential_only = false;  // single-frame zstd: reads decompress from the start
  bool raw_cached = false;       // single-frame zstd kept decompressed in the cache
  std::string error;
};

struct ImageFsOptions {
  int readahead_threads = 3;
  // The first read-ahead window of a sequential stream, and the piece size
  // of its jobs: small, so that two random reads that happen to land close
  // together cost little over a slow link.
  uint64_t readahead_job = 4ull << 20;
  // Contiguous queued jobs are fetched together up to this (the daemon's
  // max_fetch_bytes is the same): docker-registry pays a few ms of CPU per
  // request, and on a machine where it shares the CPUs with the reader that
  // is the reader's time. Its CPU per cold 128 MiB read (9 runs each):
  // 103 ms with 16 MiB requests and a 32 MiB window, 83 ms with 32 / 64,
  // 74 ms with 64 / 128; the read took 162, 148 and 147 ms.
  uint64_t readahead_request = 32ull << 20;
  uint64_t readahead_max = 64ull << 20;     // the window grows up to this
  uint32_t uid = 0, gid = 0;                // owner of the synthetic files
  bool layers = true;                       // show layers/<N> and rootfs/
  WhiteoutMode whiteouts = WhiteoutMode::kAsInTar;
  int index_threads = 2;                    // background index builds at once
  IndexStore index_store;
  // Wraps a source in the chunk cache. With it, a single-frame zstd layer
  // (no restart points) is decompressed once and its tar kept in the cache
  // under its diff_id, so reads inside it are random-access; without it such
  // reads decompress from the start of the layer.
  std::function<std::unique_ptr<BlobSource>(BlobSource* upstream)> make_cached;
  // Called as index builds progress (the -f progress line); may be empty.
  std::function<void(const std::string&)> progress;
};

class ImageFs : public FsContent {
 public:
  // `blobs` must outlive this. `status` makes .regfs/status.json's bytes.
  ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
          ImageFsOptions opts = {});
  ~ImageFs() override;  // stops index builds

  // Starts building layer indexes in the background. Call once the mount is
  // live (after any fork): it starts threads.
  void StartIndexing();
  std::vector<LayerIndexStatus> LayerStatuses() const;
  // "pending", "building", "ready" or "failed", and the merge's figures.
  std::string RootfsState() const;
  MergeStats RootfsStats() const;
  uint64_t TreeMemoryBytes() const { return tree_.MemoryBytes(); }
  uint64_t TreeNodeCount() const { return tree_.Count(); }

  Tree& tree() { return tree_; }
  const ImageFsInput& input() const { return input_; }

  Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::string> Generate(const Node& node) override;
  Status Populate(uint32_t id) override;

 private:
  void Build();
  void MaybeReadAhead(const BlobDescriptor& blob, uint64_t offset, size_t len);

  struct Layer {
    enum class State { kPending, kBuilding, kReady, kFailed } state = State::kPending;
    Ino dir = 0;
    Status error;
    uint64_t done = 0;
    bool from_cache = false;
    LayerTreeStats tree_stats;
    std::shared_ptr<const LayerIndex> index;
    std::unique_ptr<LayerReader> reader;
    // Single-frame zstd: the uncompressed tar as a cached blob (digest =
    // diff_id), filled from `reader` on a miss.
    std::unique_ptr<BlobSource> raw_upstream;
    std::unique_ptr<BlobSource> raw;
    BlobDescriptor raw_desc;
    bool raw_filled = false;
  };
  // Reads the whole decompressed tar of single-frame zstd layers through the
  // cache once (background), so later reads hit.
  void FillRawLayers();
  // Builds layer i's index (or loads it) and fills its directory. Called by
  // whoever claimed the layer (state kBuilding).
  void BuildLayer(size_t i);
  Result<std::shared_ptr<const LayerIndex>> LoadOrBuildIndex(size_t i);
  void IndexWorker();
  Status PopulateRootfs();

  ImageFsInput input_;
  BlobSource* blobs_;
  std::function<std::string()> status_;
  ImageFsOptions opts_;
  Tree tree_;
  std::vector<std::string> inline_;  // content of kInline nodes, by content_id
  std::unique_ptr<Prefetcher> prefetcher_;

  struct Stream {
    uint64_t next = 0;     // where a sequential reader would read next
    uint64_t window = 0;   // current read-ahead window
    uint64_t ahead_to = 0; // read-ahead queued up to here
  };
  mutable std::mutex layers_mu_;  // guards layers_ (not the readers' internals) and stop_
  std::condition_variable layers_cv_;
  std::vector<Layer> layers_;
  bool stop_ = false;
  std::vector<std::thread> index_threads_;
  Ino rootfs_dir_ = 0;
  Layer::State rootfs_state_ = Layer::State::kPending;
  Status rootfs_error_;
  MergeStats rootfs_stats_;
  // Index passes read through this, so that unmounting cancels them.
  class CancellableSource : public BlobSourceWrapper {
   public:
    CancellableSource(BlobSource* target, const std::atomic<bool>* cancelled)
        : BlobSourceWrapper(target), cancelled_(cancelled) {}
    Status ReadAt(const BlobDescriptor& blob, uint64_t offset,
                  std::span<uint8_t> out) override {
      if (cancelled_->load()) return Status::IoError("unmounting");
      return BlobSourceWrapper::ReadAt(blob, offset, out);
    }

   private:
    const std::atomic<bool>* cancelled_;
  };
  std::atomic<bool> cancelled_{false};
  CancellableSource index_source_{nullptr, &cancelled_};

  std::mutex streams_mu_;  // guards streams_
  std::unordered_map<std::string, Stream> streams_;  // by blob digest
};

}  // namespace regfs

#endif  // REGFS_FS_IMAGE_FS_H_
