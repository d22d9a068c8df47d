#include "cli/cli.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "cache/chunk_cache.h"
#include "cli/daemon.h"
#include "cli/version.h"
#include "fs/fuse_daemon.h"
#include "fs/mount.h"
#include "fs/options.h"
#include "fs/store.h"
#include "reader/base/file_util.h"
#include "reader/base/log.h"
#include "reader/http/registry_client.h"
#include "reader/image/credentials.h"
#include "reader/image/reference.h"

namespace regfs {
namespace {

void AddCommonOptions(CLI::App* cmd, CommonOptions* o) {
  cmd->add_option("--platform", o->platform, "os/arch[/variant] to choose from an index");
  cmd->add_option("--tls-verify", o->tls_verify,
                  "verify TLS certificates; false also allows plain http")
      ->default_val(true);
  cmd->add_option("--authfile", o->authfile, "credentials file (containers auth.json format)");
  cmd->add_option("--creds", o->creds,
                  "USER:PASSWORD for the image's registry, or HOST=USER:PASSWORD for registry "
                  "HOST only (repeatable; the store takes only HOST=USER:PASSWORD)")
      ->allow_extra_args(false);
  cmd->add_option("--creds-file", o->creds_file,
                  "file of --creds entries, one per line ('#' comments), so that no password "
                  "is on the command line; $REGFS_CREDS holds entries the same way");
  cmd->add_option("--cert-dir", o->cert_dir,
                  "directory of *.crt CA certificates trusted for the registry, and of a "
                  "client certificate NAME.cert with its key NAME.key (default: "
                  "/etc/containers/certs.d/HOST:PORT when it exists)");
  cmd->add_option("--retry-timeout", o->retry_timeout_s,
                  "seconds a request may take, retries included")
      ->default_val(25);
  cmd->add_option("--registries-conf", o->registries_conf,
                  "registries.conf to read (mirrors, blocked registries, short names) instead "
                  "of $CONTAINERS_REGISTRIES_CONF, ~/.config/containers/registries.conf or "
                  "/etc/containers/registries.conf; registries.conf.d drop-ins still apply");
  cmd->add_flag("-v,--verbose", o->verbose, "more log output (-vv for debug)");
}

// What `mount` and `store` (the FUSE daemons) take besides the common options.
void AddDaemonOptions(CLI::App* cmd, CommonOptions* common, MountOptions* mo,
                      const char* fuse_opts_help) {
  cmd->add_option("--cache-dir", common->cache_dir, "chunk cache directory");
  cmd->add_option("--cache-max-size", common->cache_max_size, "cache size cap, e.g. 10G");
  cmd->add_flag("-f,--foreground", mo->foreground, "stay in the foreground");
  cmd->add_option("-o", mo->fuse_opts, fuse_opts_help)->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--log-file", mo->log_file, "where the background daemon logs");
  cmd->add_flag("--fuse-debug", mo->fuse_debug, "libfuse request tracing");
}

void ApplyVerbosity(const CommonOptions& o) {
  if (o.verbose >= 2) {
    SetLogLevel(LogLevel::kDebug);
  } else if (o.verbose == 1) {
    SetLogLevel(LogLevel::kInfo);
  }
}

int Fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "regfs: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

nlohmann::json DescriptorJson(const BlobDescriptor& d) {
  return {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
}

int RunInspect(const CommonOptions& o, const std::string& ref_text, bool as_json) {
  ApplyVerbosity(o);
  Result<RegistriesConf> conf = LoadRegistriesConfFromFlags(o);
  if (!conf.ok()) return Fail("registries.conf", conf.status());
  std::unique_ptr<MirrorSet> endpoints;
  std::string how;
  Result<ResolvedImage> img =
      ResolveNameFromFlags(o, *conf, ref_text, &endpoints, nullptr, &how);
  if (!img.ok()) return Fail("cannot resolve " + ref_text, img.status());
  if (as_json) {
    nlohmann::json j;
    j["name"] = img->ref.Normalized();
    j["nameResolution"] = how;
    j["digest"] = img->manifest_digest;
    j["manifestEndpoint"] = endpoints->ManifestEndpoint();
    j["endpoints"] = EndpointsJson(*endpoints);
    j["mediaType"] = img->manifest_media_type;
    if (img->index_bytes) {
      j["index"] = {{"digest", img->index_digest}, {"mediaType", img->index_media_type}};
    }
    j["platform"] = {{"os", img->platform.os}, {"architecture", img->platform.architecture}};
    if (!img->platform.variant.empty()) j["platform"]["variant"] = img->platform.variant;
    j["config"] = DescriptorJson(img->manifest.config);
    j["layers"] = nlohmann::json::array();
    for (size_t i = 0; i < img->manifest.layers.size(); ++i) {
      nlohmann::json l = DescriptorJson(img->manifest.layers[i]);
      if (i < img->config.diff_ids.size()) l["diffID"] = img->config.diff_ids[i];
      j["layers"].push_back(l);
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "Name:       " << img->ref.Normalized() << "\n";
  if (IsShortName(ref_text)) std::cout << "Resolved:   " << ref_text << " (" << how << ")\n";
  for (const EndpointReport& e : endpoints->Endpoints()) {
    if (!e.preferred) continue;
    std::cout << "Endpoint:   " << e.location << (e.mirror ? " (mirror)" : "") << "\n";
  }
  if (img->index_bytes) {
    std::cout << "Index:      " << img->index_digest << " (" << img->index_media_type << ")\n";
  }
  std::cout << "Manifest:   " << img->manifest_digest << " (" << img->manifest_media_type << ")\n"
            << "Platform:   " << img->platform.ToString() << "\n"
            << "Config:     " << img->manifest.config.digest << " ("
            << img->manifest.config.size << " bytes)\n"
            << "Layers:     " << img->manifest.layers.size() << "\n";
  for (size_t i = 0; i < img->manifest.layers.size(); ++i) {
    const BlobDescriptor& l = img->manifest.layers[i];
    std::cout << "  " << i << "  " << l.digest << "  " << l.size << "  " << l.media_type << "\n";
  }
  return 0;
}

Result<std::unique_ptr<ChunkCache>> OpenCacheFromFlags(const CommonOptions& o) {
  CacheOptions co;
  co.dir = o.cache_dir.empty() ? DefaultCacheDir() : o.cache_dir;
  if (!o.cache_max_size.empty()) {
    ASSIGN_OR_RETURN(co.max_size, ParseSize(o.cache_max_size));
  }
  return ChunkCache::Open(co);
}

int RunCacheStats(const CommonOptions& o, bool as_json) {
  Result<std::unique_ptr<ChunkCache>> cache = OpenCacheFromFlags(o);
  if (!cache.ok()) return Fail("cannot open the cache", cache.status());
  Result<CacheStats> st = (*cache)->Stats();
  if (!st.ok()) return Fail("cannot read cache statistics", st.status());
  if (as_json) {
    nlohmann::json j = {{"path", (*cache)->path()},
                        {"bytes", st->bytes},
                        {"chunks", st->chunks},
                        {"blobs", st->blobs},
                        {"completeBlobs", st->complete_blobs},
                        {"layerIndexes", st->layer_indexes},
                        {"manifests", st->manifests},
                        {"maxSize", st->max_size},
                        {"databaseBytes", st->database_bytes},
                        {"chunkSize", st->chunk_size},
                        {"lastRunHits", st->last_run_hits},
                        {"lastRunMisses", st->last_run_misses},
                        {"lastRunHitRatio", st->last_run_hit_ratio()}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("Cache:            %s\n", (*cache)->path().c_str());
  std::printf("Bytes:            %llu (cap %llu)\n", (unsigned long long)st->bytes,
              (unsigned long long)st->max_size);
  std::printf("Database:         %llu bytes (cache.db, WAL; counted in the cap)\n",
              (unsigned long long)st->database_bytes);
  std::printf("Chunks:           %llu of %u bytes\n", (unsigned long long)st->chunks,
              st->chunk_size);
  std::printf("Blobs:            %llu (%llu complete)\n", (unsigned long long)st->blobs,
              (unsigned long long)st->complete_blobs);
  std::printf("Layer indexes:    %llu\n", (unsigned long long)st->layer_indexes);
  std::printf("Manifests:        %llu\n", (unsigned long long)st->manifests);
  std::printf("Last run hits:    %llu of %llu reads (%.1f%%)\n",
              (unsigned long long)st->last_run_hits,
              (unsigned long long)(st->last_run_hits + st->last_run_misses),
              100.0 * st->last_run_hit_ratio());
  return 0;
}

int RunCachePrune(const CommonOptions& o, const std::string& max_size, bool chunks_only) {
  Result<std::unique_ptr<ChunkCache>> cache = OpenCacheFromFlags(o);
  if (!cache.ok()) return Fail("cannot open the cache", cache.status());
  uint64_t target = (*cache)->max_size();
  if (!max_size.empty()) {
    Result<uint64_t> n = ParseSize(max_size);
    if (!n.ok()) return Fail("--max-size", n.status());
    target = *n;
  }
  Status s = (*cache)->Prune(target, chunks_only);
  if (!s.ok()) return Fail("prune failed", s);
  Result<CacheStats> st = (*cache)->Stats();
  if (st.ok()) {
    std::printf("pruned to %llu bytes in %llu chunks\n", (unsigned long long)st->bytes,
                (unsigned long long)st->chunks);
  }
  return 0;
}

// Overwrites the password of every --creds value in argv ("--creds V" and
// "--creds=V") in place, so that /proc/PID/cmdline, which every user can
// read, does not show it for the daemon's life. CLI11 parses copies
// (NormalizeArgs), so this runs after those were made.
void WipeCredsInArgv(int argc, char** argv) {
  auto wipe = [](char* value) {
    std::string_view v(value);
    size_t user = CredsEntryUserStart(v);
    size_t colon = v.find(':', user);
    if (colon == std::string_view::npos) return;
    std::memset(value + colon + 1, 'x', v.size() - colon - 1);
  };
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) break;
    if (std::strcmp(argv[i], "--creds") == 0 && i + 1 < argc) {
      wipe(argv[++i]);
    } else if (std::strncmp(argv[i], "--creds=", 8) == 0) {
      wipe(argv[i] + 8);
    }
  }
}

// --creds entries, then --creds-file's, then $REGFS_CREDS's (whose value is
// then wiped in place, so that helpers this process starts do not inherit
// it); `registry` is the registry plain USER:PASSWORD entries are for (empty
// for the store). Checks every entry; a usage error is a message on stderr
// and false.
bool GatherCreds(CommonOptions* o, const std::string& registry) {
  if (!o->creds_file.empty()) {
    Result<std::string> text = ReadFileToString(o->creds_file);
    if (!text.ok()) {
      std::fprintf(stderr, "regfs: --creds-file: %s\n", text.status().ToString().c_str());
      return false;
    }
    for (std::string& e : SplitCredsEntries(*text)) o->creds.push_back(std::move(e));
  }
  if (char* env = std::getenv("REGFS_CREDS"); env && *env) {
    for (std::string& e : SplitCredsEntries(env)) o->creds.push_back(std::move(e));
    std::memset(env, 'x', std::strlen(env));
  }
  o->creds_registry = registry;
  for (const std::string& e : o->creds) {
    Result<RegistryCredentials> rc = ParseRegistryCreds(e, registry);
    if (!rc.ok()) {
      std::fprintf(stderr, "regfs: %s\n", rc.status().message().c_str());
      return false;
    }
  }
  return true;
}

// The registry of `ref_text`, or "" when it does not parse (the command then
// fails on the reference itself).
std::string RegistryOf(const std::string& ref_text) {
  Result<Reference> ref = ParseReference(ref_text);
  return ref.ok() ? ref->registry : "";
}

// `mount -t fuse.regfs REF DIR -o opts` runs `regfs REF DIR -o opts` through
// mount.fuse3: no subcommand. Rewrite it as `regfs mount REF DIR -o opts`.
std::vector<std::string> NormalizeArgs(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  static const char* kCommands[] = {"mount", "umount", "unmount", "inspect", "cache", "store"};
  if (!args.empty() && args[0][0] != '-') {
    bool known = false;
    for (const char* c : kCommands) known = known || args[0] == c;
    if (!known) args.insert(args.begin(), "mount");
  }
  return args;
}

// `regfs mount` / `regfs store`: regfs's own keys out of -o, then serve as
// a daemon (or in the foreground with -f).
// `hold`: under a holder that survives the daemon (fs/session_holder.h).
int RunDaemonFor(MountOptions mo, int (*serve)(MountOptions, DaemonReady*), bool hold = false) {
  TakeOwnOptions(&mo);
  // A successor daemon starts in the holder's cwd, "/".
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(mo.mountpoint, ec);
  if (!ec) mo.mountpoint = abs.lexically_normal().string();
  std::string log_file = mo.log_file;
  bool foreground = mo.foreground;
  return RunDaemon(
      log_file, foreground, [&](DaemonReady* ready) { return serve(mo, ready); }, hold);
}

// "regfs 0.1.0 (git v0.1.0-12-gabcdef123456)": the release and the source it
// was built from (packages and bug reports name both).
std::string VersionLine() {
  return std::string("regfs ") + REGFS_VERSION + " (git " + REGFS_GIT_REVISION + ")";
}

}  // namespace

int RegfsMain(int argc, char** argv) {
  CLI::App app{"regfs: mount container images from a registry without pulling them"};
  app.require_subcommand(1);
  app.set_version_flag("--version", VersionLine());

  CommonOptions common;
  MountOptions mo;
  std::string ref_text;
  bool as_json = false;

  CLI::App* inspect = app.add_subcommand("inspect", "print the image a reference resolves to");
  AddCommonOptions(inspect, &common);
  inspect->add_option("REF", ref_text, "image reference, as docker spells it")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");

  CLI::App* mount = app.add_subcommand("mount", "mount an image read-only");
  AddCommonOptions(mount, &common);
  AddDaemonOptions(mount, &common, &mo, "FUSE mount options (allow_other, ...)");
  mount->add_option("--readahead-threads", mo.readahead_threads,
                    "threads reading blobs ahead of a sequential reader (0: only the cache's "
                    "own read-ahead)")
      ->check(CLI::Range(0, 16));
  std::string whiteouts = "tar";
  mount->add_option("--whiteouts", whiteouts,
                    "tar: show .wh. files as the layer has them; overlay: as overlayfs "
                    "whiteouts (0:0 char devices, opaque xattrs)")
      ->check(CLI::IsMember({"tar", "overlay"}));
  mount->add_option("REF", ref_text, "image reference")->required();
  mount->add_option("MOUNTPOINT", mo.mountpoint, "an empty directory")->required();

  MountOptions so;
  CLI::App* store = app.add_subcommand(
      "store", "serve an additional layer store for podman and CRI-O (storage.conf's "
               "additionallayerstores = [\"MOUNTPOINT:ref\"])");
  AddCommonOptions(store, &common);
  AddDaemonOptions(store, &common, &so, "extra FUSE mount options");
  store->add_flag("--index-on-pull", so.index_on_pull,
                  "index layers in the background from `podman pull` on (the pull then makes "
                  "the store fetch whole layers; by default a layer is fetched when first used)");
  store
      ->add_option("--idle-timeout", common.idle_timeout_s,
                   "seconds after which a layer nothing uses (no open file, no container "
                   "on it) is released from memory: its tree, index, reader and registry "
                   "client; looked up again, it is made again from the cache (0: never)")
      ->check(CLI::NonNegativeNumber);
  // The store resolves whatever reference podman asks for, with the
  // machine's credentials: this narrows it to the registries meant.
  store
      ->add_option("--allow-registry", common.allow_registries,
                   "resolve only images of this registry, HOST or HOST:PORT as the image "
                   "reference spells it (repeat for several; default: any)")
      ->allow_extra_args(false)
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (v.empty() || v.find_first_of("/@ \t") != std::string::npos) {
              return "HOST or HOST:PORT expected, not '" + v + "'";
            }
            return "";
          },
          "HOST[:PORT]"));
  store->add_option("MOUNTPOINT", so.mountpoint, "an empty directory")->required();

