#include "fs/layer_set.h"

#include <algorithm>
#include <exception>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/image/manifest.h"

namespace regfs {
namespace {

using Clock = std::chrono::steady_clock;

// The uncompressed stream of a layer as a blob, for the chunk cache to keep.
class DecompressedSource : public BlobSource {
 public:
  explicit DecompressedSource(std::shared_ptr<LayerReader> reader) : reader_(std::move(reader)) {}
  Status ReadAt(const BlobDescriptor&, uint64_t offset, std::span<uint8_t> out) override {
    ASSIGN_OR_RETURN(size_t n, reader_->ReadAt(offset, out));
    if (n != out.size()) return Status::Corrupt("layer stream shorter than its index says");
    return Status::Ok();
  }

 private:
  std::shared_ptr<LayerReader> reader_;
};

// What an index pass reads through: stops when the set is cancelled (the
// mount went away), reads ahead of itself, reports progress.
class IndexPassSource : public BlobSourceWrapper {
 public:
  static constexpr uint64_t kFirstWindow = 4ull << 20;
  static constexpr uint64_t kMaxWindow = 32ull << 20;
  IndexPassSource(BlobSource* target, const LayerSet* set) : BlobSourceWrapper(target), set_(set) {}
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override {
    if (set_->cancelled()) return Status::Transient("unmounting");
    const auto& ahead = set_->options().read_ahead;
    const uint64_t done = offset + out.size();
    if (ahead && done < blob.size) {
      // The window grows with the pass, from 4 MiB to 32 MiB: a pass that
      // stops at its first header (a blob that is not the tar it claims to
      // be) has not had 32 MiB fetched behind it.
      const uint64_t window = std::clamp<uint64_t>(done, kFirstWindow, kMaxWindow);
      ahead(target(), blob, done, std::min<uint64_t>(blob.size - done, window));
    }
    return BlobSourceWrapper::ReadAt(blob, offset, out);
  }

