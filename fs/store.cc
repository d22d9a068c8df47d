#include "fs/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "fs/layer_tree.h"
#include "reader/base/base64.h"
#include "reader/base/log.h"
#include "reader/image/manifest.h"
#include "reader/image/reference.h"
#include "reader/layer/index_builder.h"

namespace regfs {
namespace {

constexpr uint32_t kStatusId = 0xffffffffu;  // content_id of .regfs/status.json
// Background index builds at once: podman looks up an image's layers
// together, and each build mostly waits for the registry.
constexpr size_t kBuilders = 4;

// Fails reads once `stop` is set, so that a store being torn down does not
// wait for a whole layer to download.
class StoppableSource : public BlobSourceWrapper {
 public:
  StoppableSource(BlobSource* target, const std::atomic<bool>* stop)
      : BlobSourceWrapper(target), stop_(stop) {}
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override {
    if (stop_->load()) return Status::Transient("the store is stopping");
    return BlobSourceWrapper::ReadAt(blob, offset, out);
  }

 private:
  const std::atomic<bool>* stop_;
};

Node FileNode(ContentKind kind, uint32_t id, uint64_t size) {
  Node n;
  n.attr.mode = S_IFREG | 0444;
  n.attr.size = size;
  n.kind = kind;
  n.content_id = id;
  return n;
}

Node DirNode() {
  Node n;
  n.attr.mode = S_IFDIR | 0755;
  n.attr.nlink = 2;
  return n;
}

}  // namespace

LayerStore::LayerStore(ChunkCache* cache, CommonOptions common, IndexStore index_store,
                       bool index_on_pull)
    : cache_(cache),
      common_(std::move(common)),
      index_store_(std::move(index_store)),
      index_on_pull_(index_on_pull) {
  tree_.SetTimesAndOwner(kRootIno, 0, 0, 0);
  tree_.Update(kRootIno, [](Node& n) { n.attr.mode = S_IFDIR | 0755; });
  Ino meta = tree_.AddDir(kRootIno, ".regfs");
  status_file_ = tree_.AddChild(meta, "status.json", FileNode(ContentKind::kDynamic, kStatusId, 0));
}

LayerStore::~LayerStore() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  build_cv_.notify_all();
  for (std::thread& t : builders_) t.join();
}

StoreCounters LayerStore::Counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

std::string LayerStore::StatusJson() const {
  std::lock_guard lock(mu_);
  nlohmann::json j;
  j["pid"] = getpid();
  j["images"] = counters_.images;
  j["uses"] = counters_.uses;
  j["releases"] = counters_.releases;
  j["indexedLayers"] = counters_.indexed;
  j["treeNodes"] = tree_.Count();
  j["layers"] = nlohmann::json::array();
  static const char* kStates[] = {"pending", "building", "ready", "failed"};
  for (const Layer& l : layers_) {
    nlohmann::json lj = {{"digest", l.blob.digest},
                         {"diffID", l.diff_id},
                         {"state", kStates[static_cast<int>(l.state)]},
                         {"queued", l.queued},
                         {"uses", l.uses},
                         {"releases", l.releases}};
    if (!l.error.ok()) lj["error"] = l.error.ToString();
    j["layers"].push_back(lj);
  }
  return j.dump(2) + "\n";
}

Status LayerStore::LookupMiss(Ino parent, std::string_view name, bool* cache_negative) {
  if (parent != kRootIno) return Status::NotFound("no such entry");
  return AddImage(name, cache_negative);
}

