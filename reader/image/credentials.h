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

}  // namespace regfs

#endif  // REGFS_READER_IMAGE_CREDENTIALS_H_