 private:
  const LayerSet* set_;
};

const char* StateName(Layer::State s) {
  static const char* kNames[] = {"pending", "building", "ready", "failed"};
  return kNames[static_cast<int>(s)];
}

}  // namespace

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
      // An index built without the DiffID check, or for another DiffID, is
      // not evidence that this layer's tar matches this image's config.
      if (idx.ok() && !build.expected_diff_id.empty() && idx->diff_id != build.expected_diff_id) {
        idx = Status::Corrupt("it was not checked against DiffID " + build.expected_diff_id);
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

Layer::Layer(LayerSet* set, BlobDescriptor blob, std::string diff_id, BlobSource* source,
             std::optional<TocLocation> toc)
    : set_(set),
      blob_(std::move(blob)),
      diff_id_(std::move(diff_id)),
      has_diff_id_(ValidateDigest(diff_id_).ok()),
      source_(source),
      toc_(std::move(toc)) {}

Layer::~Layer() = default;

Layer::State Layer::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::optional<uint64_t> Layer::UncompressedSize() const {
  std::lock_guard lock(mu_);
  // A TOC index's size is its content stream's, not the tar's.
  if (trimmed_ && trimmed_->toc_format == TocFormat::kNone) return trimmed_->uncompressed_size;
  return std::nullopt;
}

bool Layer::FromToc() const {
  std::lock_guard lock(mu_);
  return toc_reader_ != nullptr;
}

Status Layer::EnsureReadyFromToc() {
  if (!toc_) return Status::NotFound("layer " + blob_.digest + " has no TOC");
  {
    std::lock_guard lock(mu_);
    if (state_ == State::kReady) {
      return toc_reader_ ? Status::Ok()
                         : Status::NotFound("layer " + blob_.digest +
                                            " was indexed without its TOC: " + toc_error_);
    }
  }
  // Fetch and check the TOC here (small reads; the index is stored), so
  // that the build below finds it and never falls back to a full pass on
  // this thread.
  bool from_store = false;
  Result<LayerIndex> idx = LoadTocIndex(&from_store);
  if (!idx.ok()) {
    std::lock_guard lock(mu_);
    toc_error_ = idx.status().ToString();
    return idx.status();
  }
  RETURN_IF_ERROR(EnsureReady());
  std::lock_guard lock(mu_);
  if (!toc_reader_) return Status::NotFound("layer " + blob_.digest + " was indexed without its TOC");
  return Status::Ok();
}

Status Layer::EnsureReady() {
  std::unique_lock lock(mu_);
  auto deadline = Clock::now() + set_->opts_.wait_timeout;
  for (;;) {
    switch (state_) {
      case State::kReady:
        return Status::Ok();
      case State::kFailed:
        if (Clock::now() < retry_at_) return error_;
        [[fallthrough]];
      case State::kPending:
        if (set_->cancelled()) return Status::Transient("unmounting");
        // On demand before background: whoever asks first builds it.
        state_ = State::kBuilding;
        lock.unlock();
        Build();
        lock.lock();
        continue;
      case State::kBuilding:
        if (!cv_.wait_until(lock, deadline, [&] { return state_ != State::kBuilding; })) {
          return Status::Transient("timed out waiting for the index of layer " + blob_.digest);
        }
        // A build that failed while we waited is its answer to us too.
        if (state_ == State::kFailed) return error_;
        continue;
    }
  }
}

void Layer::Build() {
  Status s;
  try {
    s = BuildOrThrow();
  } catch (const std::exception& e) {
    s = Status::IoError(std::string("index build threw: ") + e.what());
  } catch (...) {
    s = Status::IoError("index build threw");
  }
  std::lock_guard lock(mu_);
  if (s.ok()) {
    state_ = State::kReady;
    error_ = Status::Ok();
    backoff_ = std::chrono::milliseconds(0);
  } else {
    LOG_ERROR("layer " + blob_.digest + ": cannot index: " + s.ToString());
    state_ = State::kFailed;
    error_ = s;
    backoff_ = backoff_.count() == 0 ? set_->opts_.backoff_min
                                     : std::min(backoff_ * 2, set_->opts_.backoff_max);
    retry_at_ = Clock::now() + backoff_;
  }
  cv_.notify_all();
}

Result<LayerIndex> Layer::LoadIndex(
    bool* from_store, std::function<void(uint64_t done, uint64_t total)> progress) {
  IndexPassSource pass(source_, set_);
  IndexBuildOptions bo;
  if (has_diff_id_) bo.expected_diff_id = diff_id_;
  bo.cancelled = [set = set_] { return set->cancelled(); };
  bo.progress = std::move(progress);
  if (toc_) {
    Result<LayerIndex> idx = LoadTocIndex(from_store);
    if (idx.ok()) return idx;
    LOG_WARN("layer " + blob_.digest + ": not using its " + TocFormatName(toc_->format) +
             " TOC (" + idx.status().ToString() + "); indexing it by a pass over the blob");
    std::lock_guard lock(mu_);
    toc_error_ = idx.status().ToString();
  }
  return LoadOrBuildLayerIndex(set_->opts_.index_store, &pass, blob_, bo, from_store);
}

Result<LayerIndex> Layer::LoadTocIndex(bool* from_store) {
  *from_store = false;
  const IndexStore& store = set_->opts_.index_store;
  if (store.get) {
    if (std::optional<std::string> bytes = store.get(blob_.digest)) {
      Result<LayerIndex> idx = LayerIndex::Deserialize(*bytes);
      // Only an index built from this same TOC: a full pass's index of this
      // blob is as good to read by, but it is not the TOC's (callers ask
      // for the TOC's), and LoadOrBuildLayerIndex finds it anyway.
      if (idx.ok() && idx->blob_digest == blob_.digest && idx->toc_format == toc_->format &&
          idx->toc_digest == toc_->toc_digest) {
        *from_store = true;
        return idx;
      }
    }
  }
  if (set_->cancelled()) return Status::Transient("unmounting");
  // The TOC is checked against the annotation's digest, and every chunk
  // against its own: no need to wait for the whole blob's verification
  // (the TOC sits in the blob's last chunk).
  ASSIGN_OR_RETURN(LayerIndex idx, BuildIndexFromToc(*source_->SelfVerifyingReads(), blob_, *toc_,
                                                     set_->opts_.toc_limits));
  if (store.put) store.put(blob_.digest, idx.Serialize());
  return idx;
}

Status Layer::BuildOrThrow() {
  const LayerSetOptions& opts = set_->opts_;
  bool from_store = false;
  ASSIGN_OR_RETURN(LayerIndex idx, LoadIndex(&from_store, [this, &opts](uint64_t done,
                                                                         uint64_t total) {
    {
      std::lock_guard lock(mu_);
      done_ = done;
    }
    if (opts.progress) {
      opts.progress("indexing " + blob_.digest.substr(0, 19) + ": " +
                    std::to_string(total ? done * 100 / total : 100) + "%");
    }
  }));
  if (toc_ && idx.toc_format == TocFormat::kNone) {
    // A TOC layer indexed by a full pass (its TOC was unusable) still has
    // the TOC and landmark files in its tar: they are the format's, not the
    // image's, and are hidden as when the TOC is used (stargz-snapshotter
    // hides them too).
    std::erase_if(idx.entries, [](const TarEntry& e) {
      return e.path == kEstargzTocName || e.path == kPrefetchLandmark ||
             e.path == kNoPrefetchLandmark;
    });
  }
  // The reader needs everything but the entries: copy the index without
  // them (a layer may have millions), then put them back for the trees.
  std::vector<TarEntry> entries = std::move(idx.entries);
  idx.entries = {};
  auto trimmed = std::make_shared<const LayerIndex>(idx);
  idx.entries = std::move(entries);
  auto full = std::make_shared<const LayerIndex>(std::move(idx));
  std::shared_ptr<LayerReader> reader;
  std::shared_ptr<TocReader> toc_reader;
  if (trimmed->toc_format != TocFormat::kNone) {
    toc_reader = std::make_shared<TocReader>(source_->SelfVerifyingReads(), blob_, trimmed,
                                             opts.toc_reader);
  } else {
    reader = std::make_shared<LayerReader>(source_, blob_, trimmed);
  }
  std::shared_ptr<BlobSource> raw_upstream, raw;
  BlobDescriptor raw_desc;
  if (reader && trimmed->NeedsSequentialDecompression() && opts.make_cached && has_diff_id_) {
    uint64_t cap = blob_.size * opts.raw_max_ratio + opts.raw_slack;
    if (trimmed->uncompressed_size <= cap) {
      raw_desc = {"application/vnd.oci.image.layer.v1.tar", diff_id_, trimmed->uncompressed_size};
      raw_upstream = std::make_shared<DecompressedSource>(reader);
      raw = opts.make_cached(raw_upstream.get());
    } else {
      LOG_WARN("layer " + blob_.digest + ": not keeping its decompressed tar (" +
               std::to_string(trimmed->uncompressed_size) + " bytes from a " +
               std::to_string(blob_.size) + "-byte blob); reads decompress from the start");
    }
  }
  // Everything is published under one lock, and only then is the layer
  // ready: nobody sees "ready" without a reader.
  std::lock_guard lock(mu_);
  from_cache_ = from_store;
  done_ = blob_.size;
  entries_count_ = full->entries.size();
  skipped_ = full->skipped_entries;
  full_ = std::move(full);
  trimmed_ = std::move(trimmed);
  reader_ = std::move(reader);
  toc_reader_ = std::move(toc_reader);
  raw_upstream_ = std::move(raw_upstream);
  raw_ = std::move(raw);
  raw_desc_ = raw_desc;
  return Status::Ok();
}

Result<std::shared_ptr<const LayerIndex>> Layer::Entries() {
  {
    std::lock_guard lock(mu_);
    if (full_) return full_;
  }
  // A tree took them before: the cache has them (or a pass rebuilds them).
  bool from_store = false;
  ASSIGN_OR_RETURN(LayerIndex idx, LoadIndex(&from_store, {}));
  return std::make_shared<const LayerIndex>(std::move(idx));
}

Status Layer::FillTree(Tree& tree, Ino dir, uint32_t content_id, WhiteoutMode mode,
                       HardLinkMetadata links, LayerTreeStats* stats) {
  if (tree.PendingId(dir) == 0) return Status::Ok();
  RETURN_IF_ERROR(EnsureReady());
  // One tree fill at a time per layer (a flag, not a timed mutex: the wait
  // is bounded, and ThreadSanitizer does not follow timed_mutex here).
  {
    std::unique_lock lock(mu_);
    auto deadline = std::chrono::steady_clock::now() + set_->opts_.wait_timeout;
    if (!cv_.wait_until(lock, deadline, [&] { return !filling_; })) {
      return Status::Transient("timed out waiting for layer " + blob_.digest + "'s tree");
    }
    filling_ = true;
  }
  struct Done {
    Layer* l;
    ~Done() {
      std::lock_guard lock(l->mu_);
      l->filling_ = false;
      l->cv_.notify_all();
    }
  } done{this};
  if (tree.PendingId(dir) == 0) return Status::Ok();  // filled while we waited
  ASSIGN_OR_RETURN(std::shared_ptr<const LayerIndex> idx, Entries());
  LayerTreeStats ts = AddLayerEntries(tree, dir, content_id, *idx, mode, links);
  tree.ClearPending(dir);
  if (stats) *stats = ts;
  std::lock_guard lock(mu_);
  full_.reset();  // the tree holds the entries now
  return Status::Ok();
}

Result<size_t> Layer::ReadUncompressed(uint64_t offset, std::span<uint8_t> out) {
  std::shared_ptr<LayerReader> reader;
  std::shared_ptr<TocReader> toc_reader;
  std::shared_ptr<BlobSource> raw;
  BlobDescriptor raw_desc;
  {
    std::lock_guard lock(mu_);
    reader = reader_;
    toc_reader = toc_reader_;
    raw = raw_;
    raw_desc = raw_desc_;
  }
  if (toc_reader) return toc_reader->ReadAt(offset, out);
  if (!reader) return Status::Transient("layer " + blob_.digest + " is not indexed");
  uint64_t size = reader->index().uncompressed_size;
  if (offset >= size) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size - offset));
  if (raw) {
    RETURN_IF_ERROR(raw->ReadAt(raw_desc, offset, out.first(n)));
    return n;
  }
  ASSIGN_OR_RETURN(size_t got, reader->ReadAt(offset, out.first(n)));
  if (got != n) return Status::Corrupt("layer stream ends early");
  return n;
}