Status LayerStore::AddImage(std::string_view name, bool* cache_negative) {
  std::lock_guard resolve_lock(resolve_mu_);
  if (tree_.Lookup(kRootIno, name).ok()) return Status::Ok();  // another thread added it
  std::optional<std::string> text = Base64DecodeStrict(name);
  if (!text) return Status::NotFound("not base64");
  Result<Reference> ref = ParseReference(*text);
  if (!ref.ok()) return Status::NotFound("not a reference");
  std::string repo_key = ref->registry + "/" + ref->repository;
  Repo& repo = repos_[repo_key];
  if (!repo.client) {
    ASSIGN_OR_RETURN(RegistryClientOptions co, MakeClientOptions(common_, ref->registry));
    Result<std::unique_ptr<RegistryClient>> client = RegistryClient::Create(*ref, co);
    if (!client.ok()) {
      repos_.erase(repo_key);
      LOG_WARN("store: " + *text + ": " + client.status().ToString());
      return Status::NotFound("no client");
    }
    repo.client = std::move(*client);
    repo.cached =
        std::make_unique<CachedBlobSource>(cache_, repo.client.get(), DaemonCacheOptions());
  }
  std::optional<Platform> platform;
  if (!common_.platform.empty()) {
    Result<Platform> p = ParsePlatform(common_.platform);
    if (!p.ok()) return Status::NotFound("bad --platform");
    platform = *p;
  }
  Result<ResolvedImage> img = ResolveImage(*repo.client, *ref, platform);
  if (!img.ok()) {
    // Podman then pulls the image itself; a later lookup may succeed.
    *cache_negative = false;
    LOG_WARN("store: cannot resolve " + *text + ": " + img.status().ToString());
    return Status::NotFound("cannot resolve");
  }
  const std::vector<BlobDescriptor>& blobs = img->manifest.layers;
  if (img->config.diff_ids.size() != blobs.size()) {
    LOG_WARN("store: " + *text + ": config lists " + std::to_string(img->config.diff_ids.size()) +
             " diff_ids for " + std::to_string(blobs.size()) + " layers");
    return Status::NotFound("diff_ids do not match the layers");
  }
  // Nobody sees the image directory's children before this lookup answers:
  // the kernel sends one lookup at a time for a name in a directory.
  Ino image_dir = tree_.AddChild(kRootIno, std::string(name), DirNode());
  for (size_t i = 0; i < blobs.size(); ++i) {
    bool existed = false;
    Ino dir = tree_.AddChild(image_dir, blobs[i].digest, DirNode(), &existed);
    if (existed) continue;  // the same layer twice in one image
    size_t id;
    {
      std::lock_guard lock(mu_);
      id = layers_.size();
      Layer& l = layers_.emplace_back();
      l.blob = blobs[i];
      l.diff_id = img->config.diff_ids[i];
      l.source = repo.cached.get();
      l.dir = dir;
      layer_dirs_[dir] = id;
      ++counters_.layers;
    }
    Ino diff = tree_.AddDir(dir, "diff", 0755);
    tree_.SetPending(diff, static_cast<uint32_t>(id + 1));
    tree_.AddChild(dir, "info", FileNode(ContentKind::kDynamic, static_cast<uint32_t>(id), 0));
    tree_.AddChild(dir, "blob",
                   FileNode(ContentKind::kBlob, static_cast<uint32_t>(id), blobs[i].size));
    std::lock_guard lock(mu_);
    layers_[id].diff = diff;
  }
  std::lock_guard lock(mu_);
  ++counters_.images;
  LOG_INFO("store: " + *text + " -> " + img->manifest_digest + " (" + std::to_string(blobs.size()) +
           " layers)");
  return Status::Ok();
}

std::string LayerStore::InfoJson(size_t i) {
  std::string digest;
  std::optional<uint64_t> size;
  {
    std::lock_guard lock(mu_);
    digest = layers_[i].blob.digest;
    size = layers_[i].diff_size;
  }
  if (!size && index_store_.get) {
    // Known once the layer was indexed, by this store or another mount.
    if (std::optional<std::string> bytes = index_store_.get(digest)) {
      Result<LayerIndex> idx = LayerIndex::Deserialize(*bytes);
      if (idx.ok() && idx->blob_digest == digest) size = idx->uncompressed_size;
    }
  }
  std::lock_guard lock(mu_);
  Layer& l = layers_[i];
  if (size) l.diff_size = size;
  nlohmann::json j = {{"compressed-diff-digest", l.blob.digest},
                      {"compressed-size", l.blob.size},
                      {"diff-digest", l.diff_id},
                      {"compression", static_cast<int>(CompressionOfMediaType(l.blob.media_type))}};
  if (l.diff_size) j["diff-size"] = *l.diff_size;
  return j.dump();
}

Result<std::string> LayerStore::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  if (node.content_id == kStatusId) return StatusJson();
  {
    std::lock_guard lock(mu_);
    if (node.content_id >= layers_.size()) return Status::NotFound("no such layer");
  }
  // podman reads info when it looks the layer up during `podman pull`; the
  // index is then likely ready by the time `podman run` looks into diff/.
  if (index_on_pull_) QueueBuild(node.content_id);
  return InfoJson(node.content_id);
}

void LayerStore::QueueBuild(size_t i) {
  {
    std::lock_guard lock(mu_);
    Layer& l = layers_[i];
    if (stopping_ || l.queued || l.state != Layer::State::kPending) return;
    l.queued = true;
    build_queue_.push_back(i);
    if (builders_.size() < kBuilders) builders_.emplace_back([this] { BuilderLoop(); });
  }
  build_cv_.notify_one();
}

void LayerStore::BuilderLoop() {
  std::unique_lock lock(mu_);
  for (;;) {
    build_cv_.wait(lock, [&] { return stopping_ || !build_queue_.empty(); });
    if (stopping_) return;
    size_t i = build_queue_.front();
    build_queue_.pop_front();
    // Populate may have built it (or be building it) in the meantime.
    if (layers_[i].state != Layer::State::kPending) continue;
    layers_[i].state = Layer::State::kBuilding;
    lock.unlock();
    BuildLayer(i);
    lock.lock();
  }
}

Result<size_t> LayerStore::Read(const Node& node, uint64_t offset, std::span<uint8_t> out) {
  BlobDescriptor blob;
  BlobSource* source = nullptr;
  LayerReader* reader = nullptr;
  {
    std::lock_guard lock(mu_);
    if (node.content_id >= layers_.size()) return Status::NotFound("no such layer");
    const Layer& l = layers_[node.content_id];
    blob = l.blob;
    source = l.source;
    reader = l.reader.get();  // lives as long as the store once set
  }
  if (offset >= node.attr.size) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), node.attr.size - offset));
  switch (node.kind) {
    case ContentKind::kBlob:
      RETURN_IF_ERROR(source->ReadAt(blob, offset, out.first(n)));
      return n;
    case ContentKind::kLayerEntry: {
      if (!reader) return Status::NotFound("layer not indexed");
      ASSIGN_OR_RETURN(size_t got, reader->ReadAt(node.content_arg + offset, out.first(n)));
      if (got != n) return Status::Corrupt("layer stream ends inside a file");
      return n;
    }
    default:
      return Status::InvalidArgument("not a readable file");
  }
}

