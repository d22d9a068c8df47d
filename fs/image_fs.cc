#include "fs/image_fs.h"

#include <malloc.h>

#include <algorithm>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/image/manifest.h"

namespace regfs {

ImageFs::ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
                 ImageFsOptions opts)
    : input_(std::move(input)), blobs_(blobs), status_(std::move(status)), opts_(std::move(opts)) {
  if (opts_.readahead_threads > 0) {
    prefetcher_ = std::make_unique<Prefetcher>(blobs_, opts_.readahead_threads,
                                               opts_.readahead_job, opts_.readahead_request,
                                               opts_.readahead_max);
  }
  LayerSetOptions lo = opts_.layer_set;
  if (prefetcher_ && !lo.read_ahead) {
    // Index passes read ahead through the same engine as blob readers; a
    // failure there is only logged, the pass reports its own.
    lo.read_ahead = [p = prefetcher_.get()](BlobSource* src, const BlobDescriptor& b,
                                            uint64_t off, uint64_t len) {
      p->Enqueue(b, off, len, src);
    };
  }
  layer_set_ = std::make_unique<LayerSet>(std::move(lo));
  Build();
}

ImageFs::~ImageFs() {
  layer_set_->Cancel();
  if (background_.joinable()) background_.join();
  layers_.clear();
  layer_set_.reset();
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
    for (size_t i = 0; i < input_.layers.size(); ++i) {
      std::string diff_id = i < input_.diff_ids.size() ? input_.diff_ids[i] : "";
      static const Annotations kNone;
      const Annotations& notes =
          i < input_.layer_annotations.size() ? input_.layer_annotations[i] : kNone;
      layers_.push_back(layer_set_->Get(input_.layers[i], diff_id, blobs_, notes));
      Ino dir = tree_.AddDir(layers, std::to_string(i), 0755);
      tree_.SetTimesAndOwner(dir, input_.mtime_sec, opts_.uid, opts_.gid);
      tree_.SetPending(dir, static_cast<uint32_t>(i + 1));
      layer_dirs_.push_back(dir);
    }
    tree_stats_.resize(layers_.size());
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
      if (prefetcher_) prefetcher_->OnRead(blob, offset, n);
      RETURN_IF_ERROR(blobs_->ReadAt(blob, offset, out.first(n)));
      return n;
    }
    case ContentKind::kLayerEntry: {
      if (node.content_id >= layers_.size()) return Status::IoError("no such layer");
      if (offset >= node.attr.size) return size_t{0};
      size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), node.attr.size - offset));
      ASSIGN_OR_RETURN(size_t got,
                       layers_[node.content_id]->ReadUncompressed(node.content_arg + offset,
                                                                  out.first(n)));
      if (got != n) return Status::Corrupt("layer stream ends inside a file");
      return n;
    }
    default:
      return Status::InvalidArgument("not a readable file");
  }
}

Result<std::string> ImageFs::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  return status_ ? status_() : std::string("{}\n");
}

Status ImageFs::Populate(uint32_t id) {
  if (opts_.layers && id == layers_.size() + 1) return PopulateRootfs();
  if (id == 0 || id > layers_.size()) return Status::NotFound("no such layer");
  return PopulateLayer(id - 1);
}

Status ImageFs::PopulateLayer(size_t i) {
  LayerTreeStats ts;
  bool filled_now = tree_.PendingId(layer_dirs_[i]) != 0;
  RETURN_IF_ERROR(layers_[i]->FillTree(tree_, layer_dirs_[i], static_cast<uint32_t>(i),
                                       opts_.whiteouts, HardLinkMetadata::kKeepTarget, &ts));
  if (filled_now && ts.entries + ts.skipped > 0) {
    std::lock_guard lock(rootfs_mu_);
    tree_stats_[i] = ts;
  }
  return Status::Ok();
}

void ImageFs::StartIndexing() {
  if (!opts_.layers || layers_.empty()) return;
  for (const auto& l : layers_) layer_set_->BuildInBackground(l);
  background_ = std::thread([this] {
    Status s = PopulateRootfs();
    if (!s.ok() && !layer_set_->cancelled()) {
      LOG_WARN("rootfs/ not ready: " + s.ToString() + " (the next look into it tries again)");
    }
    if (s.ok() && layer_set_->options().progress) layer_set_->options().progress("rootfs ready");
  });
}

Status ImageFs::PopulateRootfs() {
  for (size_t i = 0; i < layers_.size(); ++i) {
    Status s = PopulateLayer(i);
    if (!s.ok()) return s.Annotate("rootfs needs layer " + std::to_string(i));
  }
  std::unique_lock lock(rootfs_mu_);
  auto deadline = std::chrono::steady_clock::now() + opts_.layer_set.wait_timeout;
  for (;;) {
    if (rootfs_state_ == Layer::State::kReady) return Status::Ok();
    if (rootfs_state_ != Layer::State::kBuilding) break;
    if (!rootfs_cv_.wait_until(lock, deadline,
                               [&] { return rootfs_state_ != Layer::State::kBuilding; })) {
      return Status::Transient("timed out waiting for rootfs/");
    }
  }
  rootfs_state_ = Layer::State::kBuilding;
  lock.unlock();
  MergeStats ms;
  Status merged;
  try {
    ms = MergeLayers(tree_, layer_dirs_, rootfs_dir_, opts_.whiteouts);
  } catch (const std::exception& e) {
    merged = Status::IoError(std::string("merging layers failed: ") + e.what());
  }
  if (merged.ok()) tree_.ClearPending(rootfs_dir_);
  lock.lock();
  rootfs_stats_ = ms;
  rootfs_state_ = merged.ok() ? Layer::State::kReady : Layer::State::kFailed;
  rootfs_error_ = merged;
  // Index builds freed their buffers: give the memory back to the system.
  if (merged.ok()) malloc_trim(0);
  rootfs_cv_.notify_all();
  return merged;
}

std::string ImageFs::RootfsState() const {
  static const char* kNames[] = {"pending", "building", "ready", "failed"};
  std::lock_guard lock(rootfs_mu_);
  return kNames[static_cast<int>(rootfs_state_)];
}

MergeStats ImageFs::RootfsStats() const {
  std::lock_guard lock(rootfs_mu_);
  return rootfs_stats_;
}

std::vector<LayerIndexStatus> ImageFs::LayerStatuses() const {
  std::vector<LayerIndexStatus> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    LayerIndexStatus st = layers_[i]->Snapshot();
    std::lock_guard lock(rootfs_mu_);
    if (tree_stats_[i].entries) st.entries = tree_stats_[i].entries;
    st.skipped += tree_stats_[i].skipped;
    out.push_back(st);
  }
  return out;
}

}  // namespace regfs
