#include "fs/image_fs.h"

#include <malloc.h>

#include <algorithm>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/image/manifest.h"
#include "reader/layer/index_builder.h"

namespace regfs {
namespace {

// The uncompressed stream of a layer as a blob, for the chunk cache to keep.
class DecompressedSource : public BlobSource {
 public:
  explicit DecompressedSource(LayerReader* reader) : reader_(reader) {}
  Status ReadAt(const BlobDescriptor&, uint64_t offset, std::span<uint8_t> out) override {
    ASSIGN_OR_RETURN(size_t n, reader_->ReadAt(offset, out));
    if (n != out.size()) return Status::Corrupt("layer stream shorter than its index says");
    return Status::Ok();
  }

 private:
  LayerReader* reader_;
};

}  // namespace

ImageFs::ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
                 ImageFsOptions opts)
    : input_(std::move(input)),
      blobs_(blobs),
      status_(std::move(status)),
      opts_(std::move(opts)),
      index_source_(blobs, &cancelled_) {
  if (opts_.readahead_threads > 0) {
    prefetcher_ = std::make_unique<Prefetcher>(blobs_, opts_.readahead_threads,
                                               opts_.readahead_job, opts_.readahead_request);
  }
  Build();
}

ImageFs::~ImageFs() {
  cancelled_ = true;
  {
    std::lock_guard lock(layers_mu_);
    stop_ = true;
  }
  layers_cv_.notify_all();
  for (auto& t : index_threads_) t.join();
}

void ImageFs::Build() {
  auto file = [&](Ino parent, std::string name, ContentKind kind, uint32_t id, uint64_t size) {
    Node n;
    n.attr.mode = S_IFREG | 0444;
    n.attr.size = size;
    n.attr.uid = opts_.uid;
    n.attr.gid = opts_.gid;
    n.attr.mtime_sec = input_.mtime_sec;
    n.kind = kind;
    n.content_id = id;
    return tree_.AddChild(parent, std::move(name), std::move(n));
  };
  auto add_inline = [&](Ino parent, std::string name, const std::string& bytes) {
    inline_.push_back(bytes);
    file(parent, std::move(name), ContentKind::kInline,
         static_cast<uint32_t>(inline_.size() - 1), bytes.size());
  };
  add_inline(kRootIno, "manifest.json", input_.manifest_bytes);
  add_inline(kRootIno, "config.json", input_.config_bytes);
  if (input_.index_bytes) add_inline(kRootIno, "index.json", *input_.index_bytes);

  Ino blobs = tree_.AddDir(kRootIno, "blobs");
  for (size_t i = 0; i < input_.layers.size(); ++i) {
    file(blobs, input_.layers[i].digest, ContentKind::kBlob, static_cast<uint32_t>(i),
         input_.layers[i].size);
  }
  Ino meta = tree_.AddDir(kRootIno, ".regfs");
  file(meta, "status.json", ContentKind::kDynamic, 0, 0);
  for (Ino dir : {kRootIno, blobs, meta}) {
    tree_.SetTimesAndOwner(dir, input_.mtime_sec, opts_.uid, opts_.gid);
  }
  if (opts_.layers) {
    Ino layers = tree_.AddDir(kRootIno, "layers");
    tree_.SetTimesAndOwner(layers, input_.mtime_sec, opts_.uid, opts_.gid);
    layers_.resize(input_.layers.size());
    for (size_t i = 0; i < input_.layers.size(); ++i) {
      layers_[i].dir = tree_.AddDir(layers, std::to_string(i), 0755);
      tree_.SetTimesAndOwner(layers_[i].dir, input_.mtime_sec, opts_.uid, opts_.gid);
      tree_.SetPending(layers_[i].dir, static_cast<uint32_t>(i + 1));
    }
    rootfs_dir_ = tree_.AddDir(kRootIno, "rootfs", 0755);
    tree_.SetTimesAndOwner(rootfs_dir_, input_.mtime_sec, opts_.uid, opts_.gid);
    tree_.SetPending(rootfs_dir_, static_cast<uint32_t>(layers_.size() + 1));
  }
}

