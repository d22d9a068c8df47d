#include "tests/support/image_builder.h"

#include <curl/curl.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "reader/base/digest.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {
namespace {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

struct CurlFree {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistFree {
  void operator()(curl_slist* s) const { curl_slist_free_all(s); }
};
struct ZstdCCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct ZstdDCtxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
using CurlPtr = std::unique_ptr<CURL, CurlFree>;
using SlistPtr = std::unique_ptr<curl_slist, SlistFree>;

const std::string_view kUnknownMediaType = "application/vnd.regfs.test.unknown+json";

std::string LayerMediaType(Compression c, ManifestFormat f) {
  if (f == ManifestFormat::kDocker) {
    switch (c) {
      case Compression::kGzip:
        return std::string(kMediaTypeDockerLayerGzip);
      case Compression::kNone:
        return "application/vnd.docker.image.rootfs.diff.tar";
      case Compression::kZstd:
        return std::string(kMediaTypeOciLayerZstd);
    }
  }
  switch (c) {
    case Compression::kGzip:
      return std::string(kMediaTypeOciLayerGzip);
    case Compression::kNone:
      return std::string(kMediaTypeOciLayerTar);
    case Compression::kZstd:
      return std::string(kMediaTypeOciLayerZstd);
  }
  return "";
}

ordered_json Descriptor(const BlobDescriptor& d) {
  return ordered_json{{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
}

ordered_json PlatformJson(const Platform& p) {
  ordered_json j{{"architecture", p.architecture}, {"os", p.os}};
  if (!p.variant.empty()) j["variant"] = p.variant;
  return j;
}

uint64_t Mix(uint64_t x) {
  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

size_t CollectBody(char* ptr, size_t size, size_t nmemb, void* userdata);
size_t CollectHeader(char* ptr, size_t size, size_t nmemb, void* userdata);

std::string UrlEncode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// Parses `Bearer realm="..",service="..",scope=".."` into its parameters.
std::map<std::string, std::string> ParseChallenge(std::string_view v, std::string* scheme) {
  std::map<std::string, std::string> out;
  size_t sp = v.find(' ');
  *scheme = std::string(v.substr(0, sp));
  if (sp == std::string_view::npos) return out;
  size_t i = sp + 1;
  while (i < v.size()) {
    while (i < v.size() && (v[i] == ' ' || v[i] == ',')) ++i;
    size_t eq = v.find('=', i);
    if (eq == std::string_view::npos) break;
    std::string key(v.substr(i, eq - i));
    for (char& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    i = eq + 1;
    std::string val;
    if (i < v.size() && v[i] == '"') {
      ++i;
      while (i < v.size() && v[i] != '"') {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;
        val += v[i++];
      }
      ++i;
    } else {
      while (i < v.size() && v[i] != ',') val += v[i++];
    }
    out[key] = val;
  }
  return out;
}

}  // namespace

// ---- compression -----------------------------------------------------------

std::string GzipCompress(std::string_view data, int level) {
  z_stream zs{};
  if (deflateInit2(&zs, level < 0 ? 6 : level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    return "";
  }
  std::string out;
  out.resize(deflateBound(&zs, data.size()) + 64);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return rc == Z_STREAM_END ? out : "";
}

std::string ZstdCompress(std::string_view data, size_t frame_bytes, int level) {
  if (level < 0) level = 3;
  std::unique_ptr<ZSTD_CCtx, ZstdCCtxFree> cctx(ZSTD_createCCtx());
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);
  std::string out;
  size_t step = frame_bytes == 0 ? std::max<size_t>(data.size(), 1) : frame_bytes;
  size_t off = 0;
  do {
    std::string_view piece = data.substr(off, step);
    std::string frame(ZSTD_compressBound(piece.size()), '\0');
    size_t n = ZSTD_compress2(cctx.get(), frame.data(), frame.size(), piece.data(), piece.size());
    if (ZSTD_isError(n)) return "";
    out.append(frame.data(), n);
    off += piece.size();
  } while (off < data.size());
  return out;
}

std::string GunzipForTest(std::string_view data) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return "";
  std::string out;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  char buf[65536];
  int rc = Z_OK;
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      out.clear();
      break;
    }
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_STREAM_END) {
      // Concatenated members (eStargz has one per chunk) decompress to
      // one stream, as `gzip -d` reads them.
      if (zs.avail_in == 0) break;
      if (inflateReset(&zs) != Z_OK) {
        out.clear();
        break;
      }
    }
  }
  inflateEnd(&zs);
  return out;
}

std::string UnzstdForTest(std::string_view data) {
  std::unique_ptr<ZSTD_DCtx, ZstdDCtxFree> dctx(ZSTD_createDCtx());
  std::string out;
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  char buf[65536];
  while (in.pos < in.size) {
    ZSTD_outBuffer o{buf, sizeof buf, 0};
    size_t rc = ZSTD_decompressStream(dctx.get(), &o, &in);
    if (ZSTD_isError(rc)) return "";
    out.append(buf, o.pos);
    if (o.pos == 0 && rc != 0 && in.pos == in.size) break;
  }
  return out;
}

// ---- building --------------------------------------------------------------

BuiltLayer BuildLayer(const LayerSpec& spec, ManifestFormat format) {
  BuiltLayer l;
  l.tar = spec.raw_tar.empty() ? BuildTar(spec.entries) : spec.raw_tar;
  l.compression = spec.compression;
  switch (spec.compression) {
    case Compression::kNone:
      l.blob = l.tar;
      break;
    case Compression::kGzip:
      l.blob = GzipCompress(l.tar, spec.level);
      break;
    case Compression::kZstd:
      l.blob = ZstdCompress(l.tar, spec.zstd_frame_bytes, spec.level);
      break;
  }
  l.diff_id = Sha256Digest(l.tar);
  l.descriptor.media_type =
      spec.media_type.empty() ? LayerMediaType(spec.compression, format) : spec.media_type;
  l.descriptor.digest = Sha256Digest(l.blob);
  l.descriptor.size = l.blob.size();
  return l;
}

BuiltImage BuildImage(const ImageSpec& spec) {
  BuiltImage img;
  img.platform = spec.platform;
  img.format = spec.format;
  ordered_json diff_ids = ordered_json::array();
  ordered_json history = ordered_json::array();
  for (const LayerSpec& ls : spec.layers) {
    img.layers.push_back(BuildLayer(ls, spec.format));
    diff_ids.push_back(img.layers.back().diff_id);
    history.push_back({{"created", "2024-01-01T00:00:00Z"},
                       {"created_by", "regfs test layer " + std::to_string(history.size())}});
  }
  ordered_json cfg_config{{"Env", spec.env}, {"Cmd", spec.cmd}};
  if (!spec.working_dir.empty()) cfg_config["WorkingDir"] = spec.working_dir;
  if (!spec.labels.empty()) cfg_config["Labels"] = spec.labels;
  ordered_json config{{"created", "2024-01-01T00:00:00Z"},
                      {"architecture", spec.platform.architecture},
                      {"os", spec.platform.os}};
  if (!spec.platform.variant.empty()) config["variant"] = spec.platform.variant;
  config["config"] = cfg_config;
  config["rootfs"] = {{"type", "layers"}, {"diff_ids", diff_ids}};
  config["history"] = history;
  img.config = config.dump();
  const bool docker = spec.format == ManifestFormat::kDocker;
  img.config_descriptor.media_type =
      std::string(docker ? kMediaTypeDockerConfig : kMediaTypeOciConfig);
  img.config_descriptor.digest = Sha256Digest(img.config);
  img.config_descriptor.size = img.config.size();

  ordered_json layers = ordered_json::array();
  for (const BuiltLayer& l : img.layers) layers.push_back(Descriptor(l.descriptor));
  std::string mt(docker ? kMediaTypeDockerManifest : kMediaTypeOciManifest);
  ordered_json manifest{{"schemaVersion", 2},
                        {"mediaType", mt},
                        {"config", Descriptor(img.config_descriptor)},
                        {"layers", layers}};
  img.manifest = manifest.dump(2);
  img.manifest_descriptor = {mt, Sha256Digest(img.manifest), img.manifest.size()};
  return img;
}

BuiltIndex BuildIndex(const IndexSpec& spec) {
  BuiltIndex idx;
  idx.format = spec.format;
  const bool docker = spec.format == ManifestFormat::kDocker;
  ordered_json manifests = ordered_json::array();
  for (ImageSpec is : spec.images) {
    is.format = spec.format;
    idx.images.push_back(BuildImage(is));
  }
  if (spec.add_unknown_media_type_entry && !idx.images.empty()) {
    BlobDescriptor d = idx.images[0].manifest_descriptor;
    d.media_type = std::string(kUnknownMediaType);
    ordered_json e = Descriptor(d);
    e["platform"] = PlatformJson(idx.images[0].platform);
    manifests.push_back(e);
  }
  for (const BuiltImage& img : idx.images) {
    ordered_json e = Descriptor(img.manifest_descriptor);
    e["platform"] = PlatformJson(img.platform);
    manifests.push_back(e);
  }
  std::string mt(docker ? kMediaTypeDockerManifestList : kMediaTypeOciIndex);
  ordered_json body{{"schemaVersion", 2}, {"mediaType", mt}, {"manifests", manifests}};
  idx.body = body.dump(2);
  idx.descriptor = {mt, Sha256Digest(idx.body), idx.body.size()};
  return idx;
}

std::vector<TarEntry> SampleEntries(std::string_view tag) {
  std::vector<TarEntry> e;
  e.push_back(TarEntry::Dir("etc"));
  e.push_back(TarEntry::File("etc/hostname", std::string(tag) + "\n"));
  e.push_back(TarEntry::Dir("bin"));
  TarEntry sh = TarEntry::File("bin/tool", "#!/bin/sh\necho " + std::string(tag) + "\n", 04755);
  sh.uid = 1000;
  sh.gid = 1000;
  sh.mtime_nsec = 123456789;
  e.push_back(sh);
  e.push_back(TarEntry::Symlink("bin/tool-link", "tool"));
  e.push_back(TarEntry::Hardlink("bin/tool-hard", "bin/tool"));
  e.push_back(TarEntry::Dir("tmp", 01777));
  e.push_back(TarEntry::Fifo("tmp/fifo"));
  TarEntry x = TarEntry::File("etc/xattr-file", "has xattrs\n");
  x.xattrs["user.regfs"] = "value";
  e.push_back(x);
  e.push_back(TarEntry::Dir("deep"));
  e.push_back(TarEntry::File("deep/" + std::string(120, 'n'), "long name\n"));
  return e;
}

void FillDeterministic(uint64_t seed, uint64_t offset, std::span<uint8_t> out) {
  size_t i = 0;
  while (i < out.size()) {
    uint64_t pos = offset + i;
    uint64_t word = Mix(seed * 0x100000001b3ULL ^ (pos / 8));
    size_t in_word = pos % 8;
    size_t n = std::min<size_t>(8 - in_word, out.size() - i);
    for (size_t k = 0; k < n; ++k) {
      out[i + k] = static_cast<uint8_t>(word >> (8 * (in_word + k)));
    }
    i += n;
  }
}

std::string DeterministicBytes(uint64_t seed, size_t n) {
  std::string s(n, '\0');
  FillDeterministic(seed, 0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(s.data()), n));
  return s;
}

