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
#include <condition_variable>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "fs/fuse_daemon.h"
#include "fs/layer_set.h"
#include "fs/layer_tree.h"
#include "fs/rootfs_merge.h"
#include "fs/prefetcher.h"
#include "fs/tree.h"
#include "reader/base/blob_source.h"

namespace regfs {

struct ImageFsInput {
  std::string manifest_bytes;
  std::string config_bytes;
  std::optional<std::string> index_bytes;  // when the reference went through an index
  std::vector<BlobDescriptor> layers;      // bottom first
  std::vector<std::string> diff_ids;       // config rootfs.diff_ids, bottom first
  // The manifest's annotations of each layer (a TOC's digest and place).
  std::vector<Annotations> layer_annotations;
  int64_t mtime_sec = 0;                   // for the top-level files (image creation time)
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
  // The layers' life (index store, background builds, zstd copies, waits);
  // ImageFs adds read-ahead for index passes.
  LayerSetOptions layer_set;
};

class ImageFs : public FsContent {
 public:
  // `blobs` must outlive this. `status` makes .regfs/status.json's bytes.
  ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
          ImageFsOptions opts = {});
  ~ImageFs() override;  // stops index builds

  // Starts building layer indexes, then rootfs/, in the background. Call
  // once the mount is live (after any fork): it starts threads.
  void StartIndexing();
  // The mount is going away: index builds stop at their next read, and
  // waits for layers end at once. Idempotent.
  void Stop() { layer_set_->Cancel(); }
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
  Status PopulateLayer(size_t i);
  Status PopulateRootfs();

  ImageFsInput input_;
  BlobSource* blobs_;
  std::function<std::string()> status_;
  ImageFsOptions opts_;
  Tree tree_;
  std::vector<std::string> inline_;  // content of kInline nodes, by content_id
  std::unique_ptr<Prefetcher> prefetcher_;
  std::unique_ptr<LayerSet> layer_set_;
  std::vector<std::shared_ptr<Layer>> layers_;  // bottom first
  std::vector<Ino> layer_dirs_;                 // layers/<N>
  std::vector<LayerTreeStats> tree_stats_;      // guarded by rootfs_mu_

  // rootfs/: merged once every layer's tree is filled. A failure (a layer
  // that could not be indexed) leaves it pending for the next caller.
  mutable std::mutex rootfs_mu_;  // guards the rootfs_ fields and tree_stats_
  std::condition_variable rootfs_cv_;
  Ino rootfs_dir_ = 0;
  Layer::State rootfs_state_ = Layer::State::kPending;
  Status rootfs_error_;
  MergeStats rootfs_stats_;
  std::thread background_;  // StartIndexing's: fills the layers, merges rootfs/
};

}  // namespace regfs

#endif  // REGFS_FS_IMAGE_FS_H_
