#include "reader/image/registries_conf.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <toml++/toml.h>

#include "reader/base/file_util.h"

namespace regfs {
namespace {

Status Bad(const std::string& origin, const std::string& why) {
  return Status::InvalidArgument("registries configuration " + origin + ": " + why);
}

// containers/image's parseLocation: no trailing '/', no URL scheme.
Result<std::string> ParseLocation(std::string_view in, const std::string& origin) {
  std::string s(in);
  while (!s.empty() && s.back() == '/') s.pop_back();
  if (s.rfind("http://", 0) == 0 || s.rfind("https://", 0) == 0) {
    return Bad(origin, "invalid location '" + std::string(in) + "': URI schemes are not supported");
  }
  return s;
}

// A string key of `t`, or `def`; InvalidArgument when it is not a string.
Result<std::string> StringKey(const toml::table& t, std::string_view key, const std::string& origin,
                              const std::string& def = "") {
  const toml::node* n = t.get(key);
  if (!n) return def;
  if (const auto* s = n->as_string()) return s->get();
  return Bad(origin, "'" + std::string(key) + "' must be a string");
}

Result<bool> BoolKey(const toml::table& t, std::string_view key, const std::string& origin) {
  const toml::node* n = t.get(key);
  if (!n) return false;
  if (const auto* b = n->as_boolean()) return b->get();
  return Bad(origin, "'" + std::string(key) + "' must be true or false");
}

Result<std::optional<std::vector<std::string>>> StringList(const toml::table& t,
                                                           std::string_view key,
                                                           const std::string& origin) {
  const toml::node* n = t.get(key);
  if (!n) return std::optional<std::vector<std::string>>();
  const toml::array* a = n->as_array();
  if (!a) return Bad(origin, "'" + std::string(key) + "' must be a list of strings");
  std::vector<std::string> out;
  for (const toml::node& e : *a) {
    const auto* s = e.as_string();
    if (!s) return Bad(origin, "'" + std::string(key) + "' must be a list of strings");
    out.push_back(s->get());
  }
  return std::optional<std::vector<std::string>>(std::move(out));
}

Result<RegistryEndpointConf> ParseEndpoint(const toml::table& t, const std::string& origin,
                                           bool is_mirror) {
  RegistryEndpointConf e;
  ASSIGN_OR_RETURN(std::string loc, StringKey(t, "location", origin));
  ASSIGN_OR_RETURN(e.location, ParseLocation(loc, origin));
  ASSIGN_OR_RETURN(e.insecure, BoolKey(t, "insecure", origin));
  ASSIGN_OR_RETURN(std::string pull, StringKey(t, "pull-from-mirror", origin));
  if (!pull.empty() && !is_mirror) {
    return Bad(origin, "pull-from-mirror must not be set for a non-mirror registry '" +
                           e.location + "'");
  }
  if (pull.empty() || pull == "all") {
    e.pull_from_mirror = PullFromMirror::kAll;
  } else if (pull == "digest-only") {
    e.pull_from_mirror = PullFromMirror::kDigestOnly;
  } else if (pull == "tag-only") {
    e.pull_from_mirror = PullFromMirror::kTagOnly;
  } else {
    return Bad(origin, "unsupported pull-from-mirror value '" + pull + "' for mirror '" +
                           e.location + "'");
  }
  return e;
}

// A name without tag or digest: "alpine", "team/app", "host/app".
bool HasTagOrDigest(std::string_view name) {
  if (name.find('@') != std::string_view::npos) return true;
  size_t slash = name.rfind('/');
  size_t colon = name.rfind(':');
  return colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash);
}

// containers/image's parseShortNameValue: a fully qualified name without
// tag or digest, normalized ("docker.io/alpine" -> "docker.io/library/alpine").
Result<std::string> ParseAliasValue(std::string_view value, const std::string& origin) {
  if (HasTagOrDigest(value) || IsShortName(value)) {
    return Bad(origin, "invalid alias '" + std::string(value) +
                           "': must contain registry and repository, no tag or digest");
  }
  Result<Reference> ref = ParseReference(value);
  if (!ref.ok()) return Bad(origin, "invalid alias: " + ref.status().message());
  return ref->registry + "/" + ref->repository;
}

Status AddAliases(const toml::table& t, const std::string& origin, RegistriesConf* out) {
  const toml::node* n = t.get("aliases");
  if (!n) return Status::Ok();
  const toml::table* a = n->as_table();
  if (!a) return Bad(origin, "[aliases] must be a table");
  for (const auto& [k, v] : *a) {
    std::string key(k.str());
    if (!IsShortName(key) || HasTagOrDigest(key) || !ParseReference(key).ok()) {
      return Bad(origin, "invalid short name '" + key + "': no registry, tag or digest allowed");
    }
    const auto* s = v.as_string();
    if (!s) return Bad(origin, "alias '" + key + "' must be a string");
    std::string value;
    if (!s->get().empty()) {
      ASSIGN_OR_RETURN(value, ParseAliasValue(s->get(), origin));
    }
    out->aliases[key] = value;
    out->alias_origins[key] = origin;
  }
  return Status::Ok();
}

// V1: [registries.search] registries = [...], [registries.insecure] and
// [registries.block] likewise (containers/image's ConvertToV2).
Status ConvertV1(const toml::table& v1, const std::string& origin, RegistriesConf* out) {
  std::vector<std::string> order;
  std::map<std::string, RegistryConf> by_location;
  auto get = [&](const std::string& raw) -> Result<RegistryConf*> {
    ASSIGN_OR_RETURN(std::string loc, ParseLocation(raw, origin));
    auto [it, fresh] = by_location.try_emplace(loc);
    if (fresh) {
      it->second.prefix = loc;
      it->second.endpoint.location = loc;
      order.push_back(loc);
    }
    return &it->second;
  };
  auto list = [&](const char* section) -> Result<std::vector<std::string>> {
    const toml::table* s = v1[section].as_table();
    if (!s) return std::vector<std::string>();
    ASSIGN_OR_RETURN(auto l, StringList(*s, "registries", origin));
    return l.value_or(std::vector<std::string>());
  };
  ASSIGN_OR_RETURN(std::vector<std::string> block, list("block"));
  for (const std::string& r : block) {
    ASSIGN_OR_RETURN(RegistryConf * reg, get(r));
    reg->blocked = true;
  }
  ASSIGN_OR_RETURN(std::vector<std::string> insecure, list("insecure"));
  for (const std::string& r : insecure) {
    ASSIGN_OR_RETURN(RegistryConf * reg, get(r));
    reg->endpoint.insecure = true;
  }
  ASSIGN_OR_RETURN(std::vector<std::string> search, list("search"));
  out->unqualified_search_registries = search;
  for (const std::string& loc : order) out->registries.push_back(by_location[loc]);
  return Status::Ok();
}

// containers/image's postProcessRegistries (prefix defaults, consistency,
// unique prefixes in sorted order).
Status PostProcess(const std::string& origin, RegistriesConf* conf) {
  std::map<std::string, std::vector<const RegistryConf*>> by_location;
  for (RegistryConf& reg : conf->registries) {
    if (reg.prefix.empty()) {
      if (reg.endpoint.location.empty()) {
        return Bad(origin, "invalid condition: both location and prefix are unset");
      }
      reg.prefix = reg.endpoint.location;
    } else {
      ASSIGN_OR_RETURN(reg.prefix, ParseLocation(reg.prefix, origin));
      const bool wildcard = reg.prefix.rfind("*.", 0) == 0;
      if (!wildcard && reg.endpoint.location.empty()) {
        return Bad(origin,
                   "invalid condition: location is unset and prefix is not in the format: "
                   "*.example.com");
      }
      if (wildcard && reg.prefix.find_first_of("/@:") != std::string::npos) {
        return Bad(origin, "wildcarded prefix should be in the format: *.example.com; '" +
                               reg.prefix + "' is not");
      }
    }
    for (const RegistryEndpointConf& m : reg.mirrors) {
      if (m.location.empty()) return Bad(origin, "invalid condition: mirror location is unset");
      if (reg.mirror_by_digest_only && m.pull_from_mirror != PullFromMirror::kAll) {
        return Bad(origin, "cannot set mirror-by-digest-only for the registry '" + reg.prefix +
                               "' and pull-from-mirror for its mirror '" + m.location +
                               "' at the same time");
      }
    }
    by_location[reg.endpoint.location.empty() ? reg.prefix : reg.endpoint.location].push_back(
        &reg);
  }
  for (const auto& [loc, regs] : by_location) {
    for (const RegistryConf* r : regs) {
      if (r->endpoint.insecure != regs[0]->endpoint.insecure) {
        return Bad(origin, "registry '" + loc +
                               "' is defined multiple times with conflicting 'insecure' setting");
      }
      if (r->blocked != regs[0]->blocked) {
        return Bad(origin, "registry '" + loc +
                               "' is defined multiple times with conflicting 'blocked' setting");
      }
    }
  }
  if (conf->unqualified_search_registries) {
    for (std::string& r : *conf->unqualified_search_registries) {
      ASSIGN_OR_RETURN(r, ParseLocation(r, origin));
      if (r.empty() || r.find_first_of("/@ \t") != std::string::npos) {
        return Bad(origin, "invalid unqualified-search-registries entry '" + r + "'");
      }
    }
    conf->search_registries_origin = origin;
  }
  // The first entry of a prefix wins; later ones are dropped.
  std::map<std::string, RegistryConf> unique;
  for (RegistryConf& reg : conf->registries) unique.try_emplace(reg.prefix, std::move(reg));
  conf->registries.clear();
  for (auto& [prefix, reg] : unique) conf->registries.push_back(std::move(reg));
  return Status::Ok();
}

std::vector<std::string> ConfFilesIn(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".conf" && !e.is_directory(ec)) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<RegistriesConf> LoadFile(const std::string& path, bool force_v2) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseRegistriesConf(text, path, force_v2);
}

}  // namespace