std::vector<TarEntry> DeterministicDataEntries(uint64_t first_seed, uint64_t bytes) {
  std::vector<TarEntry> data = {TarEntry::Dir("data")};
  uint64_t done = 0;
  for (uint64_t i = 0; done < bytes; ++i) {
    uint64_t seed = first_seed + i;
    std::string dir = "data/d" + std::to_string(seed / 64);
    if (i == 0 || seed % 64 == 0) data.push_back(TarEntry::Dir(dir));
    uint64_t size = std::min<uint64_t>(4096ull << (i % 9), bytes - done);
    std::string content(size, '\0');
    for (uint64_t off = 0; off < size; off += 4096) {
      uint64_t n = std::min<uint64_t>(1536, size - off);
      FillDeterministic(seed, off,
                        std::span<uint8_t>(reinterpret_cast<uint8_t*>(content.data() + off), n));
    }
    data.push_back(TarEntry::File(dir + "/f" + std::to_string(seed), std::move(content)));
    done += size;
  }
  return data;
}

std::string DeterministicDigest(uint64_t seed, uint64_t size) {
  Sha256 h;
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < size;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    FillDeterministic(seed, off, std::span<uint8_t>(buf.data(), n));
    h.Update(buf.data(), n);
    off += n;
  }
  return h.FinishDigest();
}