  std::string umount_path;
  CLI::App* umount = app.add_subcommand("umount", "unmount a regfs mount");
  umount->alias("unmount");
  umount->add_option("MOUNTPOINT", umount_path)->required();

  CLI::App* cache = app.add_subcommand("cache", "inspect or prune the chunk cache");
  cache->require_subcommand(1);
  CLI::App* stats = cache->add_subcommand("stats", "what the cache holds");
  stats->add_option("--cache-dir", common.cache_dir, "chunk cache directory");
  stats->add_flag("--json", as_json, "machine-readable output");
  std::string prune_max;
  CLI::App* prune = cache->add_subcommand("prune", "evict least recently used chunks");
  prune->add_option("--cache-dir", common.cache_dir, "chunk cache directory");
  prune->add_option("--max-size", prune_max, "evict down to this size (default: the cap)");
  bool prune_chunks_only = false;
  prune->add_flag("--chunks-only", prune_chunks_only,
                  "evict chunks only; layer indexes and manifests stay (a later mount lists "
                  "at once)");

  std::vector<std::string> args = NormalizeArgs(argc, argv);
  WipeCredsInArgv(argc, argv);
  std::reverse(args.begin(), args.end());  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (inspect->parsed()) {
    if (!GatherCreds(&common, RegistryOf(ref_text))) return 2;
    return RunInspect(common, ref_text, as_json);
  }
  if (mount->parsed()) {
    if (!GatherCreds(&common, RegistryOf(ref_text))) return 2;
    ApplyVerbosity(common);
    mo.common = common;
    mo.ref = ref_text;
    mo.overlay_whiteouts = whiteouts == "overlay";
    return RunDaemonFor(std::move(mo), ServeMount, /*hold=*/true);
  }
  if (store->parsed()) {
    // The store resolves images from any registry: only HOST=USER:PASSWORD.
    if (!GatherCreds(&common, "")) return 2;
    ApplyVerbosity(common);
    so.common = common;
    return RunDaemonFor(std::move(so), ServeStore, /*hold=*/true);
  }
  if (umount->parsed()) {
    Status s = UnmountPath(umount_path);
    return s.ok() ? 0 : Fail("umount", s);
  }
  if (stats->parsed()) return RunCacheStats(common, as_json);
  if (prune->parsed()) return RunCachePrune(common, prune_max, prune_chunks_only);
  return 2;
}

}  // namespace regfs