Status LayerStore::Populate(uint32_t id) {
  std::unique_lock lock(mu_);
  if (id == 0 || id > layers_.size()) return Status::NotFound("no such layer");
  size_t i = id - 1;
  // A failed build (the registry was unreachable, say) is tried again by the
  // next lookup rather than leaving diff/ broken for the life of the store.
  if (layers_[i].state == Layer::State::kPending || layers_[i].state == Layer::State::kFailed) {
    layers_[i].state = Layer::State::kBuilding;
    lock.unlock();
    BuildLayer(i);
    lock.lock();
  }
  cv_.wait(lock, [&] {
    return layers_[i].state == Layer::State::kReady || layers_[i].state == Layer::State::kFailed;
  });
  return layers_[i].state == Layer::State::kReady ? Status::Ok() : layers_[i].error;
}

void LayerStore::BuildLayer(size_t i) {
  BlobDescriptor blob;
  BlobSource* source;
  Ino diff;
  {
    std::lock_guard lock(mu_);
    blob = layers_[i].blob;
    source = layers_[i].source;
    diff = layers_[i].diff;
  }
  StoppableSource stoppable(source, &stopping_);
  bool from_store = false;
  Result<LayerIndex> idx =
      LoadOrBuildLayerIndex(index_store_, &stoppable, blob, IndexBuildOptions{}, &from_store);
  if (!idx.ok()) {
    LOG_ERROR("store: layer " + blob.digest + ": cannot index: " + idx.status().ToString());
    std::lock_guard lock(mu_);
    layers_[i].state = Layer::State::kFailed;
    layers_[i].error = idx.status();
    cv_.notify_all();
    return;
  }
  AddLayerEntries(tree_, diff, static_cast<uint32_t>(i), *idx, WhiteoutMode::kOverlay,
                  HardLinkMetadata::kApplyLinkHeader);
  uint64_t size = idx->uncompressed_size;
  // The tree holds the entries now; the reader needs only the restart points.
  auto reader = std::make_unique<LayerReader>(source, blob, IndexForReader(std::move(*idx)));
  tree_.ClearPending(diff);
  std::lock_guard lock(mu_);
  layers_[i].reader = std::move(reader);
  layers_[i].diff_size = size;
  layers_[i].state = Layer::State::kReady;
  ++counters_.indexed;
  cv_.notify_all();
}

int LayerStore::CreateErrno(Ino parent, std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = layer_dirs_.find(parent);
  if (it == layer_dirs_.end() || name != "use") return EROFS;
  ++layers_[it->second].uses;
  ++counters_.uses;
  return ENOENT;  // what a notification-aware store answers
}

int LayerStore::RmdirErrno(Ino parent, std::string_view name) {
  Result<Ino> dir = tree_.Lookup(parent, name);
  if (!dir.ok()) return ENOENT;
  std::lock_guard lock(mu_);
  auto it = layer_dirs_.find(*dir);
  if (it == layer_dirs_.end()) return EROFS;
  ++layers_[it->second].releases;
  ++counters_.releases;
  return ENOENT;
}

int ServeStore(MountOptions mo, DaemonReady* ready) {
  {
    auto fail = [&](const std::string& what, const Status& s) {
      return FailStartup(ready, what, s);
    };
    if (Status s = CheckMountpoint(mo.mountpoint); !s.ok()) {
      return fail("mountpoint " + mo.mountpoint, s);
    }
    Result<std::unique_ptr<ChunkCache>> cache = OpenCache(mo.common);
    if (!cache.ok()) return fail("cannot open the cache", cache.status());
    LayerStore store(cache->get(), mo.common, CacheIndexStore(cache->get()), mo.index_on_pull);
    FuseOptions fo;
    fo.mountpoint = mo.mountpoint;
    fo.fsname = "regfs-store";
    // Root's overlayfs and runc use the layers: other users, device nodes
    // and setuid bits must work through this mount.
    fo.mount_opts = {"allow_other", "dev", "suid"};
    fo.mount_opts.insert(fo.mount_opts.end(), mo.fuse_opts.begin(), mo.fuse_opts.end());
    fo.read_only = false;
    fo.debug = mo.fuse_debug;
    FuseDaemon daemon(&store.tree(), &store, fo);
    if (Status s = daemon.Mount(); !s.ok()) return fail("mount", s);
    LOG_INFO("layer store mounted on " + mo.mountpoint);
    if (ready) ready->Send("OK");
    Status s = daemon.Loop(true);
    if (!s.ok()) {
      LOG_ERROR("daemon: " + s.ToString());
      return 1;
    }
    return 0;
  }
}

}  // namespace regfs