// ---- pushing ---------------------------------------------------------------

struct ImagePusher::Request {
  std::string method = "GET";
  std::string url;   // absolute, or a path appended to base_url_
  std::string repo;  // for the token cache
  std::vector<std::string> headers;
  // Upload body: `size` bytes from `fill`.
  uint64_t body_size = 0;
  std::function<void(uint64_t, std::span<uint8_t>)> fill;
  bool has_body = false;
  size_t max_body = 1 << 20;
  bool no_body = false;  // HEAD
};

namespace {

struct BodySink {
  std::string* body;
  size_t max;
};

size_t CollectBody(char* ptr, size_t size, size_t nmemb, void* userdata) {
  auto* sink = static_cast<BodySink*>(userdata);
  size_t n = size * nmemb;
  if (sink->body->size() < sink->max) {
    sink->body->append(ptr, std::min(n, sink->max - sink->body->size()));
  }
  return n;
}

size_t CollectHeader(char* ptr, size_t size, size_t nmemb, void* userdata) {
  auto* h = static_cast<std::map<std::string, std::string>*>(userdata);
  size_t n = size * nmemb;
  std::string line(ptr, n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {
    h->clear();  // a new response (after 100 Continue or a redirect)
    return n;
  }
  size_t colon = line.find(':');
  if (colon == std::string::npos) return n;
  std::string name = line.substr(0, colon);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string value = line.substr(colon + 1);
  while (!value.empty() && value.front() == ' ') value.erase(0, 1);
  (*h)[name] = value;
  return n;
}

struct UploadState {
  const std::function<void(uint64_t, std::span<uint8_t>)>* fill;
  uint64_t size;
  uint64_t pos;
};

size_t ReadBody(char* buffer, size_t size, size_t nitems, void* userdata) {
  auto* st = static_cast<UploadState*>(userdata);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size * nitems, st->size - st->pos));
  if (n) (*st->fill)(st->pos, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buffer), n));
  st->pos += n;
  return n;
}

}  // namespace

