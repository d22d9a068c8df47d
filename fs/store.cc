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
constexpr std::string_view kLayersDir = ".layers";

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
  layers_dir_ = tree_.AddDir(kRootIno, std::string(kLayersDir), 0755);

  ImageFsOptions defaults;
  prefetcher_ = std::make_unique<Prefetcher>(nullptr, defaults.readahead_threads,
                                             defaults.readahead_job, defaults.readahead_request,
                                             defaults.readahead_max);
  LayerSetOptions lo;
  lo.index_store = index_store_;
  // podman looks up an image's layers together, and each build mostly
  // waits for the registry.
  lo.threads = 4;
  lo.read_ahead = [p = prefetcher_.get()](BlobSource* src, const BlobDescriptor& b,
                                          uint64_t off, uint64_t len) {
    p->Enqueue(b, off, len, src);
  };
  lo.make_cached = [cache](BlobSource* upstream) -> std::unique_ptr<BlobSource> {
    return std::make_unique<CachedBlobSource>(cache, upstream);
  };
  layer_set_ = std::make_unique<LayerSet>(std::move(lo));
}

LayerStore::~LayerStore() {
  Stop();
  {
    std::lock_guard lock(mu_);
    layers_.clear();
  }
  layer_set_.reset();
  prefetcher_.reset();
}

void LayerStore::Stop() {
  stopping_ = true;
  layer_set_->Cancel();
}

StoreCounters LayerStore::Counters() const {
  std::lock_guard lock(mu_);
  StoreCounters c = counters_;
  c.indexed = 0;
  for (const StoreLayer& l : layers_) c.indexed += tree_.PendingId(l.diff) == 0;
  return c;
}

std::string LayerStore::StatusJson() const {
  std::lock_guard lock(mu_);
  nlohmann::json j;
  j["pid"] = getpid();
  j["images"] = counters_.images;
  j["uses"] = counters_.uses;
  j["releases"] = counters_.releases;
  uint64_t indexed = 0;
  j["layers"] = nlohmann::json::array();
  for (const StoreLayer& l : layers_) {
    LayerIndexStatus st = l.layer->Snapshot();
    bool filled = tree_.PendingId(l.diff) == 0;
    indexed += filled;
    nlohmann::json lj = {{"digest", l.layer->blob().digest},
                         {"diffID", l.layer->diff_id()},
                         {"state", st.state},
                         {"treeFilled", filled},
                         {"queued", l.queued},
                         {"uses", l.uses},
                         {"releases", l.releases}};
    if (!st.error.empty()) lj["error"] = st.error;
    if (!st.toc.empty()) lj["toc"] = st.toc;
    if (!st.toc_error.empty()) lj["tocError"] = st.toc_error;
    j["layers"].push_back(lj);
  }
  j["indexedLayers"] = indexed;
  j["liveLayerHandles"] = layer_set_->LiveCount();
  j["treeNodes"] = tree_.Count();
  j["treeBytes"] = tree_.MemoryBytes();
  return j.dump(2) + "\n";
}

Status LayerStore::LookupMiss(Ino parent, std::string_view name, bool* cache_negative) {
  if (parent == layers_dir_) {
    // A TOC whose check failed may pass later (a registry blip): no
    // negative entry.
    *cache_negative = false;
    return LookupToc(name);
  }
  if (parent != kRootIno) return Status::NotFound("no such entry");
  return AddImage(name, cache_negative);
}

Status LayerStore::LookupToc(std::string_view name) {
  std::shared_ptr<Layer> layer;
  size_t id = 0;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < layers_.size(); ++i) {
      const std::shared_ptr<Layer>& l = layers_[i].layer;
      if (l->toc() && l->toc()->toc_digest == name) {
        layer = l;
        id = i;
        break;
      }
    }
  }
  if (!layer) return Status::NotFound("no layer has this TOC");
  // Only a layer served from this TOC answers to it: when the TOC is
  // missing, corrupt or does not match, the lookup fails and podman pulls
  // the layer itself.
  if (Status s = layer->EnsureReadyFromToc(); !s.ok()) {
    LOG_WARN("store: layer " + layer->blob().digest + ": not offering it by TOC digest " +
             std::string(name) + ": " + s.ToString());
    return Status::NotFound("TOC not usable");
  }
  // A directory of its own (containers/storage creates `use` in it and
  // rmdirs it, which a symlink would answer ENOTDIR to), whose entries lead
  // to the layer's one directory: one tree, one reader.
  std::lock_guard resolve_lock(resolve_mu_);
  if (tree_.Lookup(layers_dir_, name).ok()) return Status::Ok();
  Ino dir = tree_.AddChild(layers_dir_, std::string(name), DirNode());
  for (const char* f : {"diff", "info", "blob"}) {
    Node link;
    link.attr.mode = S_IFLNK | 0777;
    link.link_target = "../" + layer->blob().digest + "/" + f;
    link.attr.size = link.link_target.size();
    tree_.AddChild(dir, f, std::move(link));
  }
  std::lock_guard lock(mu_);
  layer_dirs_[dir] = id;
  return Status::Ok();
}

