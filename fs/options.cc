#include "fs/options.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "reader/base/file_util.h"

namespace regfs {

Result<uint64_t> ParseSize(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    return Status::InvalidArgument("not a size: '" + s + "'");
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (unit.size() == 2 && unit[1] == 'I') unit.pop_back();
  double mult = 1;
  if (unit.empty()) {
  } else if (unit == "K") {
    mult = 1024.0;
  } else if (unit == "M") {
    mult = 1024.0 * 1024;
  } else if (unit == "G") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "T") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return Status::InvalidArgument("unknown size unit in '" + s + "' (use K, M, G or T)");
  }
  if (!(v >= 0) || std::isinf(v)) return Status::InvalidArgument("not a size: '" + s + "'");
  return static_cast<uint64_t>(v * mult);
}

namespace {

// The spelling a parsed reference uses for a registry: Docker Hub's other
// names are docker.io (reader/image/reference.cc), and host names have no case.
std::string CanonicalRegistry(std::string_view host) {
  std::string h(host);
  for (char& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (h == "index.docker.io" || h == "registry-1.docker.io") return "docker.io";
  return h;
}

}  // namespace

bool RegistryAllowed(const CommonOptions& o, std::string_view registry_host) {
  if (o.allow_registries.empty()) return true;
  const std::string host = CanonicalRegistry(registry_host);
  return std::any_of(o.allow_registries.begin(), o.allow_registries.end(),
                     [&](const std::string& a) { return CanonicalRegistry(a) == host; });
}

Result<CertDir> ReadCertDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return Status::NotFound("certificate directory " + dir + ": " + ec.message());
  std::vector<std::filesystem::path> cas, certs, keys;
  for (const auto& e : it) {
    const std::filesystem::path ext = e.path().extension();
    if (ext == ".crt") cas.push_back(e.path());
    if (ext == ".cert") certs.push_back(e.path());
    if (ext == ".key") keys.push_back(e.path());
  }
  std::sort(cas.begin(), cas.end());
  std::sort(certs.begin(), certs.end());
  CertDir out;
  for (const auto& f : cas) {
    ASSIGN_OR_RETURN(std::string crt, ReadFileToString(f.string()));
    out.ca_pem += crt + "\n";
  }
  // As containers/image: every key needs its certificate and the reverse.
  using Paths = std::vector<std::filesystem::path>;
  auto paired = [&dir](const Paths& from, const Paths& to, const char* from_what,
                       const char* to_ext, const char* to_what) -> Status {
    for (const auto& f : from) {
      if (std::find(to.begin(), to.end(), std::filesystem::path(f).replace_extension(to_ext)) ==
          to.end()) {
        return Status::InvalidArgument("certificate directory " + dir + ": " + from_what + " " +
                                       f.filename().string() + " has no " + to_what + " " +
                                       f.stem().string() + to_ext);
      }
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(paired(keys, certs, "key", ".cert", "client certificate"));
  RETURN_IF_ERROR(paired(certs, keys, "client certificate", ".key", "key"));
  if (!certs.empty()) {
    ASSIGN_OR_RETURN(out.client_cert_pem, ReadFileToString(certs[0].string()));
    ASSIGN_OR_RETURN(out.client_key_pem,
                     ReadFileToString(std::filesystem::path(certs[0]).replace_extension(".key")));
  }
  return out;
}

Result<std::optional<Credentials>> CredsForRegistry(const CommonOptions& o,
                                                    const std::string& registry) {
  std::vector<RegistryCredentials> entries;
  for (const std::string& e : o.creds) {
    ASSIGN_OR_RETURN(RegistryCredentials rc, ParseRegistryCreds(e, o.creds_registry));
    entries.push_back(std::move(rc));
  }
  return CredentialsForRegistry(entries, registry);
}

Result<RegistryClientOptions> MakeClientOptions(const CommonOptions& o,
                                                const std::string& registry) {
  RegistryClientOptions c;
  c.tls_verify = o.tls_verify;
  std::string dir = o.cert_dir;
  if (dir.empty() && registry.find('/') == std::string::npos &&
      std::filesystem::is_directory("/etc/containers/certs.d/" + registry)) {
    dir = "/etc/containers/certs.d/" + registry;
  }
  if (!dir.empty()) {
    ASSIGN_OR_RETURN(CertDir certs, ReadCertDir(dir));
    c.extra_ca_pem = std::move(certs.ca_pem);
    c.client_cert_pem = std::move(certs.client_cert_pem);
    c.client_key_pem = std::move(certs.client_key_pem);
  }
  c.credentials.authfile = o.authfile;
  ASSIGN_OR_RETURN(c.credentials.explicit_creds, CredsForRegistry(o, registry));
  if (o.retry_timeout_s > 0) {
    c.retry.total_budget =
        std::chrono::milliseconds(static_cast<int64_t>(o.retry_timeout_s * 1000));
  }
  return c;
}

Result<RegistriesConf> LoadRegistriesConfFromFlags(const CommonOptions& o) {
  return LoadRegistriesConf(DefaultRegistriesConfPaths(o.registries_conf));
}

Result<std::unique_ptr<MirrorSet>> MakeMirrorSet(const CommonOptions& o, const RegistriesConf& conf,
                                                 const Reference& ref,
                                                 const std::atomic<bool>* cancel) {
  ASSIGN_OR_RETURN(std::vector<PullSource> sources, PullSources(conf, ref));
  std::vector<MirrorEndpoint> eps;
  for (PullSource& s : sources) {
    MirrorEndpoint e;
    ASSIGN_OR_RETURN(e.options, MakeClientOptions(o, s.ref.registry));
    e.options.tls_verify = o.tls_verify && !s.insecure;
    e.options.cancel = cancel;
    e.location = std::move(s.location);
    e.mirror = s.mirror;
    e.ref = std::move(s.ref);
    eps.push_back(std::move(e));
  }
  return MirrorSet::Create(std::move(eps));
}

}  // namespace regfs
