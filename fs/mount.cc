#include "fs/mount.h"

#include <csignal>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/fuse_daemon.h"
#include "fs/image_fs.h"
#include "fs/session_holder.h"
#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/image/reference.h"

namespace regfs {
namespace {

// The layer index format tag in the cache; bump with LayerIndex::kFormatVersion.
const std::string kIndexFormat = "tar-index/v" + std::to_string(LayerIndex::kFormatVersion);

std::string StatusJson(const ResolvedImage& img, CachedBlobSource* cached,
                       MirrorSet* client, const ImageFs* fs,
                       std::chrono::steady_clock::time_point start) {
  nlohmann::json j;
  j["image"] = img.ref.Normalized();
  j["manifestDigest"] = img.manifest_digest;
  j["manifestEndpoint"] = client->ManifestEndpoint();
  j["platform"] = img.platform.ToString();
  j["pid"] = getpid();
  j["uptimeSeconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                           .count();
  uint64_t hits = 0, misses = 0;
  std::vector<LayerIndexStatus> idx;
  if (fs) idx = fs->LayerStatuses();
  j["layers"] = nlohmann::json::array();
  for (size_t i = 0; i < img.manifest.layers.size(); ++i) {
    const BlobDescriptor& l = img.manifest.layers[i];
    nlohmann::json lj = {{"index", i}, {"digest", l.digest}, {"size", l.size},
                         {"mediaType", l.media_type}};
    if (cached) {
      BlobCounters c = cached->Counters(l.digest);
      lj["fetchedBytes"] = c.upstream_bytes;
      lj["requests"] = c.upstream_requests;
      lj["cacheHits"] = c.hits;
      lj["cacheMisses"] = c.misses;
      // What the digest checks cost: bytes fed to SHA-256, and those read
      // back from the cache only to be hashed.
      lj["hashedBytes"] = c.hashed_bytes;
      lj["rereadBytes"] = c.reread_bytes;
      lj["percentCached"] = cached->PercentCached(l);
      auto state = cached->cache()->GetBlobState(l.digest);
      lj["digestVerified"] = state.ok() && state->verified;
      hits += c.hits;
      misses += c.misses;
    }
    // Which endpoint (registries.conf mirror or the primary) delivered how
    // many of the layer's bytes.
    lj["servedBy"] = client->ServedBy(l.digest);
    if (i < idx.size()) {
      nlohmann::json ij = {{"state", idx[i].state},
                           {"percent", idx[i].percent},
                           {"fromCache", idx[i].from_cache},
                           {"entries", idx[i].entries},
                           {"skippedEntries", idx[i].skipped}};
      if (idx[i].sequential_only) {
        ij["note"] = "single-frame zstd: reads decompress from the start of the layer";
      }
      if (idx[i].raw_cached) {
        ij["note"] = "single-frame zstd: the decompressed tar is kept in the cache (by diff_id)";
      }
      if (!idx[i].error.empty()) ij["error"] = idx[i].error;
      if (!idx[i].toc.empty()) ij["toc"] = idx[i].toc;
      if (!idx[i].toc_error.empty()) ij["tocError"] = idx[i].toc_error;
      lj["index"] = ij;
    }
    j["layers"].push_back(lj);
  }
  if (fs) {
    MergeStats ms = fs->RootfsStats();
    j["treeBytes"] = fs->TreeMemoryBytes();
    j["treeNodes"] = fs->TreeNodeCount();
    j["rootfs"] = {{"state", fs->RootfsState()},
                   {"entries", ms.entries},
                   {"whiteoutsApplied", ms.whiteouts},
                   {"opaqueDirs", ms.opaque}};
  }
  RegistryCounters rc = client->Counters();
  j["totals"] = {{"httpRequests", rc.requests}, {"httpBytes", rc.bytes},
                 {"retries", rc.retries},       {"resumes", rc.resumes},
                 {"redirects", rc.redirects},   {"tokenFetches", rc.token_fetches},
                 {"cacheHits", hits},           {"cacheMisses", misses}};
  j["endpoints"] = EndpointsJson(*client);
  return j.dump(2) + "\n";
}

}  // namespace

nlohmann::json EndpointsJson(const MirrorSet& set) {
  nlohmann::json a = nlohmann::json::array();
  for (const EndpointReport& e : set.Endpoints()) {
    nlohmann::json j = {{"location", e.location},
                        {"registry", e.registry},
                        {"mirror", e.mirror},
                        {"servedManifest", e.preferred},
                        {"coolingDown", e.cooling_down},
                        {"failures", e.failures},
                        {"fillingAnswers", e.filling_answers},
                        {"fillsWaited", e.fills_waited},
                        {"httpRequests", e.counters.requests},
                        {"httpBytes", e.counters.bytes}};
    if (!e.last_error.empty()) j["lastError"] = e.last_error;
    a.push_back(std::move(j));
  }
  return a;
}

namespace {

int64_t ParseCreated(const std::string& config_bytes) {
  auto j = nlohmann::json::parse(config_bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("created") ||
      !j["created"].is_string()) {
    return 0;
  }
  std::tm tm{};
  const std::string s = j["created"].get<std::string>();
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

// The cache remembers what a reference resolved to (manifest, index and
// config bytes by digest, and the reference -> digests mapping), so that a
// mount of an image seen before works while the registry is unreachable.
constexpr std::string_view kResolutionType = "application/vnd.regfs.resolution.v1+json";

std::string ResolutionKey(const Reference& ref, const CommonOptions& o) {
  return "ref:" + ref.Normalized() + "|" + (o.platform.empty() ? "host" : o.platform);
}

// What a resolution is remembered as: the digests and the platform.
std::string ResolutionJson(const ResolvedImage& img) {
  nlohmann::json j = {{"manifest", img.manifest_digest},
                      {"index", img.index_bytes ? img.index_digest : ""},
                      {"platform", img.platform.ToString()}};
  return j.dump();
}

}  // namespace

void RememberResolution(ChunkCache* db, const ResolvedImage& img, const CommonOptions& o) {
  Status s = db->PutManifest(img.manifest_digest, img.manifest_media_type, img.manifest_bytes);
  if (s.ok()) {
    s = db->PutManifest(img.manifest.config.digest, img.manifest.config.media_type,
                        img.config_bytes);
  }
  if (s.ok() && img.index_bytes) {
    s = db->PutManifest(img.index_digest, img.index_media_type, *img.index_bytes);
  }
  if (s.ok()) s = db->PutManifest(ResolutionKey(img.ref, o), kResolutionType, ResolutionJson(img));
  if (!s.ok()) LOG_WARN("cannot remember the resolution in the cache: " + s.ToString());
}

namespace {

// The image a ResolutionJson names, from the cache.
Result<ResolvedImage> RecallResolutionJson(ChunkCache* db, const Reference& ref,
                                           const std::string& json) {
  auto get = [&](const std::string& key) -> Result<StoredManifest> {
    ASSIGN_OR_RETURN(std::optional<StoredManifest> m, db->GetManifest(key));
    if (!m) return Status::NotFound("not in the cache: " + key);
    return *m;
  };
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Corrupt("bad cached resolution");
  ResolvedImage img;
  img.ref = ref;
  img.manifest_digest = j.value("manifest", "");
  ASSIGN_OR_RETURN(StoredManifest man, get(img.manifest_digest));
  img.manifest_bytes = man.bytes;
  img.manifest_media_type = man.media_type;
  ASSIGN_OR_RETURN(img.manifest, ParseManifest(man.bytes, man.media_type));
  ASSIGN_OR_RETURN(StoredManifest cfg, get(img.manifest.config.digest));
  img.config_bytes = cfg.bytes;
  ASSIGN_OR_RETURN(img.config, ParseConfig(cfg.bytes));
  std::string index_digest = j.value("index", "");
  if (!index_digest.empty()) {
    ASSIGN_OR_RETURN(StoredManifest idx, get(index_digest));
    img.index_bytes = idx.bytes;
    img.index_digest = index_digest;
    img.index_media_type = idx.media_type;
  }
  ASSIGN_OR_RETURN(img.platform, ParsePlatform(j.value("platform", "")));
  // The cache's bytes are what was verified when stored; check them again.
  if (Sha256Digest(img.manifest_bytes) != img.manifest_digest ||
      Sha256Digest(img.config_bytes) != img.manifest.config.digest) {
    return Status::Corrupt("cached manifest or config does not match its digest");
  }
  return img;
}

}  // namespace

Result<ResolvedImage> RecallResolution(ChunkCache* db, const Reference& ref,
                                       const CommonOptions& o) {
  ASSIGN_OR_RETURN(std::optional<StoredManifest> res, db->GetManifest(ResolutionKey(ref, o)));
  if (!res) return Status::NotFound("not in the cache: " + ResolutionKey(ref, o));
  return RecallResolutionJson(db, ref, res->bytes);
}

int FailStartup(DaemonReady* ready, const std::string& what, const Status& s) {
  std::string msg = what + ": " + s.ToString();
  if (ready) {
    ready->Send(msg);
  } else {
    std::fprintf(stderr, "regfs: %s\n", msg.c_str());
  }
  return 1;
}

Status CheckMountpoint(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Status::NotFound(std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return Status::InvalidArgument("not a directory");
  return Status::Ok();
}

Result<std::optional<HeldSession>> WithdrawSessionOrCheckMountpoint(const std::string& mountpoint,
                                                                    std::string* what) {
  std::optional<HeldSession> held;
  if (HolderLink* holder = CurrentHolderLink()) {
    Result<std::optional<HeldSession>> w = holder->Withdraw();
    if (!w.ok()) {
      *what = "holder";
      return w.status();
    }
    held = std::move(*w);
  }
  if (!held) {
    if (Status s = CheckMountpoint(mountpoint); !s.ok()) {
      *what = "mountpoint " + mountpoint;
      return s;
    }
  }
  return held;
}

void MaybeDieBeforeLoopForTest(bool successor) {
  const char* die = std::getenv("REGFS_TEST_DIE_BEFORE_LOOP");
  if (!successor && die && std::string(die) == "1") raise(SIGKILL);
}

// Everything after the fork: resolve, mount, tell the parent, serve.
int ServeMount(MountOptions mo, DaemonReady* ready) {
  auto fail = [&](const std::string& what, const Status& s) {
    return FailStartup(ready, what, s);
  };
  auto start = std::chrono::steady_clock::now();
  // Under a holder (fs/session_holder.h): a successor takes over the
  // session of a dead daemon, showing the very image it showed (not what
  // the tag names now), from the cache, without the registry.
  HolderLink* holder = CurrentHolderLink();
  std::string what;
  Result<std::optional<HeldSession>> w = WithdrawSessionOrCheckMountpoint(mo.mountpoint, &what);
  if (!w.ok()) return fail(what, w.status());
  std::optional<HeldSession> held = std::move(*w);
  Result<RegistriesConf> conf = LoadRegistriesConfFromFlags(mo.common);
  if (!conf.ok()) return fail("registries.conf", conf.status());
  Result<ShortNameResolution> names = ResolveShortName(*conf, mo.ref);
  if (!names.ok()) return fail(mo.ref, names.status());
  Result<std::unique_ptr<ChunkCache>> cache = OpenCache(mo.common);
  if (!cache.ok()) return fail("cannot open the cache", cache.status());
  // Set when the mount goes away: downloads in progress end (the client
  // and everything reading through it are destroyed after this flag).
  std::atomic<bool> stopping{false};
  std::unique_ptr<MirrorSet> client;
  Reference first = names->candidates.front();
  Result<ResolvedImage> img = Status::NotFound("not resolved");
  std::string how;
  if (held) {
    Result<std::unique_ptr<MirrorSet>> c = MakeMirrorSet(mo.common, *conf, first, &stopping);
    if (!c.ok()) return fail("takeover", c.status());
    client = std::move(*c);
    img = RecallResolutionJson(cache->get(), first, held->state);
    if (!img.ok()) return fail("takeover: the image is gone from the cache", img.status());
  } else {
    img = ResolveNameFromFlags(mo.common, *conf, mo.ref, &client, &stopping, &how);
  }
  const Reference* ref = img.ok() ? &img->ref : &first;
  if (held) {
    // Resolved above.
  } else if (img.ok()) {
    if (names->candidates.size() > 1 || IsShortName(mo.ref)) {
      LOG_INFO(mo.ref + " resolved to " + ref->Normalized() + " (" + how + ")");
    }
    RememberResolution(cache->get(), *img, mo.common);
  } else if (img.status().code() == Code::kTransient && client) {
    // The registry is unreachable: an image seen before mounts from the cache.
    Result<ResolvedImage> recalled = RecallResolution(cache->get(), *ref, mo.common);
    if (!recalled.ok()) return fail("cannot resolve " + ref->Normalized(), img.status());
    LOG_WARN("registry unreachable (" + img.status().ToString() + "); mounting " +
             ref->Normalized() + " as last resolved: " + recalled->manifest_digest);
    img = std::move(recalled);
    ref = &first;
  } else {
    return fail("cannot resolve " + ref->Normalized(), img.status());
  }
  KeepSpareChunks(client.get(), cache->get());
  CachedBlobSource cached(cache->get(), client.get(), DaemonCacheOptions());

  ImageFsInput in;
  in.manifest_bytes = img->manifest_bytes;
  in.config_bytes = img->config_bytes;
  in.index_bytes = img->index_bytes;
  in.layers = img->manifest.layers;
  in.diff_ids = img->config.diff_ids;
  in.layer_annotations = img->manifest.layer_annotations;
  in.mtime_sec = ParseCreated(img->config_bytes);
  ImageFsOptions fso;
  fso.whiteouts = mo.overlay_whiteouts ? WhiteoutMode::kOverlay : WhiteoutMode::kAsInTar;
  fso.readahead_threads = mo.readahead_threads;
  fso.layer_set.index_store = CacheIndexStore(cache->get());
  ChunkCache* db = cache->get();
  fso.layer_set.make_cached = [db](BlobSource* upstream) -> std::unique_ptr<BlobSource> {
    return std::make_unique<CachedBlobSource>(db, upstream);
  };
  if (!ready) {  // -f: a progress line on the terminal
    fso.layer_set.progress = [](const std::string& line) {
      std::fprintf(stderr, "\r\033[Kregfs: %s", line.c_str());
      if (line.find("ready") != std::string::npos) std::fprintf(stderr, "\n");
    };
  }
  ImageFs* fs_ptr = nullptr;
  ImageFs fs(std::move(in), &cached,
             [&] { return StatusJson(*img, &cached, client.get(), fs_ptr, start); }, fso);
  fs_ptr = &fs;

  FuseOptions fo;
  fo.mountpoint = mo.mountpoint;
  fo.fsname = "regfs:" + ref->Normalized();
  fo.mount_opts = mo.fuse_opts;
  fo.debug = mo.fuse_debug;
  fo.on_session_end = [&] {
    stopping = true;
    fs.Stop();
  };
  if (held) {
    fo.takeover_fd = held->fd.Release();
    fo.takeover_init = held->init;
    // Only for the test that shows what a reader sees without it.
    const char* no_resend = std::getenv("REGFS_TAKEOVER_NO_RESEND");
    if (no_resend && std::string(no_resend) == "1") fo.resend_in_flight = false;
  }
  // A first daemon, or a successor of one that died before it answered
  // INIT (it reads INIT itself): the holder gets the INIT request once it
  // is answered.
  if (holder && (!held || held->init.empty())) {
    fo.on_init = [holder, state = ResolutionJson(*img)](int fd, const std::string& init) {
      Status s = holder->Deposit(fd, init, state);
      if (!s.ok()) LOG_WARN("the mount will not survive this daemon: " + s.ToString());
      if (s.ok()) LOG_INFO("the holder keeps the session");
    };
  }
  FuseDaemon daemon(&fs.tree(), &fs, fo);
  if (Status s = daemon.Mount(); !s.ok()) return fail("mount", s);
  if (holder && !held) {
    // From the mount on, before INIT is even read: a daemon killed before
    // it answered INIT leaves the kernel's INIT for its successor.
    Status s = holder->Deposit(daemon.SessionFd(), "", ResolutionJson(*img));
    if (!s.ok()) LOG_WARN("the mount will not survive this daemon: " + s.ToString());
  }
  if (holder) holder->MountIsLive();
  LOG_INFO(std::string(held ? "took over the mount of " : "mounted ") + ref->Normalized() +
           " (" + img->manifest_digest + ") on " + mo.mountpoint);
  if (ready) ready->Send("OK");
  MaybeDieBeforeLoopForTest(held.has_value());
  fs.StartIndexing();
  Status s = daemon.Loop(true);
  if (!s.ok()) {
    LOG_ERROR("daemon: " + s.ToString());
    return 1;
  }
  return 0;
}


Result<ResolvedImage> ResolveFromFlags(const CommonOptions& o, const RegistriesConf& conf,
                                       const Reference& ref,
                                       std::unique_ptr<MirrorSet>* client_out,
                                       const std::atomic<bool>* cancel) {
  std::optional<Platform> platform;
  if (!o.platform.empty()) {
    ASSIGN_OR_RETURN(platform, ParsePlatform(o.platform));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<MirrorSet> client, MakeMirrorSet(o, conf, ref, cancel));
  Result<ResolvedImage> img = client->Resolve(ref, platform);
  if (client_out) *client_out = std::move(client);
  return img;
}

Result<ResolvedImage> ResolveNameFromFlags(const CommonOptions& o, const RegistriesConf& conf,
                                           const std::string& name,
                                           std::unique_ptr<MirrorSet>* client_out,
                                           const std::atomic<bool>* cancel, std::string* how) {
  ASSIGN_OR_RETURN(ShortNameResolution names, ResolveShortName(conf, name));
  if (how) *how = names.rationale;
  // As podman pull: each candidate in order, the first that resolves wins.
  Status first_error;
  std::string errors;
  for (const Reference& candidate : names.candidates) {
    std::unique_ptr<MirrorSet> set;
    Result<ResolvedImage> img = ResolveFromFlags(o, conf, candidate, &set, cancel);
    if (img.ok()) {
      if (client_out) *client_out = std::move(set);
      return img;
    }
    if (first_error.ok()) {
      first_error = img.status();
      if (client_out) *client_out = std::move(set);
    }
    errors += (errors.empty() ? "" : "; ") + candidate.Normalized() + ": " +
              img.status().ToString();
    if (cancel && cancel->load()) break;
  }
  if (names.candidates.size() == 1) return first_error;
  return Status(first_error.code(), "no candidate of " + name + " (" + names.rationale +
                                        ") resolved: " + errors);
}

// Splits regfs's own keys out of -o (as mount -t fuse.regfs passes them):
// tls-verify=, cert-dir=, platform=, cache-dir=, cache-max-size=, authfile=,
// registries-conf=.
// Options that make no sense read-only (rw) are dropped; the rest go to FUSE.
void TakeOwnOptions(MountOptions* mo) {
  std::vector<std::string> rest;
  for (const std::string& opt : mo->fuse_opts) {
    auto eq = opt.find('=');
    std::string key = opt.substr(0, eq), val = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (key == "tls-verify" || key == "tls_verify") {
      mo->common.tls_verify = !(val == "false" || val == "0" || val == "no");
    } else if (key == "cert-dir" || key == "cert_dir") {
      mo->common.cert_dir = val;
    } else if (key == "platform") {
      mo->common.platform = val;
    } else if (key == "cache-dir" || key == "cache_dir") {
      mo->common.cache_dir = val;
    } else if (key == "cache-max-size" || key == "cache_max_size") {
      mo->common.cache_max_size = val;
    } else if (key == "authfile") {
      mo->common.authfile = val;
    } else if (key == "registries-conf" || key == "registries_conf") {
      mo->common.registries_conf = val;
    } else if (key == "rw" || key == "ro" || key.empty()) {
      // always read-only
    } else {
      rest.push_back(opt);
    }
  }
  mo->fuse_opts = rest;
}

Result<std::unique_ptr<ChunkCache>> OpenCache(const CommonOptions& o) {
  CacheOptions co;
  co.dir = o.cache_dir.empty() ? DefaultCacheDir() : o.cache_dir;
  if (!o.cache_max_size.empty()) {
    ASSIGN_OR_RETURN(co.max_size, ParseSize(o.cache_max_size));
  }
  Result<std::unique_ptr<ChunkCache>> cache = ChunkCache::Open(co);
  if (!cache.ok()) return cache.status().Annotate("cache in " + co.dir);
  return cache;
}

void KeepSpareChunks(MirrorSet* set, ChunkCache* db) {
  const uint64_t cs = db->chunk_size();
  set->SetSpareChunkHandler(cs, [db, cs](const BlobDescriptor& blob, uint64_t offset,
                                         std::span<const uint8_t> bytes) {
    const uint64_t index = offset / cs;
    // A verified blob's refetched chunks are checked against its chunk
    // chain by the cache's own fetch; spare bytes of it are left alone.
    Result<std::optional<std::string>> chain = db->GetChunkChain(blob.digest);
    if (!chain.ok() || *chain) return;
    Status s = db->PutChunks(blob, index, bytes);
    if (!s.ok()) LOG_DEBUG("keeping spare chunk " + std::to_string(index) + " of " + blob.digest +
                           ": " + s.ToString());
  });
}

CachedSourceOptions DaemonCacheOptions() {
  CachedSourceOptions o;
  o.verify_complete = true;
  o.small_random_fetches = true;
  // One read-ahead policy: fs/'s (ImageFs::MaybeReadAhead and the index
  // passes' look-ahead), in the background, whose failures are only logged.
  // The cache's own window would widen foreground fetches, and a failure of
  // the widened part would fail the read that asked for less.
  o.readahead = false;
  // A read-ahead request is fetched as one upstream request, not split.
  o.max_fetch_bytes = ImageFsOptions{}.readahead_request;
  return o;
}

IndexStore CacheIndexStore(ChunkCache* db) {
  IndexStore st;
  st.get = [db](const std::string& digest) -> std::optional<std::string> {
    Result<std::optional<std::string>> r = db->GetLayerIndex(digest, kIndexFormat);
    if (!r.ok()) return std::nullopt;
    return *r;
  };
  st.put = [db](const std::string& digest, const std::string& bytes) {
    Status put = db->PutLayerIndex(digest, kIndexFormat, bytes);
    if (!put.ok()) LOG_WARN("cannot store the index of " + digest + ": " + put.ToString());
  };
  return st;
}

}  // namespace regfs