Status LayerStore::AddImage(std::string_view name, bool* cache_negative) {
  std::lock_guard resolve_lock(resolve_mu_);
  if (tree_.Lookup(kRootIno, name).ok()) return Status::Ok();  // another thread added it
  std::optional<std::string> text = Base64DecodeStrict(name);
  if (!text) return Status::NotFound("not base64");
  Result<Reference> ref = ParseReference(*text);
  if (!ref.ok()) return Status::NotFound("not a reference");
  if (!RegistryAllowed(common_, ref->registry)) {
    LOG_WARN("store: " + *text + ": registry " + ref->registry + " is not allowed (--allow-registry)");
    return Status::NotFound("registry not allowed");
  }
  std::string repo_key = ref->registry + "/" + ref->repository;
  Repo& repo = repos_[repo_key];
  if (!repo.client) {
    Result<RegistryClientOptions> co = MakeClientOptions(common_, ref->registry);
    if (co.ok()) co->cancel = &stopping_;
    Result<std::unique_ptr<RegistryClient>> client =
        co.ok() ? RegistryClient::Create(*ref, *co) : Result<std::unique_ptr<RegistryClient>>(co.status());
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
  for (size_t i = 0; i < blobs.size(); ++i) {
    AddLayer(blobs[i], img->config.diff_ids[i], repo.cached.get(),
             img->manifest.LayerAnnotations(i));
  }
  // Every image's directory is the one of all layers: a layer shared by
  // many images is one directory, one tree and one reader.
  Node link;
  link.attr.mode = S_IFLNK | 0777;
  link.link_target = std::string(kLayersDir);
  link.attr.size = link.link_target.size();
  tree_.AddChild(kRootIno, std::string(name), std::move(link));
  std::lock_guard lock(mu_);
  ++counters_.images;
  LOG_INFO("store: " + *text + " -> " + img->manifest_digest + " (" + std::to_string(blobs.size()) +
           " layers)");
  return Status::Ok();
}

void LayerStore::AddLayer(const BlobDescriptor& blob, const std::string& diff_id,
                          BlobSource* source, const Annotations& annotations) {
  size_t id;
  {
    std::lock_guard lock(mu_);
    if (by_digest_.count(blob.digest)) return;
    id = layers_.size();
    StoreLayer& l = layers_.emplace_back();
    l.layer = layer_set_->Get(blob, diff_id, source, annotations);
    by_digest_[blob.digest] = id;
    ++counters_.layers;
  }
  // Nobody sees the directory's children before the lookup that made it
  // answers: the kernel sends one lookup at a time for a name in a directory.
  Ino dir = tree_.AddChild(layers_dir_, blob.digest, DirNode());
  Ino diff = tree_.AddDir(dir, "diff", 0755);
  tree_.SetPending(diff, static_cast<uint32_t>(id + 1));
  tree_.AddChild(dir, "info", FileNode(ContentKind::kDynamic, static_cast<uint32_t>(id), 0));
  tree_.AddChild(dir, "blob", FileNode(ContentKind::kBlob, static_cast<uint32_t>(id), blob.size));
  std::lock_guard lock(mu_);
  layers_[id].dir = dir;
  layers_[id].diff = diff;
  layer_dirs_[dir] = id;
}

std::shared_ptr<Layer> LayerStore::LayerAt(size_t i) const {
  std::lock_guard lock(mu_);
  return i < layers_.size() ? layers_[i].layer : nullptr;
}

std::string LayerStore::InfoJson(size_t i) {
  std::shared_ptr<Layer> l = LayerAt(i);
  std::optional<uint64_t> size = l->UncompressedSize();
  if (!size && index_store_.get) {
    // Known once the layer was indexed, by this store or another mount.
    if (std::optional<std::string> bytes = index_store_.get(l->blob().digest)) {
      Result<LayerIndex> idx = LayerIndex::Deserialize(*bytes);
      // (A TOC index's size is its content stream's, not the tar's.)
      if (idx.ok() && idx->blob_digest == l->blob().digest && idx->toc_format == TocFormat::kNone) {
        size = idx->uncompressed_size;
      }
    }
  }
  nlohmann::json j = {
      {"compressed-diff-digest", l->blob().digest},
      {"compressed-size", l->blob().size},
      {"diff-digest", l->diff_id()},
      {"compression", static_cast<int>(CompressionOfMediaType(l->blob().media_type))}};
  if (l->toc()) {
    // containers/image (5.31+) looks a TOC layer up by its TOC digest and
    // refuses the layer unless info names that digest; it keeps the
    // config's DiffID to check against later (push, save).
    j["toc-digest"] = l->toc()->toc_digest;
    if (!size) j["diff-size"] = -1;  // unknown without a pass over the blob
    if (!l->diff_id().empty()) j["flags"] = {{"expected-layer-diffid", l->diff_id()}};
  }
  if (size) j["diff-size"] = *size;
  return j.dump();
}

Result<std::string> LayerStore::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  if (node.content_id == kStatusId) return StatusJson();
  std::shared_ptr<Layer> l = LayerAt(node.content_id);
  if (!l) return Status::IoError("no such layer");
  // podman reads info when it looks the layer up during `podman pull`; the
  // index is then likely ready by the time `podman run` looks into diff/.
  if (index_on_pull_) {
    {
      std::lock_guard lock(mu_);
      if (layers_[node.content_id].queued) return InfoJson(node.content_id);
      layers_[node.content_id].queued = true;
    }
    uint32_t id = node.content_id + 1;
    layer_set_->BuildInBackground(l, [this, id] { (void)Populate(id); });
  }
  return InfoJson(node.content_id);
}

