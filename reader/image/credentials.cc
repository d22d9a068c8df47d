// Credential lookup in auth files and docker credential helpers. Helpers run
// as child processes with their stdio on pipes; the child is always reaped,
// killed first when it outlives the timeout.
#include "reader/image/credentials.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "reader/base/base64.h"
#include "reader/base/file_util.h"
#include "reader/base/unique_fd.h"

extern char** environ;

namespace regfs {
namespace {

using nlohmann::json;

constexpr std::string_view kDockerHubAuthKey = "https://index.docker.io/v1/";
constexpr size_t kMaxHelperOutput = 1 << 20;
constexpr size_t kMaxAuthFileSize = 16 << 20;

// A spawned child that is always reaped: killed and waited for in the
// destructor unless Wait() already collected it.
class ChildProcess {
 public:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Returns the wait status.
  int Wait() {
    int status = 0;
    while (pid_ > 0 && ::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
};

struct SpawnActions {
  posix_spawn_file_actions_t fa;
  SpawnActions() { posix_spawn_file_actions_init(&fa); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&fa); }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// "https://host/v1/" -> "host"; "host" -> "host".
std::string NormalizeKey(std::string_view key) {
  if (key.starts_with("https://")) {
    key.remove_prefix(8);
  } else if (key.starts_with("http://")) {
    key.remove_prefix(7);
  }
  size_t slash = key.find('/');
  if (slash != std::string_view::npos) key = key.substr(0, slash);
  return std::string(key);
}

bool IsDockerHub(std::string_view host) {
  return host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io";
}

bool KeyMatches(std::string_view key, std::string_view registry) {
  std::string k = NormalizeKey(key);
  if (k == registry) return true;
  return IsDockerHub(registry) && IsDockerHub(k);
}

// The server string handed to helpers: docker passes the legacy Hub URL.
std::string HelperServer(std::string_view registry) {
  return IsDockerHub(registry) ? std::string(kDockerHubAuthKey) : std::string(registry);
}

Result<std::string> FindHelper(std::string_view name, const CredentialOptions& opts) {
  if (name.empty() || name.find('/') != std::string_view::npos) {
    return Status::InvalidArgument("credential helper name '" + std::string(name) +
                                   "' is not valid");
  }
  std::string path = opts.helper_path.empty() ? Env("PATH") : opts.helper_path;
  if (path.empty()) path = "/usr/local/bin:/usr/bin:/bin";
  std::string exe = "docker-credential-" + std::string(name);
  size_t start = 0;
  while (start <= path.size()) {
    size_t colon = path.find(':', start);
    std::string dir = path.substr(start, colon == std::string::npos ? colon : colon - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + exe;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return Status::NotFound("credential helper " + exe + " is not on the PATH");
}

Credentials FromUserSecret(std::string user, std::string secret, std::string source) {
  Credentials c;
  c.username = std::move(user);
  c.password = std::move(secret);
  c.source = std::move(source);
  return c;
}

// One "auths" entry; nullopt when it holds nothing usable (docker writes
// empty entries next to a credsStore).
Result<std::optional<Credentials>> ParseAuthEntry(const json& e, const std::string& source) {
  if (!e.is_object())
    return Status::InvalidArgument(source + ": an 'auths' entry is not an object");
  auto str = [&](const char* k) -> std::string {
    auto it = e.find(k);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string token = str("identitytoken");
  if (!token.empty()) {
    return std::optional<Credentials>(FromUserSecret("<token>", token, source));
  }
  std::string auth = str("auth");
  if (!auth.empty()) {
    auto decoded = Base64Decode(auth);
    if (!decoded) return Status::InvalidArgument(source + ": invalid base64 in 'auth'");
    size_t colon = decoded->find(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument(source + ": 'auth' does not decode to user:password");
    }
    return std::optional<Credentials>(
        FromUserSecret(decoded->substr(0, colon), decoded->substr(colon + 1), source));
  }
  std::string user = str("username"), pass = str("password");
  if (!user.empty() || !pass.empty()) {
    return std::optional<Credentials>(FromUserSecret(user, pass, source));
  }
  return std::optional<Credentials>();
}

// Looks in one file. Returns {found, creds}: found is false when the file has
// nothing for the registry, so the search goes on to the next file.
Result<std::pair<bool, std::optional<Credentials>>> LookupInFile(const std::string& path,
                                                                 std::string_view registry,
                                                                 const CredentialOptions& opts) {
  using Out = std::pair<bool, std::optional<Credentials>>;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Out{false, std::nullopt};  // missing: skip
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file");
  if (static_cast<size_t>(st.st_size) > kMaxAuthFileSize) {
    return Status::InvalidArgument(path + ": too large for an auth file");
  }
  Result<std::string> text = ReadFileToString(path);
  if (!text.ok()) return Status::InvalidArgument(path + ": cannot be read");
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(path + ": malformed JSON in auth file");
  }

  auto helpers = j.find("credHelpers");
  if (helpers != j.end()) {
    if (!helpers->is_object()) return Status::InvalidArgument(path + ": 'credHelpers' malformed");
    // Exact key first, then aliases.
    for (int pass = 0; pass < 2; ++pass) {
      for (auto it = helpers->begin(); it != helpers->end(); ++it) {
        bool match = pass == 0 ? it.key() == registry : KeyMatches(it.key(), registry);
        if (!match) continue;
        if (!it->is_string()) return Status::InvalidArgument(path + ": 'credHelpers' malformed");
        ASSIGN_OR_RETURN(auto creds,
                         RunCredentialHelper(it->get<std::string>(), HelperServer(registry), opts));
        return Out{true, std::move(creds)};
      }
    }
  }

  auto auths = j.find("auths");
  if (auths != j.end()) {
    if (!auths->is_object()) return Status::InvalidArgument(path + ": 'auths' malformed");
    for (int pass = 0; pass < 2; ++pass) {
      for (auto it = auths->begin(); it != auths->end(); ++it) {
        bool match = pass == 0 ? it.key() == registry : KeyMatches(it.key(), registry);
        if (!match) continue;
        ASSIGN_OR_RETURN(auto creds, ParseAuthEntry(*it, path));
        if (creds) return Out{true, std::move(creds)};
      }
    }
  }

  auto store = j.find("credsStore");
  if (store != j.end()) {
    if (!store->is_string()) return Status::InvalidArgument(path + ": 'credsStore' malformed");
    if (!store->get<std::string>().empty()) {
      ASSIGN_OR_RETURN(
          auto creds, RunCredentialHelper(store->get<std::string>(), HelperServer(registry), opts));
      if (creds) return Out{true, std::move(creds)};
    }
  }
  return Out{false, std::nullopt};
}

}  // namespace

std::string Credentials::ToString() const {
  return (username.empty() ? std::string("<no user>") : username) + "@" +
         (source.empty() ? std::string("?") : source) + " (password redacted)";
}

Result<std::optional<Credentials>> RunCredentialHelper(std::string_view helper,
                                                       std::string_view server_url,
                                                       const CredentialOptions& opts) {
  const std::string name = "docker-credential-" + std::string(helper);
  ASSIGN_OR_RETURN(std::string exe, FindHelper(helper, opts));

  // stdin is a socket pair so that writing to a helper that already exited
  // gives EPIPE (MSG_NOSIGNAL) instead of killing us with SIGPIPE.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return Status::IoError(name + ": socketpair: " + std::strerror(errno));
  }
  UniqueFd in_parent(sv[0]), in_child(sv[1]);
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0)
    return Status::IoError(name + ": pipe: " + std::strerror(errno));
  UniqueFd out_read(out[0]), out_write(out[1]);
  if (::pipe2(err, O_CLOEXEC) != 0)
    return Status::IoError(name + ": pipe: " + std::strerror(errno));
  UniqueFd err_read(err[0]), err_write(err[1]);

  SpawnActions actions;
  posix_spawn_file_actions_adddup2(&actions.fa, in_child.get(), 0);
  posix_spawn_file_actions_adddup2(&actions.fa, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions.fa, err_write.get(), 2);
  posix_spawn_file_actions_addclosefrom_np(&actions.fa, 3);
  std::string arg0 = name, arg1 = "get";
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe.c_str(), &actions.fa, nullptr, argv, environ);
  if (rc != 0) return Status::IoError(name + ": cannot run: " + std::strerror(rc));
  ChildProcess child(pid);
  in_child.Reset();
  out_write.Reset();
  err_write.Reset();

