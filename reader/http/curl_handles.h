// RAII owners for libcurl's C resources: one type per resource, each a
// std::unique_ptr with a deleter, so that every branch of every request
// releases its easy handle, header list and URL handle by construction.
//
// EnsureCurlGlobalInit() runs curl_global_init once per process (thread-safe);
// every constructor of a handle calls it first. A failed init is reported by
// the handle factory returning null, which callers map to a Status.
#ifndef REGFS_READER_HTTP_CURL_HANDLES_H_
#define REGFS_READER_HTTP_CURL_HANDLES_H_

#include <curl/curl.h>

#include <memory>
#include <string>
#include <string_view>

#include "reader/base/status.h"

namespace regfs {

struct CurlEasyDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct CurlSlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
struct CurlUrlDeleter {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};
struct CurlFreeDeleter {
  void operator()(char* p) const { curl_free(p); }
};

using CurlEasyPtr = std::unique_ptr<CURL, CurlEasyDeleter>;
using CurlUrlPtr = std::unique_ptr<CURLU, CurlUrlDeleter>;
using CurlStringPtr = std::unique_ptr<char, CurlFreeDeleter>;

// Returns false when libcurl could not be initialised.
bool EnsureCurlGlobalInit();

// Null on allocation or init failure.
CurlEasyPtr NewCurlEasy();

// A header list built by appending. Append keeps the list intact on failure
// and reports it, so a half-built list is never sent.
class CurlHeaderList {
 public:
  CurlHeaderList() = default;
  CurlHeaderList(CurlHeaderList&&) = default;
  CurlHeaderList& operator=(CurlHeaderList&&) = default;
  CurlHeaderList(const CurlHeaderList&) = delete;
  CurlHeaderList& operator=(const CurlHeaderList&) = delete;

  // `line` is "Name: value". False on allocation failure.
  bool Append(const std::string& line);
  curl_slist* get() const { return list_.get(); }

 private:
  std::unique_ptr<curl_slist, CurlSlistDeleter> list_;
};

// The parts of an absolute http(s) URL that decide where a request goes.
struct UrlOrigin {
  std::string scheme;  // "http" or "https", lowercase
  std::string host;    // lowercase
  std::string port;    // explicit or the scheme's default, e.g. "443"
  bool operator==(const UrlOrigin&) const = default;
  std::string ToString() const;  // "https://host:443"
};

// InvalidArgument for a malformed URL or a scheme other than http(s).
Result<UrlOrigin> OriginOf(std::string_view url);
// Resolves `location` (absolute or relative, as in a Location header) against
// `base`. InvalidArgument when the result is not an http(s) URL.
Result<std::string> ResolveUrl(std::string_view base, std::string_view location);
// scheme://host[:port]/path, without user info, query or fragment: the form
// URLs take in logs and error messages (presigned queries carry secrets).
std::string RedactUrl(std::string_view url);

}  // namespace regfs

#endif  // REGFS_READER_HTTP_CURL_HANDLES_H_
