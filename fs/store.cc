#include "fs/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <malloc.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "fs/layer_tree.h"
#include "fs/session_holder.h"
#include "reader/base/base64.h"
#include "reader/base/log.h"
#include "reader/image/manifest.h"
#include "reader/image/reference.h"
#include "reader/layer/index_builder.h"

namespace regfs {
namespace {

constexpr uint32_t kStatusId = 0xffffffffu;  // content_id of .regfs/status.json
// Set in the content_id of the `info` of a layer looked up by TOC digest.
constexpr uint32_t kByTocBit = 0x80000000u;
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

class LayerStore::ReadAheadSource : public BlobSource {
 public:
  explicit ReadAheadSource(const LayerStore* store) : store_(store) {}
  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override {
    std::shared_ptr<Repo> repo = store_->RepoOf(blob.digest);
    if (!repo) return Status::NotFound("layer released");
    return repo->cached->ReadAt(blob, offset, out);
  }
  Status Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len) override {
    std::shared_ptr<Repo> repo = store_->RepoOf(blob.digest);
    if (!repo) return Status::NotFound("layer released");
    return repo->cached->Prefetch(blob, offset, len);
  }

 private:
  const LayerStore* store_;
};

LayerStore::LayerStore(ChunkCache* cache, CommonOptions common, IndexStore index_store,
                       bool index_on_pull)
    : cache_(cache),
      common_(std::move(common)),
      registries_conf_(LoadRegistriesConfFromFlags(common_)),
      index_store_(std::move(index_store)),
      index_on_pull_(index_on_pull),
      idle_timeout_(std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(std::max(0.0, common_.idle_timeout_s)))) {
  tree_.SetTimesAndOwner(kRootIno, 0, 0, 0);
  tree_.Update(kRootIno, [](Node& n) { n.attr.mode = S_IFDIR | 0755; });
  Ino meta = tree_.AddDir(kRootIno, ".regfs");
  status_file_ = tree_.AddChild(meta, "status.json", FileNode(ContentKind::kDynamic, kStatusId, 0));
  layers_dir_ = tree_.AddDir(kRootIno, std::string(kLayersDir), 0755);

  read_ahead_source_ = std::make_unique<ReadAheadSource>(this);
  ImageFsOptions defaults;
  prefetcher_ = std::make_unique<Prefetcher>(nullptr, defaults.readahead_threads,
                                             defaults.readahead_job, defaults.readahead_request,
                                             defaults.readahead_max);
  LayerSetOptions lo;
  lo.index_store = index_store_;
  // podman looks up an image's layers together, and each build mostly
  // waits for the registry.
  lo.threads = 4;
  lo.read_ahead = [p = prefetcher_.get(), src = read_ahead_source_.get()](
                      BlobSource*, const BlobDescriptor& b, uint64_t off, uint64_t len) {
    p->Enqueue(b, off, len, src);
  };
  lo.make_cached = [cache](BlobSource* upstream) -> std::unique_ptr<BlobSource> {
    return std::make_unique<CachedBlobSource>(cache, upstream);
  };
  layer_set_ = std::make_unique<LayerSet>(std::move(lo));
}

LayerStore::~LayerStore() {
  JoinReaper();
  // Layer handles go first, then the builds that may still hold them
  // (LayerSet joins its workers) and the read-ahead jobs, and only then the
  // repositories they read through.
  std::vector<std::shared_ptr<Repo>> repos;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, l] : live_) repos.push_back(std::move(l.repo));
    for (auto& [digest, r] : retired_) repos.push_back(std::move(r.repo));
    live_.clear();
    retired_.clear();
  }
  layer_set_.reset();
  prefetcher_.reset();
  repos.clear();
}

void LayerStore::AttachKernel(KernelRefs* refs,
                              std::function<bool(Ino, std::string_view)> invalidate) {
  refs_ = refs;
  invalidate_ = std::move(invalidate);
}