std::vector<std::string> RegistriesConf::EffectiveCredentialHelpers() const {
  if (credential_helpers && !credential_helpers->empty()) return *credential_helpers;
  return {"containers-auth.json"};
}

std::string RegistriesConf::Origin() const {
  if (files.empty()) return "(no registries.conf)";
  std::string s;
  for (const std::string& f : files) s += (s.empty() ? "" : ", ") + f;
  return s;
}

Result<RegistriesConf> ParseRegistriesConf(std::string_view text, const std::string& origin,
                                           bool force_v2) {
  toml::table t;
  try {
    t = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    return Bad(origin, "line " + std::to_string(src.begin.line) + ": " +
                           std::string(e.description()));
  }
  RegistriesConf conf;
  conf.files.push_back(origin);
  const toml::table* v1 = t["registries"].as_table();
  const bool has_v2 = t.contains("registry") || t.contains("unqualified-search-registries") ||
                      t.contains("short-name-mode") || t.contains("aliases") ||
                      t.contains("credential-helpers");
  if (v1 && !v1->empty()) {
    if (force_v2) return Bad(origin, "registry must be in v2 format but is in v1");
    if (has_v2) return Bad(origin, "mixing sysregistry v1/v2 is not supported");
    RETURN_IF_ERROR(ConvertV1(*v1, origin, &conf));
    RETURN_IF_ERROR(PostProcess(origin, &conf));
    return conf;
  }
  if (const toml::node* regs = t.get("registry")) {
    const toml::array* a = regs->as_array();
    if (!a) return Bad(origin, "[[registry]] must be an array of tables");
    for (const toml::node& n : *a) {
      const toml::table* rt = n.as_table();
      if (!rt) return Bad(origin, "[[registry]] must be an array of tables");
      RegistryConf reg;
      ASSIGN_OR_RETURN(reg.prefix, StringKey(*rt, "prefix", origin));
      ASSIGN_OR_RETURN(reg.endpoint, ParseEndpoint(*rt, origin, false));
      ASSIGN_OR_RETURN(reg.blocked, BoolKey(*rt, "blocked", origin));
      ASSIGN_OR_RETURN(reg.mirror_by_digest_only, BoolKey(*rt, "mirror-by-digest-only", origin));
      if (const toml::node* ms = rt->get("mirror")) {
        const toml::array* ma = ms->as_array();
        if (!ma) return Bad(origin, "[[registry.mirror]] must be an array of tables");
        for (const toml::node& m : *ma) {
          const toml::table* mt = m.as_table();
          if (!mt) return Bad(origin, "[[registry.mirror]] must be an array of tables");
          ASSIGN_OR_RETURN(RegistryEndpointConf e, ParseEndpoint(*mt, origin, true));
          reg.mirrors.push_back(std::move(e));
        }
      }
      conf.registries.push_back(std::move(reg));
    }
  }
  ASSIGN_OR_RETURN(conf.unqualified_search_registries,
                   StringList(t, "unqualified-search-registries", origin));
  ASSIGN_OR_RETURN(std::string mode, StringKey(t, "short-name-mode", origin));
  if (mode == "disabled") {
    conf.short_name_mode = ShortNameMode::kDisabled;
  } else if (mode == "permissive") {
    conf.short_name_mode = ShortNameMode::kPermissive;
  } else if (mode == "enforcing") {
    conf.short_name_mode = ShortNameMode::kEnforcing;
  } else if (!mode.empty()) {
    return Bad(origin, "invalid short-name mode '" + mode + "'");
  }
  RETURN_IF_ERROR(AddAliases(t, origin, &conf));
  ASSIGN_OR_RETURN(conf.credential_helpers, StringList(t, "credential-helpers", origin));
  RETURN_IF_ERROR(PostProcess(origin, &conf));
  return conf;
}