Result<size_t> ImageFs::Read(const Node& node, uint64_t offset, std::span<uint8_t> out) {
  switch (node.kind) {
    case ContentKind::kInline: {
      const std::string& s = inline_.at(node.content_id);
      if (offset >= s.size()) return size_t{0};
      size_t n = std::min<size_t>(out.size(), s.size() - offset);
      std::copy_n(s.data() + offset, n, out.data());
      return n;
    }
    case ContentKind::kBlob: {
      const BlobDescriptor& blob = input_.layers.at(node.content_id);
      if (offset >= blob.size) return size_t{0};
      size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), blob.size - offset));
      MaybeReadAhead(blob, offset, n);
      RETURN_IF_ERROR(blobs_->ReadAt(blob, offset, out.first(n)));
      return n;
    }
    case ContentKind::kLayerEntry: {
      LayerReader* reader = nullptr;
      BlobSource* raw = nullptr;
      BlobDescriptor raw_desc;
      {
        std::lock_guard lock(layers_mu_);
        if (node.content_id < layers_.size()) {
          reader = layers_[node.content_id].reader.get();
          raw = layers_[node.content_id].raw.get();
          raw_desc = layers_[node.content_id].raw_desc;
        }
      }
      if (!reader) return Status::NotFound("layer not indexed");
      if (offset >= node.attr.size) return size_t{0};
      size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), node.attr.size - offset));
      if (raw) {
        RETURN_IF_ERROR(raw->ReadAt(raw_desc, node.content_arg + offset, out.first(n)));
        return n;
      }
      ASSIGN_OR_RETURN(size_t got, reader->ReadAt(node.content_arg + offset, out.first(n)));
      if (got != n) return Status::Corrupt("layer stream ends inside a file");
      return n;
    }
    default:
      return Status::InvalidArgument("not a readable file");
  }
}

void ImageFs::MaybeReadAhead(const BlobDescriptor& blob, uint64_t offset, size_t len) {
  if (!prefetcher_) return;
  // The kernel issues its own read-ahead asynchronously, from several threads,
  // so "sequential" allows a little reordering around the expected offset.
  constexpr uint64_t kSlack = 2ull << 20;
  uint64_t from = 0, count = 0;
  {
    std::lock_guard lock(streams_mu_);
    Stream& st = streams_[blob.digest];
    bool sequential = st.next != 0 && offset + kSlack >= st.next && offset <= st.next + kSlack;
    if (!sequential) {
      st = Stream{offset + len, 0, 0};
      return;
    }
    st.next = std::max(st.next, offset + len);
    st.window = st.window == 0 ? opts_.readahead_job
                               : std::min(st.window * 2, opts_.readahead_max);
    uint64_t target = std::min(blob.size, st.next + st.window);
    from = std::max(st.ahead_to, st.next);
    if (target <= from) return;
    // Top up in batches of half the window (at most one request's worth),
    // so that an established stream makes few large requests rather than one
    // small one every few reads.
    if (target < blob.size && target - from < std::min(st.window / 2, opts_.readahead_request)) {
      return;
    }
    count = target - from;
    st.ahead_to = target;
  }
  prefetcher_->Enqueue(blob, from, count);
}

Result<std::string> ImageFs::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  return status_ ? status_() : std::string("{}\n");
}

Status ImageFs::Populate(uint32_t id) {
  size_t i = id - 1;
  if (opts_.layers && id == layers_.size() + 1) return PopulateRootfs();
  std::unique_lock lock(layers_mu_);
  if (id == 0 || i >= layers_.size()) return Status::NotFound("no such layer");
  if (layers_[i].state == Layer::State::kPending) {
    // On demand before background: whoever looks first builds it.
    layers_[i].state = Layer::State::kBuilding;
    lock.unlock();
    BuildLayer(i);
    lock.lock();
  }
  layers_cv_.wait(lock, [&] {
    return layers_[i].state == Layer::State::kReady || layers_[i].state == Layer::State::kFailed;
  });
  return layers_[i].state == Layer::State::kReady ? Status::Ok() : layers_[i].error;
}

void ImageFs::StartIndexing() {
  if (!opts_.layers || layers_.empty()) return;
  int n = std::max(1, std::min<int>(opts_.index_threads, static_cast<int>(layers_.size())));
  for (int t = 0; t < n; ++t) index_threads_.emplace_back([this] { IndexWorker(); });
}

