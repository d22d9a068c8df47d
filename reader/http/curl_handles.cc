#include "reader/http/curl_handles.h"

#include <algorithm>
#include <cctype>
#include <mutex>

namespace regfs {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

Result<std::string> GetPart(CURLU* u, CURLUPart part, unsigned flags) {
  char* raw = nullptr;
  CURLUcode rc = curl_url_get(u, part, &raw, flags);
  CurlStringPtr owned(raw);
  if (rc != CURLUE_OK || !owned) {
    return Status::InvalidArgument(std::string("URL part missing: ") + curl_url_strerror(rc));
  }
  return std::string(owned.get());
}

Result<CurlUrlPtr> ParseUrl(std::string_view url) {
  if (!EnsureCurlGlobalInit()) return Status::IoError("curl_global_init failed");
  CurlUrlPtr u(curl_url());
  if (!u) return Status::IoError("curl_url: out of memory");
  std::string s(url);
  CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, s.c_str(), 0);
  if (rc != CURLUE_OK) {
    return Status::InvalidArgument("bad URL " + RedactUrl(url) + ": " + curl_url_strerror(rc));
  }
  return u;
}

Status CheckHttpScheme(CURLU* u, std::string_view url) {
  ASSIGN_OR_RETURN(std::string scheme, GetPart(u, CURLUPART_SCHEME, 0));
  scheme = Lower(scheme);
  if (scheme != "http" && scheme != "https") {
    return Status::InvalidArgument("URL scheme not http(s): " + RedactUrl(url));
  }
  return Status::Ok();
}

}  // namespace

bool EnsureCurlGlobalInit() {
  static const bool ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
  return ok;
}

CurlEasyPtr NewCurlEasy() {
  if (!EnsureCurlGlobalInit()) return nullptr;
  return CurlEasyPtr(curl_easy_init());
}

bool CurlHeaderList::Append(const std::string& line) {
  curl_slist* next = curl_slist_append(list_.get(), line.c_str());
  if (!next) return false;  // the old list is untouched and still owned
  list_.release();
  list_.reset(next);
  return true;
}

std::string UrlOrigin::ToString() const { return scheme + "://" + host + ":" + port; }

Result<UrlOrigin> OriginOf(std::string_view url) {
  ASSIGN_OR_RETURN(CurlUrlPtr u, ParseUrl(url));
  RETURN_IF_ERROR(CheckHttpScheme(u.get(), url));
  UrlOrigin o;
  ASSIGN_OR_RETURN(o.scheme, GetPart(u.get(), CURLUPART_SCHEME, 0));
  ASSIGN_OR_RETURN(o.host, GetPart(u.get(), CURLUPART_HOST, 0));
  ASSIGN_OR_RETURN(o.port, GetPart(u.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT));
  o.scheme = Lower(o.scheme);
  o.host = Lower(o.host);
  return o;
}

Result<std::string> ResolveUrl(std::string_view base, std::string_view location) {
  ASSIGN_OR_RETURN(CurlUrlPtr u, ParseUrl(base));
  std::string loc(location);
  CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, loc.c_str(), 0);
  if (rc != CURLUE_OK) {
    return Status::InvalidArgument("bad redirect location " + RedactUrl(location) + ": " +
                                   curl_url_strerror(rc));
  }
  RETURN_IF_ERROR(CheckHttpScheme(u.get(), location));
  return GetPart(u.get(), CURLUPART_URL, 0);
}

std::string RedactUrl(std::string_view url) {
  // Cut at the first '?' or '#', and drop "user:pass@" after the scheme.
  std::string s(url.substr(0, url.find_first_of("?#")));
  size_t scheme_end = s.find("://");
  size_t auth_from = scheme_end == std::string::npos ? 0 : scheme_end + 3;
  size_t slash = s.find('/', auth_from);
  size_t at = s.rfind('@', slash == std::string::npos ? s.size() : slash);
  if (at != std::string::npos && at >= auth_from) s.erase(auth_from, at + 1 - auth_from);
  return s;
}

}  // namespace regfs