void MergeRegistriesConf(RegistriesConf* base, const RegistriesConf& update) {
  std::map<std::string, RegistryConf> by_prefix;
  for (RegistryConf& r : base->registries) by_prefix[r.prefix] = std::move(r);
  for (const RegistryConf& r : update.registries) by_prefix[r.prefix] = r;
  base->registries.clear();
  for (auto& [p, r] : by_prefix) base->registries.push_back(std::move(r));
  if (update.unqualified_search_registries) {
    base->unqualified_search_registries = update.unqualified_search_registries;
    base->search_registries_origin = update.search_registries_origin;
  }
  if (update.credential_helpers) base->credential_helpers = update.credential_helpers;
  if (update.short_name_mode != ShortNameMode::kUnset) {
    base->short_name_mode = update.short_name_mode;
  }
  for (const auto& [k, v] : update.aliases) {
    base->aliases[k] = v;
    base->alias_origins[k] = update.alias_origins.count(k) ? update.alias_origins.at(k) : "";
  }
  base->files.insert(base->files.end(), update.files.begin(), update.files.end());
}

RegistriesConfPaths DefaultRegistriesConfPaths(const std::string& main_file) {
  RegistriesConfPaths p;
  p.main_file = main_file;
  if (const char* e = std::getenv("CONTAINERS_REGISTRIES_CONF"); e && *e) p.env_file = e;
  if (const char* h = std::getenv("HOME"); h && *h) p.home = h;
  if (geteuid() == 0) {
    p.alias_cache_file = "/var/cache/containers/short-name-aliases.conf";
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    p.alias_cache_file = std::string(x) + "/containers/short-name-aliases.conf";
  } else if (!p.home.empty()) {
    p.alias_cache_file = p.home + "/.cache/containers/short-name-aliases.conf";
  }
  return p;
}