ImagePusher::ImagePusher(std::string base_url, std::string username, std::string password)
    : base_url_(std::move(base_url)),
      username_(std::move(username)),
      password_(std::move(password)) {}

ImagePusher::ImagePusher(const TestRegistry& registry)
    : ImagePusher(
          registry.Url(),
          registry.options().auth == RegistryAuth::kAnonymous ? "" : registry.options().username,
          registry.options().auth == RegistryAuth::kAnonymous ? "" : registry.options().password) {
  if (registry.options().tls) ca_file_ = registry.tls_cert_path();
  if (registry.options().tls && registry.options().require_client_cert) {
    client_cert_file_ = registry.client_cert_path();
    client_key_file_ = registry.client_key_path();
  }
}

Result<HttpResult> ImagePusher::PerformOnce(Request& req) {
  CurlPtr curl(curl_easy_init());
  if (!curl) return Status::IoError("curl_easy_init failed");
  std::string url = req.url.rfind("http", 0) == 0 ? req.url : base_url_ + req.url;
  HttpResult res;
  BodySink sink{&res.body, req.max_body};
  SlistPtr headers;
  auto add = [&](const std::string& h) {
    curl_slist* n = curl_slist_append(headers.get(), h.c_str());
    if (n) {
      (void)headers.release();
      headers.reset(n);
    }
  };
  for (const std::string& h : req.headers) add(h);
  add("Expect:");
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tokens_.find(req.repo);
    if (it != tokens_.end()) add("Authorization: Bearer " + it->second);
  }
  std::string userpwd = username_ + ":" + password_;
  if (use_basic_) {
    curl_easy_setopt(curl.get(), CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl.get(), CURLOPT_USERPWD, userpwd.c_str());
  }
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  if (!ca_file_.empty()) curl_easy_setopt(curl.get(), CURLOPT_CAINFO, ca_file_.c_str());
  if (!client_cert_file_.empty()) {
    curl_easy_setopt(curl.get(), CURLOPT_SSLCERT, client_cert_file_.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_SSLKEY, client_key_file_.c_str());
  }
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, CollectHeader);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &res.headers);
  UploadState up{&req.fill, req.body_size, 0};
  if (req.method == "HEAD") {
    curl_easy_setopt(curl.get(), CURLOPT_NOBODY, 1L);
  } else if (req.method == "PUT" || (req.method == "POST" && req.has_body)) {
    curl_easy_setopt(curl.get(), CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(req.has_body ? req.body_size : 0));
    curl_easy_setopt(curl.get(), CURLOPT_READFUNCTION, ReadBody);
    curl_easy_setopt(curl.get(), CURLOPT_READDATA, &up);
    if (req.method != "PUT")
      curl_easy_setopt(curl.get(), CURLOPT_CUSTOMREQUEST, req.method.c_str());
  } else if (req.method == "POST") {
    curl_easy_setopt(curl.get(), CURLOPT_POST, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, "");
  } else if (req.method != "GET") {
    curl_easy_setopt(curl.get(), CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  ++requests_;
  CURLcode rc = curl_easy_perform(curl.get());
  if (rc != CURLE_OK) {
    return Status::Transient(req.method + " " + url + ": " + curl_easy_strerror(rc));
  }
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &res.status);
  return res;
}