Result<size_t> LayerStore::Read(const Node& node, uint64_t offset, std::span<uint8_t> out) {
  std::shared_ptr<Layer> l = LayerAt(node.content_id);
  if (!l) return Status::IoError("no such layer");
  if (offset >= node.attr.size) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), node.attr.size - offset));
  switch (node.kind) {
    case ContentKind::kBlob:
      prefetcher_->OnRead(l->blob(), offset, n, l->source());
      RETURN_IF_ERROR(l->source()->ReadAt(l->blob(), offset, out.first(n)));
      return n;
    case ContentKind::kLayerEntry: {
      ASSIGN_OR_RETURN(size_t got, l->ReadUncompressed(node.content_arg + offset, out.first(n)));
      if (got != n) return Status::Corrupt("layer stream ends inside a file");
      return n;
    }
    default:
      return Status::InvalidArgument("not a readable file");
  }
}

Status LayerStore::Populate(uint32_t id) {
  std::shared_ptr<Layer> l = LayerAt(id - 1);
  Ino diff;
  {
    std::lock_guard lock(mu_);
    if (id == 0 || id > layers_.size()) return Status::NotFound("no such layer");
    diff = layers_[id - 1].diff;
  }
  // A failed build (the registry was unreachable, say) is tried again by a
  // later lookup (after a backoff) rather than leaving diff/ broken for the
  // life of the store.
  return l->FillTree(tree_, diff, id - 1, WhiteoutMode::kOverlay,
                     HardLinkMetadata::kApplyLinkHeader);
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
    // The store resolves any reference with this machine's credentials, so
    // only root and this daemon's user may use it. overlayfs looks up and
    // opens lower layers with its mounter's credentials and checks setuid
    // bits and device nodes on its own mount, and runc runs as root: so the
    // root is 0700 (default_permissions: the kernel keeps everyone else out
    // of everything, including what root already resolved), lookups that
    // would resolve or index something are refused to other uids in the
    // daemon too, and the mount is nosuid,nodev, placed after the user's -o
    // so that they win. allow_other stays so that root can use a store run
    // by another user (containers do not need it: overlayfs reaches the
    // layers with its mounter's credentials, and page faults are not
    // checked against it).
    store.tree().SetTimesAndOwner(kRootIno, 0, geteuid(), getegid());
    store.tree().Update(kRootIno, [](Node& n) { n.attr.mode = S_IFDIR | 0700; });
    fo.trusted_uids = {0, geteuid()};
    fo.mount_opts = {"allow_other"};
    fo.mount_opts.insert(fo.mount_opts.end(), mo.fuse_opts.begin(), mo.fuse_opts.end());
    fo.mount_opts.insert(fo.mount_opts.end(), {"nosuid", "nodev"});
    fo.read_only = false;
    fo.debug = mo.fuse_debug;
    fo.on_session_end = [&store] { store.Stop(); };
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
