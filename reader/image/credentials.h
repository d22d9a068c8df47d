// Registry credentials from the files podman, skopeo and docker read, in their
// order: an explicit --authfile, $REGISTRY_AUTH_FILE,
// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json. Within a file:
// "credHelpers"[host] then "auths"[host] (also matched as "https://host",
// "host/v1/" and, for docker.io, "https://index.docker.io/v1/") then
// "credsStore". Helpers run as `docker-credential-<name> get` with the server
// on stdin, answering {"Username":..,"Secret":..}.
//
// Secrets are held in Credentials only and never logged: ToString() redacts.
#ifndef REGFS_READER_IMAGE_CREDENTIALS_H_
#define REGFS_READER_IMAGE_CREDENTIALS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"

namespace regfs {

struct Credentials {
  std::string username;
  std::string password;          // or an identity token when username is "<token>"
  std::string source;            // which file or helper it came from, for logs
  std::string ToString() const;  // "user@source (password redacted)"
};

struct CredentialOptions {
  std::string authfile;                       // --authfile; empty = search the usual places
  std::optional<Credentials> explicit_creds;  // --creds user:pass wins over files
  // For tests: overrides of the environment ($HOME etc.); empty = getenv.
  std::string home, xdg_runtime_dir, registry_auth_file;
  bool use_env = true;
  // Where docker-credential-<name> helpers are looked up: a PATH-style list;
  // empty = $PATH. A helper that runs longer than the timeout is killed.
  std::string helper_path;
  int helper_timeout_ms = 30000;
};

// The credentials for `registry` (as in Reference::registry), or nullopt for
// anonymous. A malformed file is an error (InvalidArgument naming the file); a
// missing file is skipped; a helper that fails is an error naming the helper.
Result<std::optional<Credentials>> LookupCredentials(std::string_view registry,
                                                     const CredentialOptions& opts);

// Runs `docker-credential-<helper> get` for `server_url`. nullopt when the
// helper says it has no credentials for it; an error naming the helper when
// it cannot run, times out, or answers malformed JSON.
Result<std::optional<Credentials>> RunCredentialHelper(std::string_view helper,
                                                       std::string_view server_url,
                                                       const CredentialOptions& opts);

// "user:pass" as --creds takes it.
Result<Credentials> ParseCredsFlag(std::string_view s);

// Credentials given for one registry only (--creds HOST=USER:PASSWORD).
struct RegistryCredentials {
  std::string registry;  // as Reference::registry spells it: "host[:port]"
  Credentials creds;
};

// Whether `s` is a registry host as docker tells one in a reference's first
// component: host characters only, with a '.' or a ":port" or "localhost".
bool LooksLikeRegistryHost(std::string_view s);

// Where the USER:PASSWORD part of a --creds entry starts: after "HOST=" when
// the text before the first '=' is a registry host, else 0.
size_t CredsEntryUserStart(std::string_view entry);

// One --creds entry: "HOST=USER:PASSWORD" for registry HOST, or a plain
// "USER:PASSWORD" for `default_registry` (the registry of the one image
// mounted or inspected). InvalidArgument for a plain entry without a default
// registry (the store, which serves images from any registry), naming the
// HOST=USER:PASSWORD spelling. Messages never hold the password.
Result<RegistryCredentials> ParseRegistryCreds(std::string_view entry,
                                               std::string_view default_registry);

// The entries of a --creds-file or $REGFS_CREDS: one per line; blank lines
// and lines starting with '#' are skipped, surrounding blanks trimmed.
std::vector<std::string> SplitCredsEntries(std::string_view text);

// Of `entries`, the first for `registry` (host names compare without case;
// docker.io, index.docker.io and registry-1.docker.io are one), or nullopt.
std::optional<Credentials> CredentialsForRegistry(const std::vector<RegistryCredentials>& entries,
                                                  std::string_view registry);

}  // namespace regfs

#endif  // REGFS_READER_IMAGE_CREDENTIALS_H_