void Layer::Warm() {
  FillRaw();
  PrefetchLandmark();
}

void Layer::PrefetchLandmark() {
  std::shared_ptr<TocReader> reader;
  {
    std::lock_guard lock(mu_);
    if (!toc_reader_ || landmark_claimed_ || trimmed_->prefetch_size == 0) return;
    landmark_claimed_ = true;
    reader = toc_reader_;
  }
  if (set_->cancelled()) return;
  Status s = reader->Prefetch(0, reader->index().prefetch_size);
  if (!s.ok()) {
    LOG_WARN("layer " + blob_.digest + ": prefetching its landmarked files failed: " +
             s.ToString() + " (they are fetched when read)");
  }
}

void Layer::FillRaw() {
  std::shared_ptr<BlobSource> raw;
  BlobDescriptor desc;
  {
    std::lock_guard lock(mu_);
    if (!raw_ || raw_claimed_) return;
    raw_claimed_ = true;  // one worker fills each layer
    raw = raw_;
    desc = raw_desc_;
  }
  std::vector<uint8_t> buf(4 << 20);
  for (uint64_t off = 0; off < desc.size && !set_->cancelled(); off += buf.size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), desc.size - off));
    Status s = raw->ReadAt(desc, off, std::span(buf.data(), n));
    if (!s.ok()) {
      LOG_WARN("layer " + blob_.digest + ": keeping its decompressed tar failed: " +
               s.ToString() + " (reads decompress from the start instead)");
      return;
    }
  }
}