Result<RegistriesConf> LoadRegistriesConf(const RegistriesConfPaths& paths) {
  const std::string user_file =
      paths.home.empty() ? "" : paths.home + "/.config/containers/registries.conf";
  const std::string user_dir =
      paths.home.empty() ? "" : paths.home + "/.config/containers/registries.conf.d";
  std::string main = !paths.main_file.empty() ? paths.main_file : paths.env_file;
  std::vector<std::string> dirs = {paths.system_dir, user_dir};
  bool must_exist = !main.empty();
  std::error_code ec;
  if (main.empty() && !user_file.empty() && std::filesystem::exists(user_file, ec)) {
    // The user's own file replaces the system's, drop-ins included.
    main = user_file;
    dirs = {user_dir};
  } else if (main.empty()) {
    main = paths.system_file;
  }
  RegistriesConf conf;
  if (must_exist || std::filesystem::exists(main, ec)) {
    ASSIGN_OR_RETURN(conf, LoadFile(main, false));
  }
  for (const std::string& dir : dirs) {
    if (dir.empty()) continue;
    for (const std::string& f : ConfFilesIn(dir)) {
      ASSIGN_OR_RETURN(RegistriesConf drop_in, LoadFile(f, true));
      MergeRegistriesConf(&conf, drop_in);
    }
  }
  // Aliases recorded by podman's prompts win over the configuration's.
  if (!paths.alias_cache_file.empty() && std::filesystem::exists(paths.alias_cache_file, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(paths.alias_cache_file));
    toml::table t;
    try {
      t = toml::parse(text, paths.alias_cache_file);
    } catch (const toml::parse_error& e) {
      return Bad(paths.alias_cache_file, std::string(e.description()));
    }
    RegistriesConf cached;
    RETURN_IF_ERROR(AddAliases(t, paths.alias_cache_file, &cached));
    for (const auto& [k, v] : cached.aliases) {
      conf.aliases[k] = v;
      conf.alias_origins[k] = paths.alias_cache_file;
    }
  }
  return conf;
}