void LayerStore::StartReaper() {
  if (idle_timeout_ <= Clock::duration::zero() || !refs_ || reaper_.joinable()) return;
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void LayerStore::ReaperLoop() {
  // A few passes per idle period: a layer goes at most a quarter of the
  // timeout late.
  auto tick = std::clamp<Clock::duration>(idle_timeout_ / 4, std::chrono::milliseconds(50),
                                          std::chrono::seconds(30));
  std::unique_lock lock(reaper_mu_);
  while (!reaper_stop_) {
    reaper_cv_.wait_for(lock, tick, [this] { return reaper_stop_; });
    if (reaper_stop_) break;
    lock.unlock();
    ReleaseIdle(Clock::now());
    lock.lock();
  }
}

void LayerStore::Stop() {
  stopping_ = true;
  layer_set_->Cancel();
  {
    std::lock_guard lock(reaper_mu_);
    reaper_stop_ = true;
  }
  reaper_cv_.notify_all();
}

void LayerStore::JoinReaper() {
  Stop();
  std::call_once(reaper_joined_, [this] {
    if (reaper_.joinable()) reaper_.join();
  });
}

size_t LayerStore::ReleaseIdle(Clock::time_point now) {
  if (!refs_ || idle_timeout_ <= Clock::duration::zero()) return 0;
  std::vector<std::string> idle;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, l] : live_) {
      if (l.busy == 0 && now - l.last_used >= idle_timeout_) idle.push_back(l.digest);
    }
  }
  if (idle.empty()) return 0;
  std::vector<StoreLayer> gone;  // destroyed after the locks are let go
  // Idle layers the kernel still holds something of: (directory, digest).
  std::vector<std::pair<Ino, std::string>> held;
  {
    std::unique_lock handout(refs_->HandOutLock());
    std::lock_guard add(add_mu_);
    std::lock_guard lock(mu_);
    for (const std::string& digest : idle) {
      KnownLayer& k = known_[digest];
      auto it = live_.find(k.id);
      if (it == live_.end()) continue;
      StoreLayer& l = it->second;
      // Looked at meanwhile, or held by a build or a read in progress; or
      // live at a takeover (what the kernel holds of it is not known).
      if (l.busy != 0 || now - l.last_used < idle_timeout_ || l.layer.use_count() > 1 ||
          l.inherited) {
        continue;
      }
      // Whatever the kernel holds below pins the layer's directory (a
      // dentry pins its parent's): checking that first spares a walk of a
      // big tree, under this lock, at every pass while a container runs.
      bool pinned = refs_->Known(l.dir) || refs_->Known(l.diff);
      std::optional<size_t> freed;
      if (!pinned) {
        auto known = [this](Ino ino) { return refs_->Known(ino); };
        // Its TOC-digest directories (links into it) first: one the kernel
        // holds keeps the layer.
        for (auto n = l.toc_names.begin(); n != l.toc_names.end();) {
          Result<Ino> toc_dir = tree_.Lookup(layers_dir_, *n);
          if (toc_dir.ok() && !tree_.RemoveSubtree(layers_dir_, *n, known)) break;
          if (toc_dir.ok()) {
            layer_dirs_.erase(*toc_dir);
            // (Written after the removal, which may be refused: a successor
            // that missed it would keep a directory nobody holds.)
            Journal({{"op", "untoc"}, {"name", *n}});
          }
          n = l.toc_names.erase(n);
        }
        if (l.toc_names.empty()) freed = tree_.RemoveSubtree(layers_dir_, digest, known);
        if (freed) Journal({{"op", "release"}, {"layer", digest}});
      }
      if (!freed) {
        if (now - l.invalidated >= idle_timeout_) {
          l.invalidated = now;
          held.emplace_back(l.dir, digest);
          for (const std::string& n : l.toc_names) {
            if (Result<Ino> d = tree_.Lookup(layers_dir_, n); d.ok()) held.emplace_back(*d, n);
          }
        }
        continue;
      }
      gone.push_back(DropLayerLocked(k.id, digest));
    }
  }
  size_t released = gone.size();
  gone.clear();  // the Layers (index, reader, decoders) go here
  // Repositories no released layer's handle needs any more.
  std::vector<std::shared_ptr<Repo>> repos;
  {
    std::lock_guard lock(mu_);
    for (auto it = retired_.begin(); it != retired_.end();) {
      if (it->second.layer.expired()) {
        repos.push_back(std::move(it->second.repo));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  repos.clear();  // registry clients nothing uses go here
  {
    std::lock_guard lock(repos_mu_);
    for (auto it = repos_.begin(); it != repos_.end();) {
      it = it->second.expired() ? repos_.erase(it) : std::next(it);
    }
  }
  // The kernel keeps every dentry it was given for a day (the entry
  // timeout): ask it to drop those of idle layers, so that it forgets the
  // inodes nothing uses; a later pass releases the layer. Entries in use
  // (an open file, a cwd, an overlay lowerdir) stay, and so does the layer.
  // The layer's own name, and every name below it the kernel holds: once
  // the kernel dropped a name while something below it was in use, what it
  // caches below hangs off an unnamed dentry that no lookup of that name
  // reaches, only its children's names do. (Only this thread removes
  // layers, so the directories stay valid without the locks.)
  if (invalidate_) {
    for (const auto& [dir, digest] : held) {
      std::vector<std::pair<Ino, std::string>> names{{layers_dir_, digest}};
      tree_.ForEachBelow(dir, [&](Ino parent, std::string_view name, Ino ino) {
        if (refs_->Known(ino)) names.emplace_back(parent, std::string(name));
      });
      for (const auto& [parent, name] : names) invalidate_(parent, name);
    }
  }
  if (released > 0) {
    malloc_trim(0);  // give the freed heap back, so RSS shows it
    LOG_INFO("store: released " + std::to_string(released) + " idle layer(s)");
  }
  return released;
}

LayerStore::StoreLayer LayerStore::DropLayerLocked(uint32_t id, const std::string& digest) {
  auto it = live_.find(id);
  StoreLayer l = std::move(it->second);
  live_.erase(it);
  KnownLayer& k = known_[digest];
  layer_dirs_.erase(l.dir);
  retired_[digest] = Retired{l.layer, l.repo};
  k.id = kNoId;
  ++k.released;
  ++counters_.released;
  return l;
}

Status LayerStore::Replay(const std::vector<nlohmann::json>& records) {
  replaying_ = true;
  Status result = Status::Ok();
  std::vector<StoreLayer> dropped;  // destroyed after the locks are let go
  auto never_known = [](Ino) { return false; };
  for (size_t i = 0; i < records.size() && result.ok(); ++i) {
    const nlohmann::json& r = records[i];
    const std::string op = r.value("op", "");
    auto bad = [&](const std::string& why) {
      return Status::Corrupt("store journal record " + std::to_string(i) + " (" + op + "): " + why);
    };
    if (op == "image") {
      result = AddImageLink(r.value("name", ""));
    } else if (op == "layer") {
      Result<Reference> ref = ParseReference(r.value("ref", ""));
      if (!ref.ok()) {
        result = bad(ref.status().ToString());
        continue;
      }
      Result<std::shared_ptr<Repo>> repo = GetRepo(*ref);
      if (!repo.ok()) {
        result = bad("no client: " + repo.status().ToString());
        continue;
      }
      BlobDescriptor blob;
      blob.digest = r.value("digest", "");
      blob.media_type = r.value("mediaType", "");
      blob.size = r.value("size", uint64_t{0});
      Annotations annotations;
      if (r.contains("annotations") && r["annotations"].is_object()) {
        for (const auto& [key, value] : r["annotations"].items()) {
          if (value.is_string()) annotations[key] = value.get<std::string>();
        }
      }
      result = AddLayer(blob, r.value("diffID", ""), *repo, *ref, annotations);
    } else if (op == "toc") {
      const std::string digest = r.value("layer", "");
      std::lock_guard add(add_mu_);
      uint32_t id = kNoId;
      {
        std::lock_guard lock(mu_);
        if (auto k = known_.find(digest); k != known_.end()) id = k->second.id;
      }
      if (id == kNoId) {
        result = bad("layer " + digest + " is not live");
        continue;
      }
      AddTocDirLocked(r.value("name", ""), id, digest);
    } else if (op == "untoc") {
      const std::string name = r.value("name", "");
      std::lock_guard add(add_mu_);
      Result<Ino> dir = tree_.Lookup(layers_dir_, name);
      if (!dir.ok() || !tree_.RemoveSubtree(layers_dir_, name, never_known)) {
        result = bad("no directory " + name);
        continue;
      }
      std::lock_guard lock(mu_);
      layer_dirs_.erase(*dir);
      for (auto& [id, l] : live_) std::erase(l.toc_names, name);
    } else if (op == "release") {
      const std::string digest = r.value("layer", "");
      std::lock_guard add(add_mu_);
      if (!tree_.RemoveSubtree(layers_dir_, digest, never_known)) {
        result = bad("no directory " + digest);
        continue;
      }
      std::lock_guard lock(mu_);
      auto k = known_.find(digest);
      if (k == known_.end() || k->second.id == kNoId) {
        result = bad("layer " + digest + " is not live");
        continue;
      }
      dropped.push_back(DropLayerLocked(k->second.id, digest));
    } else {
      result = bad("unknown");
    }
  }
  replaying_ = false;
  dropped.clear();
  std::unordered_map<std::string, Retired> retired;  // nothing holds their handles
  {
    std::lock_guard lock(mu_);
    retired.swap(retired_);
    for (auto& [id, l] : live_) l.inherited = true;
  }
  return result;
}

StoreCounters LayerStore::Counters() const {
  std::lock_guard lock(mu_);
  StoreCounters c = counters_;
  c.indexed = 0;
  c.live = live_.size();
  for (const auto& [id, l] : live_) c.indexed += tree_.PendingId(l.diff) == 0;
  return c;
}

std::string LayerStore::StatusJson() const {
  size_t clients = 0;
  {
    std::lock_guard lock(repos_mu_);
    for (const auto& [key, w] : repos_) clients += !w.expired();
  }
  std::lock_guard lock(mu_);
  nlohmann::json j;
  j["registryClients"] = clients;
  j["pid"] = getpid();
  j["images"] = counters_.images;
  j["uses"] = counters_.uses;
  j["releases"] = counters_.releases;
  uint64_t indexed = 0;
  j["layers"] = nlohmann::json::array();
  for (const std::string& digest : known_order_) {
    const KnownLayer& k = known_.at(digest);
    auto it = live_.find(k.id);
    nlohmann::json lj = {{"digest", digest},
                         {"diffID", k.diff_id},
                         {"uses", k.uses},
                         {"releases", k.releases},
                         {"released", k.released},
                         {"live", it != live_.end()}};
    if (it == live_.end()) {
      lj["state"] = "released";
      lj["treeFilled"] = false;
      lj["queued"] = false;
    } else {
      const StoreLayer& l = it->second;
      LayerIndexStatus st = l.layer->Snapshot();
      bool filled = tree_.PendingId(l.diff) == 0;
      indexed += filled;
      lj["state"] = st.state;
      lj["treeFilled"] = filled;
      lj["queued"] = l.queued;
      if (!st.error.empty()) lj["error"] = st.error;
      if (!st.toc.empty()) lj["toc"] = st.toc;
      if (!st.toc_error.empty()) lj["tocError"] = st.toc_error;
      // Which endpoint (registries.conf mirror or the registry) served how
      // many of its bytes.
      if (l.repo) lj["servedBy"] = l.repo->client->ServedBy(l.layer->blob().digest);
    }
    j["layers"].push_back(lj);
  }
  j["indexedLayers"] = indexed;
  j["liveLayers"] = live_.size();
  j["releasedLayers"] = counters_.released;
  j["idleTimeout"] = std::chrono::duration<double>(idle_timeout_).count();
  j["liveLayerHandles"] = layer_set_->LiveCount();
  j["treeNodes"] = tree_.Count();
  j["treeBytes"] = tree_.MemoryBytes();
  if (refs_) j["kernelInodes"] = refs_->Size();
  if (journal_) j["journalBytes"] = journal_->Bytes();
  return j.dump(2) + "\n";
}

Status LayerStore::LookupMiss(Ino parent, std::string_view name, bool* cache_negative) {
  if (parent == kRootIno) return AddImage(name, cache_negative);
  if (parent != layers_dir_) return Status::NotFound("no such entry");
  // A TOC whose check failed may pass later (a registry blip), and a
  // released layer comes back: no negative entry.
  *cache_negative = false;
  bool is_layer;
  {
    std::lock_guard lock(mu_);
    is_layer = known_.count(std::string(name)) != 0;
  }
  return is_layer ? AddKnownLayer(name) : LookupToc(name);
}

Result<std::shared_ptr<LayerStore::Repo>> LayerStore::GetRepo(const Reference& ref) {
  std::string key = ref.registry + "/" + ref.repository;
  std::lock_guard lock(repos_mu_);
  if (std::shared_ptr<Repo> r = repos_[key].lock()) return r;
  if (!registries_conf_.ok()) return registries_conf_.status();
  ASSIGN_OR_RETURN(std::unique_ptr<MirrorSet> client,
                   MakeMirrorSet(common_, *registries_conf_, ref, &stopping_));
  KeepSpareChunks(client.get(), cache_);
  auto repo = std::make_shared<Repo>();
  repo->client = std::move(client);
  repo->cached = std::make_unique<CachedBlobSource>(cache_, repo->client.get(), DaemonCacheOptions());
  repos_[key] = repo;
  repo_refs_[key] = ref;
  return repo;
}

Status LayerStore::LookupToc(std::string_view name) {
  std::string digest;
  {
    std::lock_guard lock(mu_);
    for (const auto& [d, k] : known_) {
      if (!k.toc_digest.empty() && k.toc_digest == name) {
        digest = d;
        break;
      }
    }
  }
  if (digest.empty()) return Status::NotFound("no layer has this TOC");
  // A released layer is made again first (from the cache, no request).
  RETURN_IF_ERROR(AddKnownLayer(digest));
  std::shared_ptr<Layer> layer;
  uint32_t id = kNoId;
  {
    std::lock_guard lock(mu_);
    id = known_.at(digest).id;
    auto it = live_.find(id);
    if (it == live_.end()) return Status::NotFound("layer released meanwhile");
    it->second.busy++;  // not released while its TOC is checked
    it->second.last_used = Clock::now();
    layer = it->second.layer;
  }
  auto done = [&] {
    std::lock_guard lock(mu_);
    if (auto it = live_.find(id); it != live_.end()) --it->second.busy;
  };
  // Only a layer served from this TOC answers to it: when the TOC is
  // missing, corrupt or does not match, the lookup fails and podman pulls
  // the layer itself.
  if (Status s = layer->EnsureReadyFromToc(); !s.ok()) {
    done();
    LOG_WARN("store: layer " + layer->blob().digest + ": not offering it by TOC digest " +
             std::string(name) + ": " + s.ToString());
    return Status::NotFound("TOC not usable");
  }
  // A directory of its own (containers/storage creates `use` in it and
  // rmdirs it, which a symlink would answer ENOTDIR to), whose entries lead
  // to the layer's one directory: one tree, one reader.
  std::lock_guard add(add_mu_);
  done();
  if (tree_.Lookup(layers_dir_, name).ok()) return Status::Ok();
  {
    // (Not released meanwhile: it was busy until add_mu_ was taken.)
    std::lock_guard lock(mu_);
    if (live_.find(id) == live_.end()) return Status::NotFound("layer released meanwhile");
  }
  if (!Journal({{"op", "toc"}, {"name", name}, {"layer", digest}})) {
    return Status::IoError("store journal");
  }
  AddTocDirLocked(name, id, digest);
  return Status::Ok();
}

void LayerStore::AddTocDirLocked(std::string_view name, uint32_t id, const std::string& digest) {
  Ino dir = tree_.AddChild(layers_dir_, std::string(name), DirNode());
  // Its own info (it names the TOC digest, see InfoJson).
  tree_.AddChild(dir, "info", FileNode(ContentKind::kDynamic, static_cast<uint32_t>(id) | kByTocBit, 0));
  for (const char* f : {"diff", "blob"}) {
    Node link;
    link.attr.mode = S_IFLNK | 0777;
    link.link_target = "../" + digest + "/" + f;
    link.attr.size = link.link_target.size();
    tree_.AddChild(dir, f, std::move(link));
  }
  std::lock_guard lock(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return;
  it->second.toc_names.emplace_back(name);
  it->second.last_used = Clock::now();
  layer_dirs_[dir] = id;
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
  Result<std::shared_ptr<Repo>> repo = GetRepo(*ref);
  if (!repo.ok()) {
    LOG_WARN("store: " + *text + ": " + repo.status().ToString());
    return Status::NotFound("no client");
  }
  std::optional<Platform> platform;
  if (!common_.platform.empty()) {
    Result<Platform> p = ParsePlatform(common_.platform);
    if (!p.ok()) return Status::NotFound("bad --platform");
    platform = *p;
  }
  Result<ResolvedImage> img = (*repo)->client->Resolve(*ref, platform);
  if (img.ok()) {
    RememberResolution(cache_, *img, common_);
  } else if (img.status().code() == Code::kTransient) {
    // The registry is unreachable (a boot without network, say): an image
    // resolved before is served from the cache, as `mount` does; one never
    // seen stays ENOENT until the registry answers.
    Result<ResolvedImage> recalled = RecallResolution(cache_, *ref, common_);
    if (recalled.ok()) {
      LOG_WARN("store: registry unreachable (" + img.status().ToString() + "); serving " + *text +
               " as last resolved: " + recalled->manifest_digest);
      img = std::move(recalled);
    }
  }
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
    RETURN_IF_ERROR(
        AddLayer(blobs[i], img->config.diff_ids[i], *repo, *ref, img->manifest.LayerAnnotations(i)));
  }
  RETURN_IF_ERROR(AddImageLink(name));
  LOG_INFO("store: " + *text + " -> " + img->manifest_digest + " (" + std::to_string(blobs.size()) +
           " layers)");
  return Status::Ok();
}

Status LayerStore::AddKnownLayer(std::string_view digest) {
  BlobDescriptor blob;
  std::string diff_id, repo_key;
  Annotations annotations;
  {
    std::lock_guard lock(mu_);
    auto it = known_.find(std::string(digest));
    if (it == known_.end()) return Status::NotFound("no such layer");
    if (it->second.id != kNoId) return Status::Ok();  // live
    blob = it->second.blob;
    diff_id = it->second.diff_id;
    repo_key = it->second.repo_key;
    annotations = it->second.annotations;
  }
  std::optional<Reference> ref;
  {
    std::lock_guard lock(repos_mu_);
    auto it = repo_refs_.find(repo_key);
    if (it != repo_refs_.end()) ref = it->second;
  }
  if (!ref) return Status::NotFound("no repository for the layer");
  // Nothing goes over the network here: the client is made again (the
  // repository's was released with the layer), the index comes from the
  // cache when the layer is looked into.
  Result<std::shared_ptr<Repo>> repo = GetRepo(*ref);
  if (!repo.ok()) return Status::NotFound("no client: " + repo.status().ToString());
  return AddLayer(blob, diff_id, *repo, *ref, annotations);
}

bool LayerStore::Journal(const nlohmann::json& record) {
  if (!journal_ || replaying_) return true;
  if (journal_broken_) return false;
  Status s = journal_->Append(record);
  if (s.ok()) return true;
  LOG_ERROR("store: " + s.ToString() + "; the store adds nothing more (a successor could not " +
            "number it as this daemon does)");
  journal_broken_ = true;
  return false;
}

Status LayerStore::AddImageLink(std::string_view name) {
  std::lock_guard add(add_mu_);
  if (!Journal({{"op", "image"}, {"name", name}})) return Status::IoError("store journal");
  // Every image's directory is the one of all layers: a layer shared by
  // many images is one directory, one tree and one reader.
  Node link;
  link.attr.mode = S_IFLNK | 0777;
  link.link_target = std::string(kLayersDir);
  link.attr.size = link.link_target.size();
  tree_.AddChild(kRootIno, std::string(name), std::move(link));
  std::lock_guard lock(mu_);
  ++counters_.images;
  return Status::Ok();
}

Status LayerStore::AddLayer(const BlobDescriptor& blob, const std::string& diff_id,
                            const std::shared_ptr<Repo>& repo, const Reference& ref,
                            const Annotations& annotations) {
  const std::string repo_key = ref.registry + "/" + ref.repository;
  std::lock_guard add(add_mu_);
  uint32_t id;
  {
    std::lock_guard lock(mu_);
    if (auto kit = known_.find(blob.digest); kit != known_.end() && kit->second.id != kNoId) {
      live_[kit->second.id].last_used = Clock::now();  // another image has it
      return Status::Ok();
    }
  }
  // Only add_mu_'s holders change what is live: the layer is made below.
  nlohmann::json ann = nlohmann::json::object();
  for (const auto& [key, value] : annotations) ann[key] = value;
  if (!Journal({{"op", "layer"},
                {"digest", blob.digest},
                {"mediaType", blob.media_type},
                {"size", blob.size},
                {"diffID", diff_id},
                {"ref", ref.Normalized()},
                {"annotations", ann}})) {
    return Status::IoError("store journal");
  }
  {
    std::lock_guard lock(mu_);
    auto [kit, inserted] = known_.try_emplace(blob.digest);
    KnownLayer& k = kit->second;
    if (inserted) {
      k.blob = blob;
      k.diff_id = diff_id;
      k.repo_key = repo_key;
      k.annotations = annotations;
      known_order_.push_back(blob.digest);
      ++counters_.layers;
    }
    id = next_id_++;
    if (next_id_ == kNoId || next_id_ == kStatusId) next_id_ = 0;  // after 4 billion releases
    k.id = id;
    StoreLayer& l = live_[id];
    l.digest = blob.digest;
    l.last_used = Clock::now();
    // A handle released a moment ago and still held: the same Layer, and
    // the repository it reads through.
    if (auto r = retired_.find(blob.digest); r != retired_.end()) {
      l.layer = r->second.layer.lock();
      if (l.layer) l.repo = r->second.repo;
      retired_.erase(r);
    }
    if (!l.layer) {
      l.layer = layer_set_->Get(blob, diff_id, repo->cached.get(), k.annotations);
      l.repo = repo;
    }
    if (l.layer->toc()) k.toc_digest = l.layer->toc()->toc_digest;
  }
  // Nobody sees the directory's children before the lookup that made it
  // answers: the kernel sends one lookup at a time for a name in a directory.
  Ino dir = tree_.AddChild(layers_dir_, blob.digest, DirNode());
  Ino diff = tree_.AddDir(dir, "diff", 0755);
  tree_.SetPending(diff, id + 1);
  tree_.AddChild(dir, "info", FileNode(ContentKind::kDynamic, id, 0));
  tree_.AddChild(dir, "blob", FileNode(ContentKind::kBlob, id, blob.size));
  std::lock_guard lock(mu_);
  StoreLayer& l = live_[id];
  l.dir = dir;
  l.diff = diff;
  layer_dirs_[dir] = id;
  return Status::Ok();
}

std::shared_ptr<Layer> LayerStore::LayerAt(uint32_t id) {
  std::lock_guard lock(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return nullptr;
  it->second.last_used = Clock::now();
  return it->second.layer;
}

std::shared_ptr<LayerStore::Repo> LayerStore::RepoOf(const std::string& digest) const {
  std::lock_guard lock(mu_);
  auto k = known_.find(digest);
  if (k == known_.end()) return nullptr;
  auto it = live_.find(k->second.id);
  return it == live_.end() ? nullptr : it->second.repo;
}

std::string LayerStore::InfoJson(const std::shared_ptr<Layer>& l, bool by_toc) {
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
  if (by_toc && l->toc()) {
    // containers/image (5.31+) looks a TOC layer up by its TOC digest and
    // refuses the layer unless info names that digest; it keeps the
    // config's DiffID to check against later (push, save), and takes -1 for
    // a size not known without a pass over the blob. (Looked up by its
    // compressed digest, podman 4.3.1 refuses -1 when it runs a container:
    // that info leaves the size out until it is known.)
    j["toc-digest"] = l->toc()->toc_digest;
    if (!size) j["diff-size"] = -1;
    if (!l->diff_id().empty()) j["flags"] = {{"expected-layer-diffid", l->diff_id()}};
  }
  if (size) j["diff-size"] = *size;
  return j.dump();
}

Result<std::string> LayerStore::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  if (node.content_id == kStatusId) return StatusJson();
  const bool by_toc = node.content_id & kByTocBit;
  const uint32_t layer_id = node.content_id & ~kByTocBit;
  std::shared_ptr<Layer> l = LayerAt(layer_id);
  if (!l) return Status::IoError("no such layer");
  // podman reads info when it looks the layer up during `podman pull`; the
  // index is then likely ready by the time `podman run` looks into diff/.
  if (index_on_pull_) {
    {
      std::lock_guard lock(mu_);
      auto it = live_.find(layer_id);
      if (it == live_.end() || it->second.queued) return InfoJson(l, by_toc);
      it->second.queued = true;
    }
    uint32_t id = layer_id + 1;
    layer_set_->BuildInBackground(l, [this, id] { (void)Populate(id); });
  }
  return InfoJson(l, by_toc);
}

Result<size_t> LayerStore::Read(const Node& node, uint64_t offset, std::span<uint8_t> out) {
  std::shared_ptr<Layer> l = LayerAt(node.content_id);
  if (!l) return Status::IoError("no such layer");
  if (offset >= node.attr.size) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), node.attr.size - offset));
  switch (node.kind) {
    case ContentKind::kBlob:
      prefetcher_->OnRead(l->blob(), offset, n, read_ahead_source_.get());
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
  if (id == 0) return Status::NotFound("no such layer");
  std::shared_ptr<Layer> l;
  Ino diff;
  {
    std::lock_guard lock(mu_);
    auto it = live_.find(id - 1);
    if (it == live_.end()) return Status::NotFound("no such layer");
    // Not released while its tree is being filled.
    ++it->second.busy;
    it->second.last_used = Clock::now();
    l = it->second.layer;
    diff = it->second.diff;
  }
  // A failed build (the registry was unreachable, say) is tried again by a
  // later lookup (after a backoff) rather than leaving diff/ broken for the
  // life of the store.
  Status s = l->FillTree(tree_, diff, id - 1, WhiteoutMode::kOverlay,
                         HardLinkMetadata::kApplyLinkHeader);
  std::lock_guard lock(mu_);
  auto it = live_.find(id - 1);
  if (it != live_.end()) {
    --it->second.busy;
    it->second.last_used = Clock::now();
  }
  return s;
}