Status ImagePusher::Authenticate(const HttpResult& challenge, std::string_view repo) {
  auto it = challenge.headers.find("www-authenticate");
  if (it == challenge.headers.end()) return Status::Unauthorized("401 without a challenge");
  std::string scheme;
  auto params = ParseChallenge(it->second, &scheme);
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme == "basic") {
    if (username_.empty()) return Status::Unauthorized("registry wants basic auth; no user set");
    if (use_basic_) return Status::Unauthorized("registry refused the basic credentials");
    use_basic_ = true;
    return Status::Ok();
  }
  if (scheme != "bearer") return Status::Unsupported("auth scheme " + scheme);
  std::string realm = params["realm"];
  if (realm.empty()) return Status::Protocol("Bearer challenge without realm");
  // Always ask for pull+push on the repo so one token serves a whole push.
  std::string scope =
      repo.empty() ? params["scope"] : "repository:" + std::string(repo) + ":pull,push";
  std::string url = realm + (realm.find('?') == std::string::npos ? "?" : "&") +
                    "service=" + UrlEncode(params["service"]);
  if (!scope.empty()) url += "&scope=" + UrlEncode(scope);
  CurlPtr curl(curl_easy_init());
  if (!curl) return Status::IoError("curl_easy_init failed");
  std::string body;
  BodySink sink{&body, 1 << 20};
  std::string userpwd = username_ + ":" + password_;
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &sink);
  if (!username_.empty()) {
    curl_easy_setopt(curl.get(), CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl.get(), CURLOPT_USERPWD, userpwd.c_str());
  }
  ++requests_;
  CURLcode rc = curl_easy_perform(curl.get());
  if (rc != CURLE_OK)
    return Status::Transient("token request: " + std::string(curl_easy_strerror(rc)));
  long code = 0;
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &code);
  if (code != 200) {
    return Status::Unauthorized("token endpoint answered " + std::to_string(code) + ": " + body);
  }
  json j = json::parse(body, nullptr, false);
  std::string token;
  if (j.is_object()) {
    if (j.contains("token") && j["token"].is_string()) {
      token = j["token"].get<std::string>();
    } else if (j.contains("access_token") && j["access_token"].is_string()) {
      token = j["access_token"].get<std::string>();
    }
  }
  if (token.empty()) return Status::Protocol("token endpoint answer has no token");
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[std::string(repo)] = token;
  return Status::Ok();
}

Result<HttpResult> ImagePusher::Perform(Request& req) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    ASSIGN_OR_RETURN(HttpResult res, PerformOnce(req));
    if (res.status != 401) return res;
    if (attempt == 2) return res;
    RETURN_IF_ERROR(Authenticate(res, req.repo).Annotate(req.method + " " + req.url));
  }
  return Status::Unauthorized("unreachable");
}

Result<HttpResult> ImagePusher::Get(std::string_view path, std::string_view accept, bool head,
                                    size_t max_body) {
  Request req;
  req.method = head ? "HEAD" : "GET";
  req.url = std::string(path);
  req.max_body = max_body;
  // "/v2/<repo>/manifests/.." or "/v2/<repo>/blobs/..": the repo for the token.
  std::string_view p = path;
  if (p.starts_with("/v2/")) {
    p.remove_prefix(4);
    size_t m = p.find("/manifests/");
    if (m == std::string_view::npos) m = p.find("/blobs/");
    if (m == std::string_view::npos) m = p.find("/tags/");
    if (m != std::string_view::npos) req.repo = std::string(p.substr(0, m));
  }
  if (!accept.empty()) req.headers.push_back("Accept: " + std::string(accept));
  return Perform(req);
}