int RefMatchingPrefix(std::string_view ref, std::string_view prefix) {
  auto boundary = [&](size_t i) {
    return i == ref.size() || ref[i] == ':' || ref[i] == '/' || ref[i] == '@';
  };
  if (prefix.rfind("*.", 0) == 0) {
    std::string_view dom = prefix.substr(1);  // ".example.com"
    size_t i = ref.find(dom);
    if (i == std::string_view::npos) return -1;
    if (ref.substr(0, i).find('/') != std::string_view::npos) return -1;
    i += dom.size();
    return boundary(i) ? static_cast<int>(i) : -1;
  }
  if (ref.size() < prefix.size() || ref.substr(0, prefix.size()) != prefix) return -1;
  return boundary(prefix.size()) ? static_cast<int>(prefix.size()) : -1;
}

const RegistryConf* FindRegistry(const RegistriesConf& conf, std::string_view name) {
  const RegistryConf* best = nullptr;
  for (const RegistryConf& r : conf.registries) {
    if (RefMatchingPrefix(name, r.prefix) != -1 && (!best || r.prefix.size() > best->prefix.size())) {
      best = &r;
    }
  }
  return best;
}

Result<std::vector<PullSource>> PullSources(const RegistriesConf& conf, const Reference& ref) {
  const std::string name = ref.registry + "/" + ref.repository;
  const RegistryConf* reg = FindRegistry(conf, name);
  if (!reg) {
    return std::vector<PullSource>{PullSource{ref.registry, false, false, ref}};
  }
  if (reg->blocked) {
    return Status::InvalidArgument("registry " + reg->prefix + " is blocked in " + conf.Origin());
  }
  const bool by_digest = !ref.digest.empty();
  std::vector<std::pair<const RegistryEndpointConf*, bool>> endpoints;
  for (const RegistryEndpointConf& m : reg->mirrors) {
    if (reg->mirror_by_digest_only && !by_digest) continue;
    if (m.pull_from_mirror == PullFromMirror::kDigestOnly && !by_digest) continue;
    if (m.pull_from_mirror == PullFromMirror::kTagOnly && by_digest) continue;
    endpoints.emplace_back(&m, true);
  }
  endpoints.emplace_back(&reg->endpoint, false);
  const std::string full = ref.Normalized();
  const int cut = RefMatchingPrefix(full, reg->prefix);
  if (cut < 0) {
    return Status::InvalidArgument("invalid prefix '" + reg->prefix + "' for reference '" + full +
                                   "'");
  }
  std::vector<PullSource> out;
  for (const auto& [ep, mirror] : endpoints) {
    PullSource s;
    s.insecure = ep->insecure;
    s.mirror = mirror;
    if (ep->location.empty()) {  // "*.example.com" without a location: as named
      s.ref = ref;
      s.location = ref.registry;
    } else {
      std::string rewritten = ep->location + full.substr(static_cast<size_t>(cut));
      Result<Reference> r = ParseReference(rewritten);
      if (!r.ok()) {
        return Status::InvalidArgument("rewriting " + full + " for " + ep->location + " (" +
                                       conf.Origin() + "): " + r.status().message());
      }
      s.ref = *r;
      s.location = ep->location;
    }
    out.push_back(std::move(s));
  }
  return out;
}