  std::string request(server_url);
  if (::send(in_parent.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0 && errno != EPIPE) {
    return Status::IoError(name + ": writing stdin: " + std::strerror(errno));
  }
  in_parent.Reset();  // EOF for the helper

  std::string stdout_data, stderr_data;
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.helper_timeout_ms);
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::Transient(name + ": timed out after " +
                               std::to_string(opts.helper_timeout_ms) + " ms");
    }
    pollfd fds[2] = {{out_open ? out_read.get() : -1, POLLIN, 0},
                     {err_open ? err_read.get() : -1, POLLIN, 0}};
    int n = ::poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IoError(name + ": poll: " + std::strerror(errno));
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t r = ::read(fds[i].fd, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      std::string& dst = i == 0 ? stdout_data : stderr_data;
      if (dst.size() + static_cast<size_t>(r) > kMaxHelperOutput) {
        return Status::Protocol(name + ": output too large");
      }
      dst.append(buf, static_cast<size_t>(r));
    }
  }
  int status = child.Wait();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string msg = stdout_data + stderr_data;
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    if (msg.find("credentials not found") != std::string::npos) {
      return std::optional<Credentials>();
    }
    if (msg.size() > 200) msg.resize(200);
    return Status::Unauthorized(name + " get failed (" +
                                (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                                   : std::string("killed by a signal")) +
                                "): " + msg);
  }
  json j = json::parse(stdout_data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Protocol(name + ": answered something that is not a JSON object");
  }
  auto user = j.find("Username");
  auto secret = j.find("Secret");
  if (user == j.end() || !user->is_string() || secret == j.end() || !secret->is_string()) {
    return Status::Protocol(name + ": answer lacks string fields Username and Secret");
  }
  return std::optional<Credentials>(
      FromUserSecret(user->get<std::string>(), secret->get<std::string>(), name));
}

