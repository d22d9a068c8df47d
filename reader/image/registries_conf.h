// registries.conf (containers-registries.conf(5), v2 format) as podman,
// CRI-O, skopeo and buildah read it (containers/image 5.23's
// pkg/sysregistriesv2 and pkg/shortnames), so that regfs on a node pulls
// through the same mirrors and resolves short names the same way.
//
// What is read (LoadRegistriesConf): the main file (--registries-conf, else
// $CONTAINERS_REGISTRIES_CONF, else ~/.config/containers/registries.conf
// when it exists, else /etc/containers/registries.conf), then the drop-ins
// (*.conf in /etc/containers/registries.conf.d and
// ~/.config/containers/registries.conf.d, by name; only the user's directory
// when the user's main file is used), each merged over the previous:
// [[registry]] entries by prefix, the other keys replaced when set, aliases
// merged. Then the short-name alias cache (short-name-aliases.conf), whose
// aliases win. A missing default main file is an empty configuration; a
// missing named one, a TOML error or an inconsistent entry is
// InvalidArgument naming the file.
//
// Rules (FindRegistry, PullSources, ResolveShortName): the [[registry]] with
// the longest prefix matching the image's name wins ("*.example.com" matches
// sub-domains); its mirrors are tried in order, then its location, each with
// the reference rewritten from prefix to location; a digest reference uses
// mirrors allowed for digests, a tag reference those allowed for tags.
#ifndef REGFS_READER_IMAGE_REGISTRIES_CONF_H_
#define REGFS_READER_IMAGE_REGISTRIES_CONF_H_

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "reader/image/reference.h"

namespace regfs {

enum class PullFromMirror { kAll, kDigestOnly, kTagOnly };
enum class ShortNameMode { kUnset, kDisabled, kPermissive, kEnforcing };

struct RegistryEndpointConf {
  std::string location;  // "host[:port][/namespace...]", no scheme
  bool insecure = false;  // no TLS verification, plain http allowed
  PullFromMirror pull_from_mirror = PullFromMirror::kAll;  // mirrors only
};

struct RegistryConf {
  std::string prefix;  // the location when not given; or "*.example.com"
  RegistryEndpointConf endpoint;
  std::vector<RegistryEndpointConf> mirrors;
  bool blocked = false;
  bool mirror_by_digest_only = false;
};

struct RegistriesConf {
  std::vector<RegistryConf> registries;  // unique prefixes, sorted by prefix
  // Unset (nullopt) differs from an empty list: a drop-in's empty list
  // clears the main file's.
  std::optional<std::vector<std::string>> unqualified_search_registries;
  std::string search_registries_origin;  // the file that set them
  ShortNameMode short_name_mode = ShortNameMode::kUnset;
  // Short name ("alpine", "team/app") -> a fully qualified name without tag
  // (normalized: "docker.io/library/alpine"); "" resets an earlier alias.
  std::map<std::string, std::string> aliases;
  std::map<std::string, std::string> alias_origins;  // short name -> file
  std::optional<std::vector<std::string>> credential_helpers;
  std::vector<std::string> files;  // every file read, in order

  // enforcing when no file says otherwise (containers/image's default).
  ShortNameMode EffectiveShortNameMode() const {
    return short_name_mode == ShortNameMode::kUnset ? ShortNameMode::kEnforcing
                                                    : short_name_mode;
  }
  // "containers-auth.json" when no file lists helpers, as containers/image.
  std::vector<std::string> EffectiveCredentialHelpers() const;
  // "FILE1, FILE2" for messages ("(no registries.conf)" when none).
  std::string Origin() const;
};

// One file's text. `origin` names it in errors and aliases. `force_v2`:
// drop-ins must be v2; the main file may be v1 ([registries.search] ...),
// which is converted as containers/image converts it.
Result<RegistriesConf> ParseRegistriesConf(std::string_view text, const std::string& origin,
                                           bool force_v2 = false);

// `update` (a later file) over `base`.
void MergeRegistriesConf(RegistriesConf* base, const RegistriesConf& update);

struct RegistriesConfPaths {
  std::string main_file;            // --registries-conf; empty = the rules above
  std::string env_file;             // $CONTAINERS_REGISTRIES_CONF
  std::string home;                 // $HOME
  std::string system_file = "/etc/containers/registries.conf";
  std::string system_dir = "/etc/containers/registries.conf.d";
  std::string alias_cache_file;     // short-name-aliases.conf; empty = none
};
// The paths the process's environment gives: $CONTAINERS_REGISTRIES_CONF,
// $HOME, and the alias cache (/var/cache/containers/short-name-aliases.conf
// for root, $XDG_CACHE_HOME or ~/.cache otherwise).
RegistriesConfPaths DefaultRegistriesConfPaths(const std::string& main_file = "");
Result<RegistriesConf> LoadRegistriesConf(const RegistriesConfPaths& paths);

// containers/image's refMatchingPrefix: the length of `prefix` when `ref`
// (a name, "host/repo:tag" or "host/repo@digest") starts with it at a
// boundary ('/', ':', '@' or the end), or matches "*.example.com"; else -1.
int RefMatchingPrefix(std::string_view ref, std::string_view prefix);

// The entry for `name` (a reference's registry/repository, no tag): the
// longest matching prefix; nullptr when none.
const RegistryConf* FindRegistry(const RegistriesConf& conf, std::string_view name);

// Where to pull `ref` from, in order.
struct PullSource {
  std::string location;  // the endpoint's location (host[/namespace])
  bool insecure = false;
  bool mirror = false;
  Reference ref;  // `ref` rewritten to the endpoint
};
// Mirrors (those allowed for a digest or tag reference) then the primary
// location; just `ref` itself when no entry matches. InvalidArgument
// ("registry ... is blocked") for a blocked registry, or a rewritten
// reference that does not parse.
Result<std::vector<PullSource>> PullSources(const RegistriesConf& conf, const Reference& ref);

// Whether `input` names no registry ("alpine", "team/app:1"): its first
// component (when it has several) has no '.' or ':' and is not "localhost".
bool IsShortName(std::string_view input);

// What a name resolves to, as `podman pull` resolves it without a terminal:
// not short: the reference itself; an alias (tag or digest carried over);
// else every unqualified-search registry in order (enforcing mode with more
// than one is an error, as podman's without a TTY). With neither alias nor
// search registries, regfs keeps docker's rule (docker.io) where podman
// fails. `rationale` says which ("alias from FILE", ...).
struct ShortNameResolution {
  std::vector<Reference> candidates;
  std::string rationale;
};
Result<ShortNameResolution> ResolveShortName(const RegistriesConf& conf, std::string_view input);

}  // namespace regfs

#endif  // REGFS_READER_IMAGE_REGISTRIES_CONF_H_