Status ImagePusher::PushBlobStream(std::string_view repo, uint64_t size, const std::string& digest,
                                   const std::function<void(uint64_t, std::span<uint8_t>)>& fill) {
  const std::string r(repo);
  {
    Request head;
    head.method = "HEAD";
    head.url = "/v2/" + r + "/blobs/" + digest;
    head.repo = r;
    ASSIGN_OR_RETURN(HttpResult h, Perform(head));
    if (h.status == 200) return Status::Ok();  // already there
  }
  Request post;
  post.method = "POST";
  post.url = "/v2/" + r + "/blobs/uploads/";
  post.repo = r;
  ASSIGN_OR_RETURN(HttpResult started, Perform(post));
  if (started.status != 202) {
    return Status::Protocol("POST upload for " + r + " answered " + std::to_string(started.status) +
                            ": " + started.body);
  }
  std::string location = started.headers["location"];
  if (location.empty()) return Status::Protocol("upload POST without Location");
  Request put;
  put.method = "PUT";
  put.url = location + (location.find('?') == std::string::npos ? "?" : "&") +
            "digest=" + UrlEncode(digest);
  put.repo = r;
  put.headers.push_back("Content-Type: application/octet-stream");
  put.has_body = true;
  put.body_size = size;
  put.fill = fill;
  ASSIGN_OR_RETURN(HttpResult done, Perform(put));
  if (done.status != 201) {
    return Status::Protocol("PUT blob " + digest + " answered " + std::to_string(done.status) +
                            ": " + done.body);
  }
  return Status::Ok();
}

Status ImagePusher::PushBlob(std::string_view repo, std::string_view data) {
  std::string digest = Sha256Digest(data);
  return PushBlobStream(repo, data.size(), digest, [data](uint64_t off, std::span<uint8_t> out) {
    std::memcpy(out.data(), data.data() + off, out.size());
  });
}

Status ImagePusher::PushManifest(std::string_view repo, std::string_view ref, std::string_view body,
                                 std::string_view media_type) {
  Request put;
  put.method = "PUT";
  put.url = "/v2/" + std::string(repo) + "/manifests/" + std::string(ref);
  put.repo = std::string(repo);
  put.headers.push_back("Content-Type: " + std::string(media_type));
  put.has_body = true;
  put.body_size = body.size();
  put.fill = [body](uint64_t off, std::span<uint8_t> out) {
    std::memcpy(out.data(), body.data() + off, out.size());
  };
  ASSIGN_OR_RETURN(HttpResult res, Perform(put));
  if (res.status != 201) {
    return Status::Protocol("PUT manifest " + std::string(repo) + ":" + std::string(ref) +
                            " answered " + std::to_string(res.status) + ": " + res.body);
  }
  return Status::Ok();
}

Status ImagePusher::PushImage(std::string_view repo, std::string_view tag,
                              const BuiltImage& image) {
  for (const BuiltLayer& l : image.layers) RETURN_IF_ERROR(PushBlob(repo, l.blob));
  RETURN_IF_ERROR(PushBlob(repo, image.config));
  return PushManifest(repo, tag, image.manifest, image.manifest_descriptor.media_type);
}

Status ImagePusher::PushIndex(std::string_view repo, std::string_view tag,
                              const BuiltIndex& index) {
  for (const BuiltImage& img : index.images) {
    RETURN_IF_ERROR(PushImage(repo, img.manifest_descriptor.digest, img));
  }
  return PushManifest(repo, tag, index.body, index.descriptor.media_type);
}

Result<BlobDescriptor> ImagePusher::PushRandomBlob(std::string_view repo, uint64_t size,
                                                   uint64_t seed, std::string_view tag) {
  BlobDescriptor d;
  d.media_type = std::string(kMediaTypeOciLayerTar);
  d.size = size;
  d.digest = DeterministicDigest(seed, size);
  RETURN_IF_ERROR(PushBlobStream(
      repo, size, d.digest,
      [seed](uint64_t off, std::span<uint8_t> out) { FillDeterministic(seed, off, out); }));
  // A manifest that references it, so it is an ordinary layer of an image.
  ordered_json config{{"architecture", "amd64"},
                      {"os", "linux"},
                      {"rootfs", {{"type", "layers"}, {"diff_ids", {d.digest}}}}};
  std::string config_body = config.dump();
  RETURN_IF_ERROR(PushBlob(repo, config_body));
  BlobDescriptor cd{std::string(kMediaTypeOciConfig), Sha256Digest(config_body),
                    config_body.size()};
  ordered_json manifest{{"schemaVersion", 2},
                        {"mediaType", kMediaTypeOciManifest},
                        {"config", Descriptor(cd)},
                        {"layers", ordered_json::array({Descriptor(d)})}};
  RETURN_IF_ERROR(PushManifest(repo, tag, manifest.dump(2), kMediaTypeOciManifest));
  return d;
}

}  // namespace regfs::testing
