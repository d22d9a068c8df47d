// The life of a layer, by digest, once per process, under both front ends
// (`mount`'s layers/ and rootfs/, `store`'s diff/). A Layer owns its state
// (pending, building, ready, failed with a retry after a backoff), how its
// index is obtained (the cache's copy, or one pass over the blob that also
// checks the blob's digest and the config's DiffID), its reader and
// decoders, the decompressed copy of a single-frame zstd layer, and
// cancellation. Front ends only map names to layers and fill their own trees
// from a layer's entries (FillTree).
//
// Failure: an index build that fails (registry down, corrupt blob, DiffID
// mismatch) leaves the layer failed; the next caller after the backoff tries
// again. Every wait here ends by the wait timeout (Transient, so EIO at the
// FUSE edge), never hangs a FUSE thread. No exception escapes a build: it
// becomes a failed state.
#ifndef REGFS_FS_LAYER_SET_H_
#define REGFS_FS_LAYER_SET_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "fs/layer_tree.h"
#include "fs/tree.h"
#include "reader/base/blob_source.h"
#include "reader/image/manifest.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_index.h"
#include "reader/layer/layer_reader.h"
#include "reader/layer/toc.h"

namespace regfs {

// Where layer indexes persist (the chunk cache's table), by layer digest.
// Either function may be empty; a failing put only costs a rebuild later.
struct IndexStore {
  std::function<std::optional<std::string>(const std::string& digest)> get;
  std::function<void(const std::string& digest, const std::string& bytes)> put;
};

// The index of `blob`: the stored one when `store` holds a valid index of
// this digest (then *from_store is set), else one built by a pass over
// `source` and stored. A stored index that does not parse or names another
// blob is rebuilt, with a warning.
Result<LayerIndex> LoadOrBuildLayerIndex(const IndexStore& store, BlobSource* source,
                                         const BlobDescriptor& blob,
                                         const IndexBuildOptions& build, bool* from_store);

// What .regfs/status.json says of one layer's index.
struct LayerIndexStatus {
  std::string state;         // "pending", "building", "ready", "failed"
  double percent = 0;        // of the blob read by the index pass
  bool from_cache = false;   // the index came from the cache database
  uint64_t entries = 0;      // in the index
  uint64_t skipped = 0;      // entries refused by policy
  bool sequential_only = false;  // single-frame zstd: reads decompress from the start
  bool raw_cached = false;       // single-frame zstd kept decompressed in the cache
  std::string toc;               // "estargz"/"zstd:chunked" when the index came from a TOC
  std::string toc_error;         // why the layer's TOC was not used (then: a full pass)
  std::optional<uint64_t> uncompressed_size;
  std::string error;
};

struct LayerSetOptions {
  IndexStore index_store;
  // Wraps a source in the chunk cache. With it, a single-frame zstd layer
  // (no restart points) is decompressed once and its tar kept in the cache
  // under its DiffID, so reads inside it are random-access; without it such
  // reads decompress from the start of the layer.
  std::function<std::unique_ptr<BlobSource>(BlobSource* upstream)> make_cached;
  // A single-frame zstd layer is kept decompressed only while its tar is at
  // most this many times its blob (plus raw_slack): a small blob that
  // decompresses to gigabytes (a zstd bomb) must not fill the cache.
  uint64_t raw_max_ratio = 32;
  uint64_t raw_slack = 64ull << 20;
  int threads = 2;  // background index builds at once
  // The bound of every wait for a layer (a build in progress elsewhere).
  std::chrono::milliseconds wait_timeout{120'000};
  // After a failed build, the next attempt waits this long, doubling up to
  // backoff_max; until then callers get the failure at once.
  std::chrono::milliseconds backoff_min{1'000};
  std::chrono::milliseconds backoff_max{60'000};
  // Index passes read ahead of themselves through this (may be empty).
  std::function<void(BlobSource* source, const BlobDescriptor&, uint64_t offset, uint64_t len)>
      read_ahead;
  // Called as index builds progress (the -f progress line); may be empty.
  std::function<void(const std::string&)> progress;
  // TOC layers (eStargz, zstd:chunked): bounds on the TOC and its chunks,
  // and the decoded chunks each layer keeps.
  TocLimits toc_limits;
  TocReaderOptions toc_reader;
};

class LayerSet;

class Layer : public std::enable_shared_from_this<Layer> {
 public:
  enum class State { kPending, kBuilding, kReady, kFailed };

  const BlobDescriptor& blob() const { return blob_; }
  const std::string& diff_id() const { return diff_id_; }
  BlobSource* source() const { return source_; }
  // The TOC the layer's annotations name (eStargz, zstd:chunked), if any.
  const std::optional<TocLocation>& toc() const { return toc_; }

  // Blocks until the layer is ready (building it on this thread when nobody
  // is), has failed, or the wait timeout passed. A failed layer whose backoff
  // is over is built again.
  //
  // A layer with a TOC gets its index from the TOC (two small reads, the
  // TOC's digest checked against the annotation); when the TOC is missing,
  // corrupt or does not match, from a full pass like any other layer (the
  // TOC's failure is kept: Snapshot().toc_error).
  Status EnsureReady();
  // For a layer with a TOC: the layer is ready with its index from that TOC
  // (fetching and checking only the TOC, never a full pass). Not OK when the
  // layer has no TOC, its TOC fails, or the layer was indexed by a full pass
  // instead. The store answers lookups by TOC digest only for such layers.
  Status EnsureReadyFromToc();
  // Fills the pending directory `dir` of `tree` with the layer's entries and
  // clears its pending mark, once: concurrent callers for the same directory
  // wait (bounded), a directory already filled is left alone.
  Status FillTree(Tree& tree, Ino dir, uint32_t content_id, WhiteoutMode mode,
                  HardLinkMetadata links, LayerTreeStats* stats = nullptr);
  // Bytes [offset, offset + out.size()) of the uncompressed tar, clamped to
  // it. NotReady (Transient) before the layer is ready.
  // For a layer indexed from its TOC, offsets are in the content stream
  // (LayerIndex), which is what the index's entries' data_offset name.
  Result<size_t> ReadUncompressed(uint64_t offset, std::span<uint8_t> out);
  // True when the index came from the layer's TOC (content-stream offsets).
  bool FromToc() const;

  State state() const;
  LayerIndexStatus Snapshot() const;
  std::optional<uint64_t> UncompressedSize() const;

  // Internal: made by LayerSet.
  Layer(LayerSet* set, BlobDescriptor blob, std::string diff_id, BlobSource* source,
        std::optional<TocLocation> toc);
  ~Layer();

 private:
  friend class LayerSet;
  // One build attempt: index, reader, raw copy. Never throws.
  void Build();
  Status BuildOrThrow();
  // The index from the cache, or from the TOC, or one pass over the blob
  // (digest and DiffID checked; stops when the set is cancelled).
  Result<LayerIndex> LoadIndex(bool* from_store,
                               std::function<void(uint64_t done, uint64_t total)> progress);
  // The stored index, or the one the TOC gives (then stored). Not OK when
  // the TOC is unusable; never a pass over the blob.
  Result<LayerIndex> LoadTocIndex(bool* from_store);
  // The full index (entries included): kept from the build until a tree is
  // filled, then loaded from the index store again when another tree needs it.
  Result<std::shared_ptr<const LayerIndex>> Entries();
  // Background work once the layer is ready: reads the decompressed tar of
  // a single-frame zstd layer through the cache once, so that later reads
  // hit; fetches a TOC layer's landmarked prefix (the files its builder
  // marked to come first).
  void Warm();
  void FillRaw();
  void PrefetchLandmark();

  LayerSet* const set_;
  const BlobDescriptor blob_;
  const std::string diff_id_;
  const bool has_diff_id_;  // diff_id_ is a digest the index pass can check
  BlobSource* const source_;
  const std::optional<TocLocation> toc_;

  mutable std::mutex mu_;  // guards everything below; never held across I/O
  std::condition_variable cv_;  // state changed
  State state_ = State::kPending;
  Status error_;
  std::chrono::steady_clock::time_point retry_at_;
  std::chrono::milliseconds backoff_{0};
  uint64_t done_ = 0;
  bool from_cache_ = false;
  uint64_t entries_count_ = 0, skipped_ = 0;
  std::shared_ptr<const LayerIndex> full_;     // entries, until a tree took them
  std::shared_ptr<const LayerIndex> trimmed_;  // restart points only
  std::shared_ptr<LayerReader> reader_;
  // Single-frame zstd: the uncompressed tar as a cached blob (digest =
  // DiffID), filled from `reader_` on a miss.
  std::shared_ptr<BlobSource> raw_upstream_;
  std::shared_ptr<BlobSource> raw_;
  BlobDescriptor raw_desc_;
  bool raw_claimed_ = false;
  // Index from the TOC: its reader (content stream by chunk).
  std::shared_ptr<TocReader> toc_reader_;
  std::string toc_error_;  // why the TOC was not used
  bool landmark_claimed_ = false;

  bool filling_ = false;  // a FillTree is running (one at a time per layer)
};

class LayerSet {
 public:
  explicit LayerSet(LayerSetOptions opts);
  ~LayerSet();  // cancels builds in progress, joins the background threads
  LayerSet(const LayerSet&) = delete;
  LayerSet& operator=(const LayerSet&) = delete;

  // The layer of this digest: the same handle for every caller while anyone
  // holds it. `source` (the blob's repository, through the cache) must
  // outlive the handle; the first caller's source is kept. `annotations`
  // (the manifest's, for this layer) say whether it has a TOC.
  std::shared_ptr<Layer> Get(const BlobDescriptor& blob, const std::string& diff_id,
                             BlobSource* source, const Annotations& annotations = {});
  // Queues a background build; `then` (may be empty) runs on the worker
  // once the layer is ready (a front end fills its tree there).
  void BuildInBackground(const std::shared_ptr<Layer>& layer, std::function<void()> then = {});
  // Stops: builds fail at their next read, queued ones are dropped.
  void Cancel();
  bool cancelled() const { return cancelled_.load(); }
  // Layers alive (held by someone).
  size_t LiveCount() const;
  const LayerSetOptions& options() const { return opts_; }

 private:
  friend class Layer;
  void Worker();

  LayerSetOptions opts_;
  std::atomic<bool> cancelled_{false};

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::map<std::string, std::weak_ptr<Layer>> layers_;
  struct Job {
    std::weak_ptr<Layer> layer;
    std::function<void()> then;
  };
  std::deque<Job> queue_;
  std::vector<std::thread> threads_;  // started on first use, up to opts_.threads
};

}  // namespace regfs

#endif  // REGFS_FS_LAYER_SET_H_
