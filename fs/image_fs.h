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
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fs/fuse_daemon.h"
#include "fs/prefetcher.h"
#include "fs/tree.h"
#include "reader/base/blob_source.h"

namespace regfs {

struct ImageFsInput {
  std::string manifest_bytes;
  std::string config_bytes;
  std::optional<std::string> index_bytes;  // when the reference went through an index
  std::vector<BlobDescriptor> layers;      // bottom first
  int64_t mtime_sec = 0;                   // for the top-level files (image creation time)
};

struct ImageFsOptions {
  int readahead_threads = 3;
  uint64_t readahead_job = 4ull << 20;      // one cache request each
  uint64_t readahead_max = 32ull << 20;     // the window grows up to this
  uint32_t uid = 0, gid = 0;                // owner of the synthetic files
};

class ImageFs : public FsContent {
 public:
  // `blobs` must outlive this. `status` makes .regfs/status.json's bytes.
  ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
          ImageFsOptions opts = {});
  ~ImageFs() override;

  Tree& tree() { return tree_; }
  const ImageFsInput& input() const { return input_; }

  Result<size_t> Read(const Node& node, uint64_t offset, std::span<uint8_t> out) override;
  Result<std::string> Generate(const Node& node) override;
  Status Populate(uint32_t id) override;

 private:
  void Build();
  void MaybeReadAhead(const BlobDescriptor& blob, uint64_t offset, size_t len);

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
  std::mutex streams_mu_;  // guards streams_
  std::unordered_map<std::string, Stream> streams_;  // by blob digest
};

}  // namespace regfs

#endif  // REGFS_FS_IMAGE_FS_H_
