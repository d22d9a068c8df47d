// Options shared by the regfs subcommands, as skopeo and podman spell them,
// and their translation into the reader's and cache's option structs.
#ifndef REGFS_FS_OPTIONS_H_
#define REGFS_FS_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "reader/base/status.h"
#include "reader/http/registry_client.h"

namespace regfs {

struct CommonOptions {
  std::string platform;          // "os/arch[/variant]"; empty = this host
  bool tls_verify = true;        // --tls-verify=false for plain http / self-signed
  std::string authfile;          // --authfile
  std::string creds;             // --creds user:pass
  std::string cert_dir;          // --cert-dir: *.crt CAs trusted for the registry
  std::string cache_dir;         // --cache-dir; empty = DefaultCacheDir()
  std::string cache_max_size;    // --cache-max-size, "10G"
  double retry_timeout_s = 25;   // per request, all retries included
  int verbose = 0;               // -v: info, -vv: debug
};

// "10G", "512M", "4096", "1.5G" -> bytes (powers of 1024).
Result<uint64_t> ParseSize(const std::string& s);

// Builds RegistryClientOptions (credentials included) from the flags for
// `registry` ("host[:port]"). The registry's CA certificates (*.crt) come from
// --cert-dir, or else, as podman and skopeo do, from
// /etc/containers/certs.d/<registry>/ when that exists; they are trusted
// besides the system's. An unreadable --cert-dir is an error.
Result<RegistryClientOptions> MakeClientOptions(const CommonOptions& o,
                                                const std::string& registry);
// The concatenated *.crt files of `dir`; "" when there are none.
Result<std::string> ReadCertDir(const std::string& dir);

}  // namespace regfs

#endif  // REGFS_FS_OPTIONS_H_