int LayerStore::CreateErrno(Ino parent, std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = layer_dirs_.find(parent);
  if (it == layer_dirs_.end() || name != "use") return EROFS;
  StoreLayer& l = live_[it->second];
  l.last_used = Clock::now();
  ++known_[l.digest].uses;
  ++counters_.uses;
  return ENOENT;  // what a notification-aware store answers
}

int LayerStore::RmdirErrno(Ino parent, std::string_view name) {
  Result<Ino> dir = tree_.Lookup(parent, name);
  if (!dir.ok()) return ENOENT;
  std::lock_guard lock(mu_);
  auto it = layer_dirs_.find(*dir);
  if (it == layer_dirs_.end()) return EROFS;
  StoreLayer& l = live_[it->second];
  ++known_[l.digest].releases;
  ++counters_.releases;
  return ENOENT;
}

int ServeStore(MountOptions mo, DaemonReady* ready) {
  {
    auto fail = [&](const std::string& what, const Status& s) {
      return FailStartup(ready, what, s);
    };
    // Under a holder (fs/session_holder.h): a successor takes over the
    // session of a dead daemon, with the tree its journal describes.
    HolderLink* holder = CurrentHolderLink();
    std::string what;
    Result<std::optional<HeldSession>> w = WithdrawSessionOrCheckMountpoint(mo.mountpoint, &what);
    if (!w.ok()) return fail(what, w.status());
    std::optional<HeldSession> held = std::move(*w);
    Result<std::unique_ptr<ChunkCache>> cache = OpenCache(mo.common);
    if (!cache.ok()) return fail("cannot open the cache", cache.status());
    KernelRefs refs;  // outlives the store's reaper and the daemon
    LayerStore store(cache->get(), mo.common, CacheIndexStore(cache->get()), mo.index_on_pull);
    std::unique_ptr<StoreJournal> journal;
    if (held) {
      if (!held->journal.valid()) return fail("takeover", Status::IoError("no store journal"));
      journal = std::make_unique<StoreJournal>(std::move(held->journal));
      Result<std::vector<nlohmann::json>> records = journal->ReadAll();
      if (!records.ok()) return fail("takeover", records.status());
      if (Status s = store.Replay(*records); !s.ok()) return fail("takeover", s);
      LOG_INFO("store: replayed " + std::to_string(records->size()) + " journal records");
    } else if (holder) {
      Result<std::unique_ptr<StoreJournal>> j = StoreJournal::Create();
      // Without a journal the store serves, but its mount dies with it.
      if (j.ok()) journal = std::move(*j);
      if (!j.ok()) LOG_WARN("the store will not survive this daemon: " + j.status().ToString());
    }
    store.SetJournal(journal.get());
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
    fo.refs = &refs;
    if (held) {
      fo.takeover_fd = held->fd.Release();
      fo.takeover_init = held->init;
    }
    // A first daemon, or a successor of one that died before it answered
    // INIT (it reads INIT itself): the holder gets the INIT request once it
    // is answered.
    if (holder && journal && (!held || held->init.empty())) {
      fo.on_init = [holder, jfd = journal->fd()](int fd, const std::string& init) {
        Status s = holder->Deposit(fd, init, "store", jfd);
        if (!s.ok()) LOG_WARN("the store will not survive this daemon: " + s.ToString());
        if (s.ok()) LOG_INFO("the holder keeps the session");
      };
    }
    FuseDaemon daemon(&store.tree(), &store, fo);
    if (Status s = daemon.Mount(); !s.ok()) return fail("mount", s);
    if (holder && journal && !held) {
      // From the mount on, before INIT is even read: a daemon killed before
      // it answered INIT leaves the kernel's INIT for its successor.
      Status s = holder->Deposit(daemon.SessionFd(), "", "store", journal->fd());
      if (!s.ok()) LOG_WARN("the store will not survive this daemon: " + s.ToString());
    }
    if (holder) holder->MountIsLive();
    store.AttachKernel(&refs, [&daemon](Ino parent, std::string_view name) {
      return daemon.InvalidateEntry(parent, name);
    });
    store.StartReaper();
    LOG_INFO(std::string(held ? "took over the layer store on " : "layer store mounted on ") +
             mo.mountpoint);
    if (ready) ready->Send("OK");
    MaybeDieBeforeLoopForTest(held.has_value());
    Status s = daemon.Loop(true);
    // The reaper calls the daemon: it ends first. Only now, unmounted: a
    // call it is in may wait for the kernel, which waits for requests that
    // the loop no longer serves until the connection is gone.
    store.JoinReaper();
    if (!s.ok()) {
      LOG_ERROR("daemon: " + s.ToString());
      return 1;
    }
    return 0;
  }
}

}  // namespace regfs
