// Options shared by the regfs subcommands, as skopeo and podman spell them,
// and their translation into the reader's and cache's option structs.
#ifndef REGFS_FS_OPTIONS_H_
#define REGFS_FS_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "reader/http/mirror_set.h"
#include "reader/http/registry_client.h"
#include "reader/image/registries_conf.h"

namespace regfs {

struct CommonOptions {
  std::string platform;          // "os/arch[/variant]"; empty = this host
  bool tls_verify = true;        // --tls-verify=false for plain http / self-signed
  std::string authfile;          // --authfile
  // --creds (repeatable), then the lines of --creds-file, then those of
  // $REGFS_CREDS: "HOST=USER:PASSWORD" for registry HOST, or "USER:PASSWORD"
  // for `creds_registry`. Each registry gets only its own (the first given).
  std::vector<std::string> creds;
  // The registry a plain "USER:PASSWORD" is for: the image's, for mount and
  // inspect; empty for the store, which then refuses plain entries.
  std::string creds_registry;
  std::string creds_file;  // --creds-file, read into `creds` by the command line
  std::string cert_dir;          // --cert-dir: CAs and client certificate (ReadCertDir)
  std::string cache_dir;         // --cache-dir; empty = DefaultCacheDir()
  std::string cache_max_size;    // --cache-max-size, "10G"
  double retry_timeout_s = 25;   // per request, all retries included
  int verbose = 0;               // -v: info, -vv: debug
  // --allow-registry (store): the only registries ("host[:port]") whose
  // images may be resolved; empty = any. See RegistryAllowed.
  std::vector<std::string> allow_registries;
  // --idle-timeout (store): a layer unused this long, and held by nothing
  // in the kernel, is released (its tree, index, reader, client); 0 = never.
  double idle_timeout_s = 600;
  // --registries-conf: the registries.conf to read instead of
  // $CONTAINERS_REGISTRIES_CONF / ~/.config / /etc (drop-ins still apply,
  // as with podman's CONTAINERS_REGISTRIES_CONF).
  std::string registries_conf;
};

// Whether images of `registry_host` ("host[:port]", as in Reference::registry)
// may be resolved under o.allow_registries: any when the list is empty, else
// only a listed one. Host names compare without case; index.docker.io and
// registry-1.docker.io are docker.io, as a parsed reference spells it. A port
// must match exactly ("host" does not allow "host:5000").
bool RegistryAllowed(const CommonOptions& o, std::string_view registry_host);

// "10G", "512M", "4096", "1.5G" -> bytes (powers of 1024).
Result<uint64_t> ParseSize(const std::string& s);

// The --creds credentials for `registry` ("host[:port]"), or nullopt (then
// the auth files are asked). InvalidArgument for a malformed entry, or a
// plain USER:PASSWORD without `creds_registry`.
Result<std::optional<Credentials>> CredsForRegistry(const CommonOptions& o,
                                                    const std::string& registry);

// Builds RegistryClientOptions (credentials included) from the flags for
// `registry` ("host[:port]"): credentials given for another registry are
// never among them, so a call per registry host gives each its own. The
// registry's certificates come from --cert-dir, or else, as podman and
// skopeo do, from /etc/containers/certs.d/<registry>/ when that exists (see
// ReadCertDir). An unreadable --cert-dir, or a client certificate without
// its key, is an error.
Result<RegistryClientOptions> MakeClientOptions(const CommonOptions& o,
                                                const std::string& registry);

// registries.conf as podman reads it, --registries-conf first (see
// reader/image/registries_conf.h).
Result<RegistriesConf> LoadRegistriesConfFromFlags(const CommonOptions& o);

// The endpoints to pull `ref` from (registries.conf's mirrors, then the
// primary), each with its own client options from the flags: credentials
// for its own host, its certs.d directory, TLS verification off for an
// `insecure` endpoint. InvalidArgument for a blocked registry.
Result<std::unique_ptr<MirrorSet>> MakeMirrorSet(const CommonOptions& o, const RegistriesConf& conf,
                                                 const Reference& ref,
                                                 const std::atomic<bool>* cancel = nullptr);

// What a certificate directory holds, in containers/image's layout: *.crt
// are CAs trusted besides the system's; X.cert with X.key is a client
// certificate and its key (the first pair by name when there are several).
struct CertDir {
  std::string ca_pem;  // the concatenated *.crt files
  std::string client_cert_pem, client_key_pem;
};
// InvalidArgument for an X.cert without X.key or an X.key without X.cert.
Result<CertDir> ReadCertDir(const std::string& dir);

}  // namespace regfs

#endif  // REGFS_FS_OPTIONS_H_