void ImageFs::IndexWorker() {
  for (;;) {
    size_t next = layers_.size();
    {
      std::lock_guard lock(layers_mu_);
      if (stop_) return;
      for (size_t i = 0; i < layers_.size(); ++i) {
        if (layers_[i].state == Layer::State::kPending) {
          layers_[i].state = Layer::State::kBuilding;
          next = i;
          break;
        }
      }
    }
    if (next == layers_.size()) {
      // Every layer is claimed: the merged view is the next background job,
      // then random access into single-frame zstd layers.
      (void)PopulateRootfs();
      FillRawLayers();
      return;
    }
    BuildLayer(next);
  }
}

Result<LayerIndex> LoadOrBuildLayerIndex(const IndexStore& store, BlobSource* source,
                                         const BlobDescriptor& blob,
                                         const IndexBuildOptions& build, bool* from_store) {
  *from_store = false;
  if (store.get) {
    if (std::optional<std::string> bytes = store.get(blob.digest)) {
      Result<LayerIndex> idx = LayerIndex::Deserialize(*bytes);
      if (idx.ok() && idx->blob_digest != blob.digest) {
        idx = Status::Corrupt("it indexes " + idx->blob_digest);
      }
      if (idx.ok()) {
        *from_store = true;
        return idx;
      }
      LOG_WARN("layer " + blob.digest + ": stored index unusable (" + idx.status().ToString() +
               "); rebuilding");
    }
  }
  ASSIGN_OR_RETURN(LayerIndex idx,
                   BuildLayerIndex(source, blob, CompressionOfMediaType(blob.media_type), build));
  if (store.put) store.put(blob.digest, idx.Serialize());
  return idx;
}

std::shared_ptr<const LayerIndex> IndexForReader(LayerIndex index) {
  index.entries.clear();
  index.entries.shrink_to_fit();
  return std::make_shared<const LayerIndex>(std::move(index));
}

Result<std::shared_ptr<const LayerIndex>> ImageFs::LoadOrBuildIndex(size_t i) {
  const BlobDescriptor& blob = input_.layers[i];
  IndexBuildOptions bo;
  bo.progress = [this, i](uint64_t done, uint64_t total) {
    {
      std::lock_guard lock(layers_mu_);
      layers_[i].done = done;
    }
    if (opts_.progress) {
      opts_.progress("indexing layer " + std::to_string(i) + ": " +
                     std::to_string(total ? done * 100 / total : 100) + "%");
    }
  };
  bool from_store = false;
  ASSIGN_OR_RETURN(LayerIndex idx,
                   LoadOrBuildLayerIndex(opts_.index_store, &index_source_, blob, bo, &from_store));
  if (from_store) {
    std::lock_guard lock(layers_mu_);
    layers_[i].from_cache = true;
    layers_[i].done = blob.size;
  }
  return std::make_shared<const LayerIndex>(std::move(idx));
}

void ImageFs::BuildLayer(size_t i) {
  Result<std::shared_ptr<const LayerIndex>> idx = LoadOrBuildIndex(i);
  if (!idx.ok()) {
    LOG_ERROR("layer " + std::to_string(i) + " (" + input_.layers[i].digest +
              "): cannot index: " + idx.status().ToString());
    std::lock_guard lock(layers_mu_);
    layers_[i].state = Layer::State::kFailed;
    layers_[i].error = idx.status();
    layers_cv_.notify_all();
    return;
  }
  Ino dir;
  {
    std::lock_guard lock(layers_mu_);
    dir = layers_[i].dir;
  }
  LayerTreeStats ts = AddLayerEntries(tree_, dir, static_cast<uint32_t>(i), **idx,
                                      opts_.whiteouts);
  // The tree holds the entries now; the reader needs only the restart points.
  std::shared_ptr<const LayerIndex> trimmed = IndexForReader(**idx);
  idx->reset();
  auto reader = std::make_unique<LayerReader>(blobs_, input_.layers[i], trimmed);
  std::unique_ptr<BlobSource> raw_upstream, raw;
  BlobDescriptor raw_desc;
  if (trimmed->NeedsSequentialDecompression() && opts_.make_cached &&
      i < input_.diff_ids.size() && ValidateDigest(input_.diff_ids[i]).ok()) {
    raw_desc = {"application/vnd.oci.image.layer.v1.tar", input_.diff_ids[i],
                trimmed->uncompressed_size};
    raw_upstream = std::make_unique<DecompressedSource>(reader.get());
    raw = opts_.make_cached(raw_upstream.get());
  }
  {
    std::lock_guard lock(layers_mu_);
    layers_[i].index = trimmed;
    layers_[i].reader = std::move(reader);
    layers_[i].raw_upstream = std::move(raw_upstream);
    layers_[i].raw = std::move(raw);
    layers_[i].raw_desc = raw_desc;
  }
  tree_.ClearPending(dir);
  std::lock_guard lock(layers_mu_);
  layers_[i].tree_stats = ts;
  layers_[i].state = Layer::State::kReady;
  layers_cv_.notify_all();
  if (opts_.progress) opts_.progress("layer " + std::to_string(i) + " ready");
}

