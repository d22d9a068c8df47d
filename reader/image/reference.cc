// Reference parsing after docker's reference package (distribution/reference):
// grammar checks first, then normalisation (docker.io default, library/ prefix,
// index.docker.io alias, :latest default).
#include "reader/image/reference.h"

#include <string>
#include <vector>

#include "reader/base/digest.h"

namespace regfs {
namespace {

constexpr std::string_view kDefaultRegistry = "docker.io";
constexpr std::string_view kLegacyDefaultRegistry = "index.docker.io";
constexpr std::string_view kDefaultApiHost = "registry-1.docker.io";
constexpr size_t kMaxNameLength = 255;
constexpr size_t kMaxTagLength = 128;

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHex(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool HasUpper(std::string_view s) {
  for (char c : s) {
    if (c >= 'A' && c <= 'Z') return true;
  }
  return false;
}

Status Bad(std::string_view ref, std::string_view why) {
  return Status::InvalidArgument("invalid reference '" + std::string(ref) +
                                 "': " + std::string(why));
}

// path-component := [a-z0-9]+ (separator [a-z0-9]+)*
// separator := [_.] | "__" | "-"+
// Uppercase letters are checked separately so the error can say so.
bool ValidPathComponent(std::string_view c) {
  if (c.empty()) return false;
  auto alnum = [](char ch) { return IsLowerAlnum(ch) || (ch >= 'A' && ch <= 'Z'); };
  if (!alnum(c.front()) || !alnum(c.back())) return false;
  size_t i = 0;
  while (i < c.size()) {
    if (alnum(c[i])) {
      ++i;
      continue;
    }
    // A run of separator characters between two alphanumerics.
    size_t j = i;
    while (j < c.size() && !alnum(c[j])) ++j;
    std::string_view sep = c.substr(i, j - i);
    bool ok = sep == "." || sep == "_" || sep == "__" ||
              sep.find_first_not_of('-') == std::string_view::npos;
    if (!ok) return false;
    i = j;
  }
  return true;
}

// domain := domain-component ('.' domain-component)* (':' port)?
// domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
// IPv6 literals in brackets are accepted as docker's newer grammar does.
bool ValidDomain(std::string_view d) {
  std::string_view host = d, port;
  if (!d.empty() && d.front() == '[') {
    size_t close = d.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    for (char c : d.substr(1, close - 1)) {
      if (!IsHex(c) && c != ':') return false;
    }
    std::string_view rest = d.substr(close + 1);
    if (rest.empty()) return true;
    if (rest.front() != ':') return false;
    port = rest.substr(1);
    if (port.empty()) return false;
    for (char c : port) {
      if (!IsDigit(c)) return false;
    }
    return true;
  }
  size_t colon = d.find(':');
  if (colon != std::string_view::npos) {
    host = d.substr(0, colon);
    port = d.substr(colon + 1);
    if (port.empty()) return false;
    for (char c : port) {
      if (!IsDigit(c)) return false;
    }
  }
  if (host.empty()) return false;
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    std::string_view comp =
        host.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (comp.empty() || !IsAlnum(comp.front()) || !IsAlnum(comp.back())) return false;
    for (char c : comp) {
      if (!IsAlnum(c) && c != '-') return false;
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

// tag := [\w][\w.-]{0,127}
Status ValidateTag(std::string_view ref, std::string_view tag) {
  if (tag.empty()) return Bad(ref, "empty tag after ':'");
  if (tag.size() > kMaxTagLength) {
    return Bad(ref, "tag is " + std::to_string(tag.size()) + " characters; the limit is " +
                        std::to_string(kMaxTagLength));
  }
  auto word = [](char c) { return IsAlnum(c) || c == '_'; };
  if (!word(tag.front())) {
    return Bad(ref, "tag '" + std::string(tag) + "' must start with a letter, digit or '_'");
  }
  for (char c : tag) {
    if (!word(c) && c != '.' && c != '-') {
      return Bad(ref, "tag '" + std::string(tag) + "' has the character '" + std::string(1, c) +
                          "'; tags may hold letters, digits, '_', '.' and '-'");
    }
  }
  return Status::Ok();
}

}  // namespace

std::string Reference::Normalized() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

std::string Reference::ApiHost() const {
  if (registry == kDefaultRegistry) return std::string(kDefaultApiHost);
  return registry;
}

Result<Reference> ParseReference(std::string_view ref) {
  if (ref.empty()) return Bad(ref, "empty reference");
  for (char c : ref) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return Bad(ref, "contains whitespace or a control character");
    }
  }
  Reference out;

  // name [":" tag] ["@" digest]
  std::string_view name_tag = ref;
  size_t at = ref.find('@');
  if (at != std::string_view::npos) {
    name_tag = ref.substr(0, at);
    std::string_view digest = ref.substr(at + 1);
    if (digest.empty()) return Bad(ref, "empty digest after '@'");
    if (digest.find('@') != std::string_view::npos) return Bad(ref, "more than one '@'");
    Status st = ValidateDigest(digest);
    if (!st.ok()) {
      return Status(st.code() == Code::kUnsupported ? Code::kUnsupported : Code::kInvalidArgument,
                    "invalid reference '" + std::string(ref) + "': " + st.message());
    }
    out.digest = std::string(digest);
  }
  if (name_tag.empty()) return Bad(ref, "no repository name before '@'");

  std::string_view name = name_tag;
  size_t last_slash = name_tag.rfind('/');
  size_t colon = name_tag.rfind(':');
  if (colon != std::string_view::npos &&
      (last_slash == std::string_view::npos || colon > last_slash)) {
    name = name_tag.substr(0, colon);
    std::string_view tag = name_tag.substr(colon + 1);
    RETURN_IF_ERROR(ValidateTag(ref, tag));
    out.tag = std::string(tag);
  }
  if (name.empty()) return Bad(ref, "no repository name");
  if (name.size() > kMaxNameLength) {
    return Bad(ref,
               "repository name is longer than " + std::to_string(kMaxNameLength) + " characters");
  }
  if (name.back() == '/') return Bad(ref, "repository name ends with '/'");
  if (name.front() == '/') return Bad(ref, "repository name starts with '/'");
  if (name.size() == 64 && name.find_first_not_of("0123456789abcdef") == std::string_view::npos) {
    return Bad(ref, "a 64-character hexadecimal string is an image ID, not a repository name");
  }

  // The first component is a registry when it looks like a host: contains
  // '.' or ':', is "localhost", or has uppercase letters (repository names
  // cannot, so docker takes it for a host).
  std::string_view domain, remainder = name;
  size_t slash = name.find('/');
  if (slash != std::string_view::npos) {
    std::string_view first = name.substr(0, slash);
    if (first.find_first_of(".:[") != std::string_view::npos || first == "localhost" ||
        HasUpper(first)) {
      domain = first;
      remainder = name.substr(slash + 1);
    }
  }
  if (!domain.empty() && !ValidDomain(domain)) {
    return Bad(ref, "registry host '" + std::string(domain) + "' is not a valid host[:port]");
  }
  std::vector<std::string_view> components;
  size_t start = 0;
  while (true) {
    size_t s = remainder.find('/', start);
    std::string_view comp = remainder.substr(start, s == std::string_view::npos ? s : s - start);
    if (comp.empty()) return Bad(ref, "empty path component ('//')");
    components.push_back(comp);
    if (s == std::string_view::npos) break;
    start = s + 1;
  }
  if (HasUpper(remainder)) return Bad(ref, "repository name must be lowercase");
  for (std::string_view comp : components) {
    if (!ValidPathComponent(comp)) {
      return Bad(ref, "path component '" + std::string(comp) +
                          "' must be lowercase letters and digits, separated by '.', '_', "
                          "'__' or dashes");
    }
  }

  out.registry = domain.empty() ? std::string(kDefaultRegistry) : std::string(domain);
  if (out.registry == kLegacyDefaultRegistry) out.registry = std::string(kDefaultRegistry);
  out.repository = std::string(remainder);
  if (out.registry == kDefaultRegistry && components.size() == 1) {
    out.repository = "library/" + out.repository;
  }
  if (out.tag.empty() && out.digest.empty()) out.tag = "latest";
  return out;
}

}  // namespace regfs