LayerIndexStatus Layer::Snapshot() const {
  std::lock_guard lock(mu_);
  LayerIndexStatus st;
  st.state = StateName(state_);
  st.percent = state_ == State::kReady ? 100.0
               : blob_.size ? 100.0 * static_cast<double>(done_) / static_cast<double>(blob_.size)
                            : 0.0;
  st.from_cache = from_cache_;
  st.entries = entries_count_;
  st.skipped = skipped_;
  st.sequential_only = trimmed_ && trimmed_->NeedsSequentialDecompression() && !raw_;
  st.raw_cached = raw_ != nullptr;
  if (toc_reader_) st.toc = TocFormatName(trimmed_->toc_format);
  st.toc_error = toc_error_;
  if (trimmed_) st.uncompressed_size = trimmed_->uncompressed_size;
  if (!error_.ok()) st.error = error_.ToString();
  return st;
}

LayerSet::LayerSet(LayerSetOptions opts) : opts_(std::move(opts)) {}

LayerSet::~LayerSet() {
  Cancel();
  for (std::thread& t : threads_) t.join();
}

void LayerSet::Cancel() {
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    queue_.clear();
  }
  cv_.notify_all();
}

std::shared_ptr<Layer> LayerSet::Get(const BlobDescriptor& blob, const std::string& diff_id,
                                     BlobSource* source, const Annotations& annotations) {
  std::lock_guard lock(mu_);
  std::weak_ptr<Layer>& slot = layers_[blob.digest];
  if (std::shared_ptr<Layer> l = slot.lock()) return l;
  auto l = std::make_shared<Layer>(this, blob, diff_id, source, DetectToc(annotations, blob));
  slot = l;
  // Forget handles nobody holds any more, so the map does not grow forever.
  for (auto it = layers_.begin(); it != layers_.end();) {
    it = it->second.expired() ? layers_.erase(it) : std::next(it);
  }
  return l;
}

size_t LayerSet::LiveCount() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [digest, w] : layers_) n += !w.expired();
  return n;
}

void LayerSet::BuildInBackground(const std::shared_ptr<Layer>& layer, std::function<void()> then) {
  {
    std::lock_guard lock(mu_);
    if (cancelled_) return;
    queue_.push_back({layer, std::move(then)});
    if (threads_.size() < static_cast<size_t>(std::max(1, opts_.threads))) {
      threads_.emplace_back([this] { Worker(); });
    }
  }
  cv_.notify_one();
}

void LayerSet::Worker() {
  for (;;) {
    std::shared_ptr<Layer> layer;
    std::function<void()> then;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return cancelled_ || !queue_.empty(); });
      if (cancelled_) return;
      layer = queue_.front().layer.lock();
      then = std::move(queue_.front().then);
      queue_.pop_front();
    }
    if (!layer || !layer->EnsureReady().ok()) continue;
    if (then) then();
    layer->Warm();
  }
}

}  // namespace regfs