bool IsShortName(std::string_view input) {
  std::string_view name = input.substr(0, input.find('@'));
  size_t slash = name.find('/');
  if (slash == std::string_view::npos) return true;
  std::string_view first = name.substr(0, slash);
  return first.find_first_of(".:") == std::string_view::npos && first != "localhost";
}

Result<ShortNameResolution> ResolveShortName(const RegistriesConf& conf, std::string_view input) {
  ShortNameResolution res;
  if (!IsShortName(input)) {
    ASSIGN_OR_RETURN(Reference r, ParseReference(input));
    res.candidates.push_back(std::move(r));
    res.rationale = "fully qualified";
    return res;
  }
  // Validate the input as a whole before taking it apart.
  RETURN_IF_ERROR(ParseReference(input).status());
  std::string_view name = input.substr(0, input.find('@'));
  size_t slash = name.rfind('/');
  size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    name = name.substr(0, colon);
  }
  const std::string suffix(input.substr(name.size()));  // ":tag", "@digest", ":tag@digest"
  auto alias = conf.aliases.find(std::string(name));
  if (alias != conf.aliases.end() && !alias->second.empty()) {
    ASSIGN_OR_RETURN(Reference r, ParseReference(alias->second + suffix));
    res.candidates.push_back(std::move(r));
    res.rationale = "alias from " + conf.alias_origins.at(alias->first);
    return res;
  }
  const std::vector<std::string> search =
      conf.unqualified_search_registries.value_or(std::vector<std::string>());
  if (search.empty()) {
    ASSIGN_OR_RETURN(Reference r, ParseReference(input));
    res.candidates.push_back(std::move(r));
    res.rationale = "no alias and no unqualified-search registries: docker.io, as docker does";
    return res;
  }
  for (const std::string& reg : search) {
    Result<Reference> r = ParseReference(reg + "/" + std::string(input));
    if (!r.ok()) {
      return Status::InvalidArgument("creating a reference with unqualified-search registry '" +
                                     reg + "': " + r.status().message());
    }
    res.candidates.push_back(std::move(*r));
  }
  res.rationale = "unqualified-search registries from " + conf.search_registries_origin;
  const ShortNameMode mode = conf.EffectiveShortNameMode();
  if (mode == ShortNameMode::kEnforcing && res.candidates.size() > 1) {
    return Status::InvalidArgument(
        "short name '" + std::string(input) + "' is ambiguous (" +
        std::to_string(res.candidates.size()) + " unqualified-search registries in " +
        conf.search_registries_origin +
        ") and short-name-mode is enforcing: short-name resolution enforced but cannot prompt "
        "without a TTY; use a fully qualified reference or an [aliases] entry");
  }
  return res;
}

}  // namespace regfs