Status ImageFs::PopulateRootfs() {
  for (size_t i = 0; i < layers_.size(); ++i) {
    Status s = Populate(static_cast<uint32_t>(i + 1));
    if (!s.ok()) return s.Annotate("rootfs needs layer " + std::to_string(i));
  }
  std::unique_lock lock(layers_mu_);
  if (rootfs_state_ == Layer::State::kPending) {
    rootfs_state_ = Layer::State::kBuilding;
    std::vector<Ino> roots;
    for (const Layer& l : layers_) roots.push_back(l.dir);
    lock.unlock();
    MergeStats ms = MergeLayers(tree_, roots, rootfs_dir_, opts_.whiteouts);
    tree_.ClearPending(rootfs_dir_);
    lock.lock();
    rootfs_stats_ = ms;
    rootfs_state_ = Layer::State::kReady;
    // Index builds freed their buffers: give the memory back to the system.
    malloc_trim(0);
    layers_cv_.notify_all();
    if (opts_.progress) opts_.progress("rootfs ready");
  }
  layers_cv_.wait(lock, [&] { return rootfs_state_ == Layer::State::kReady; });
  return Status::Ok();
}

void ImageFs::FillRawLayers() {
  for (size_t i = 0;; ++i) {
    BlobSource* raw = nullptr;
    BlobDescriptor desc;
    {
      std::lock_guard lock(layers_mu_);
      if (i >= layers_.size() || stop_) return;
      if (!layers_[i].raw || layers_[i].raw_filled) continue;
      layers_[i].raw_filled = true;  // claimed: one worker fills each layer
      raw = layers_[i].raw.get();
      desc = layers_[i].raw_desc;
    }
    std::vector<uint8_t> buf(4 << 20);
    for (uint64_t off = 0; off < desc.size && !cancelled_; off += buf.size()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), desc.size - off));
      Status s = raw->ReadAt(desc, off, std::span(buf.data(), n));
      if (!s.ok()) {
        LOG_WARN("layer " + std::to_string(i) + ": keeping its decompressed tar failed: " +
                 s.ToString() + " (reads decompress from the start instead)");
        break;
      }
    }
  }
}

std::string ImageFs::RootfsState() const {
  static const char* kNames[] = {"pending", "building", "ready", "failed"};
  std::lock_guard lock(layers_mu_);
  return kNames[static_cast<int>(rootfs_state_)];
}

MergeStats ImageFs::RootfsStats() const {
  std::lock_guard lock(layers_mu_);
  return rootfs_stats_;
}

std::vector<LayerIndexStatus> ImageFs::LayerStatuses() const {
  std::lock_guard lock(layers_mu_);
  std::vector<LayerIndexStatus> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    LayerIndexStatus st;
    static const char* kNames[] = {"pending", "building", "ready", "failed"};
    st.state = kNames[static_cast<int>(l.state)];
    uint64_t size = input_.layers[i].size;
    st.percent = l.state == Layer::State::kReady ? 100.0
                 : size ? 100.0 * static_cast<double>(l.done) / static_cast<double>(size)
                        : 0.0;
    st.from_cache = l.from_cache;
    st.entries = l.tree_stats.entries;
    st.skipped = l.tree_stats.skipped;
    st.sequential_only = l.index && l.index->NeedsSequentialDecompression() && !l.raw;
    st.raw_cached = l.raw != nullptr;
    if (!l.error.ok()) st.error = l.error.ToString();
    out.push_back(st);
  }
  return out;
}

}  // namespace regfs