Result<std::optional<Credentials>> LookupCredentials(std::string_view registry,
                                                     const CredentialOptions& opts) {
  if (opts.explicit_creds) return std::optional<Credentials>(*opts.explicit_creds);
  auto pick = [&](const std::string& override_value, const char* env) {
    if (!override_value.empty()) return override_value;
    return opts.use_env ? Env(env) : std::string();
  };
  std::vector<std::string> files;
  if (!opts.authfile.empty()) files.push_back(opts.authfile);
  std::string raf = pick(opts.registry_auth_file, "REGISTRY_AUTH_FILE");
  if (!raf.empty()) files.push_back(raf);
  std::string xdg = pick(opts.xdg_runtime_dir, "XDG_RUNTIME_DIR");
  if (!xdg.empty()) files.push_back(xdg + "/containers/auth.json");
  std::string home = pick(opts.home, "HOME");
  if (!home.empty()) files.push_back(home + "/.docker/config.json");

  for (const std::string& f : files) {
    ASSIGN_OR_RETURN(auto found, LookupInFile(f, registry, opts));
    if (found.first) return std::move(found.second);
  }
  return std::optional<Credentials>();
}

Result<Credentials> ParseCredsFlag(std::string_view s) {
  size_t colon = s.find(':');
  if (colon == std::string_view::npos) {
    return Status::InvalidArgument("--creds must be USER:PASSWORD (no ':' found)");
  }
  if (colon == 0) return Status::InvalidArgument("--creds has an empty user name");
  return FromUserSecret(std::string(s.substr(0, colon)), std::string(s.substr(colon + 1)),
                        "--creds");
}

namespace {

std::string LowerHost(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (out == "index.docker.io" || out == "registry-1.docker.io") out = "docker.io";
  return out;
}

std::string_view TrimBlanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

bool LooksLikeRegistryHost(std::string_view s) {
  std::string_view host = s, port;
  if (!s.empty() && s.front() == '[') {  // [v6]:port
    size_t close = s.find(']');
    if (close == std::string_view::npos) return false;
    host = s.substr(1, close - 1);
    std::string_view rest = s.substr(close + 1);
    if (!rest.empty() && (rest.front() != ':' || rest.size() == 1)) return false;
    if (!rest.empty()) port = rest.substr(1);
    if (host.empty() ||
        host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string_view::npos)
      return false;
  } else {
    size_t colon = s.find(':');
    if (colon != std::string_view::npos) {
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      if (port.empty()) return false;
    }
    if (host.empty() || host.front() == '-' || host.front() == '.' ||
        host.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
            std::string_view::npos) {
      return false;
    }
  }
  if (!port.empty() &&
      (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)) {
    return false;
  }
  return !port.empty() || host.find('.') != std::string_view::npos || host == "localhost" ||
         s.front() == '[';
}

size_t CredsEntryUserStart(std::string_view entry) {
  size_t eq = entry.find('=');
  if (eq == std::string_view::npos || !LooksLikeRegistryHost(entry.substr(0, eq))) return 0;
  return eq + 1;
}

Result<RegistryCredentials> ParseRegistryCreds(std::string_view entry,
                                               std::string_view default_registry) {
  const size_t start = CredsEntryUserStart(entry);
  RegistryCredentials out;
  if (start > 0) {
    out.registry = LowerHost(entry.substr(0, start - 1));
  } else if (default_registry.empty()) {
    return Status::InvalidArgument(
        "--creds USER:PASSWORD names no registry, and the store resolves images from any "
        "registry: give --creds HOST=USER:PASSWORD (repeatable), e.g. "
        "--creds registry.example.com=alice:secret");
  } else {
    out.registry = LowerHost(default_registry);
  }
  ASSIGN_OR_RETURN(out.creds, ParseCredsFlag(entry.substr(start)));
  if (start > 0) out.creds.source = "--creds for " + out.registry;
  return out;
}

std::vector<std::string> SplitCredsEntries(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = TrimBlanks(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    out.emplace_back(line);
  }
  return out;
}

std::optional<Credentials> CredentialsForRegistry(const std::vector<RegistryCredentials>& entries,
                                                  std::string_view registry) {
  const std::string want = LowerHost(registry);
  for (const RegistryCredentials& e : entries) {
    if (e.registry == want) return e.creds;
  }
  return std::nullopt;
}

}  // namespace regfs
