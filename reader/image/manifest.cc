// Manifest, index and config parsing with nlohmann::json. Every parse runs
// inside one try block: a JSON exception becomes Corrupt and never leaves
// this file.
#include "reader/image/manifest.h"

#include <sys/utsname.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>

#include "reader/base/digest.h"

namespace regfs {
namespace {

using nlohmann::json;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "application/x; charset=utf-8" -> "application/x"
std::string_view StripParams(std::string_view media_type) {
  size_t semi = media_type.find(';');
  if (semi != std::string_view::npos) media_type = media_type.substr(0, semi);
  while (!media_type.empty() && (media_type.back() == ' ' || media_type.back() == '\t')) {
    media_type.remove_suffix(1);
  }
  while (!media_type.empty() && (media_type.front() == ' ' || media_type.front() == '\t')) {
    media_type.remove_prefix(1);
  }
  return media_type;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Arch aliases as containerd's platforms package normalises them.
void NormalizeArch(std::string& arch, std::string& variant) {
  if (arch == "x86_64" || arch == "x86-64") {
    arch = "amd64";
    if (variant == "v1") variant.clear();
  } else if (arch == "aarch64" || arch == "arm64") {
    arch = "arm64";
    if (variant == "8" || variant == "v8") variant = "v8";
  } else if (arch == "armhf") {
    arch = "arm";
    variant = "v7";
  } else if (arch == "armel") {
    arch = "arm";
    variant = "v6";
  } else if (arch == "arm") {
    if (variant == "5" || variant == "6" || variant == "7" || variant == "8") {
      variant = "v" + variant;
    }
  } else if (arch == "i386" || arch == "i686") {
    arch = "386";
  }
}

Status CorruptField(std::string_view what, std::string_view field) {
  return Status::Corrupt(std::string(what) + ": missing or malformed field '" + std::string(field) +
                         "'");
}

std::optional<std::string> GetString(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// A malformed digest in a document from the registry is corruption; another
// algorithm (sha512) is a valid thing we do not handle.
Code DigestErrorCode(const Status& st) {
  return st.code() == Code::kUnsupported ? Code::kUnsupported : Code::kCorrupt;
}

Result<BlobDescriptor> ParseDescriptor(const json& j, std::string_view what) {
  if (!j.is_object()) return Status::Corrupt(std::string(what) + ": descriptor is not an object");
  BlobDescriptor d;
  auto mt = j.find("mediaType");
  if (mt != j.end()) {
    if (!mt->is_string()) return CorruptField(what, "mediaType");
    d.media_type = mt->get<std::string>();
  }
  auto digest = GetString(j, "digest");
  if (!digest) return CorruptField(what, "digest");
  Status st = ValidateDigest(*digest);
  if (!st.ok()) return Status(DigestErrorCode(st), std::string(what) + ": " + st.message());
  d.digest = *digest;
  auto size = j.find("size");
  if (size == j.end() || !size->is_number_integer()) return CorruptField(what, "size");
  if (size->is_number_unsigned()) {
    d.size = size->get<uint64_t>();
  } else {
    int64_t v = size->get<int64_t>();
    if (v < 0) return Status::Corrupt(std::string(what) + ": negative size");
    d.size = static_cast<uint64_t>(v);
  }
  return d;
}

// String annotations of a descriptor, capped (see manifest.h). Malformed
// annotations are not an error: OCI makes them optional and we only look
// for a few known keys.
Annotations ParseAnnotations(const json& j) {
  Annotations out;
  auto it = j.find("annotations");
  if (it == j.end() || !it->is_object()) return out;
  size_t bytes = 0;
  for (auto a = it->begin(); a != it->end(); ++a) {
    if (out.size() >= kMaxAnnotationsPerLayer) break;
    if (!a.value().is_string()) continue;
    const std::string& key = a.key();
    const std::string& value = a.value().get_ref<const std::string&>();
    if (key.size() > kMaxAnnotationValue || value.size() > kMaxAnnotationValue) continue;
    if (bytes + key.size() + value.size() > kMaxAnnotationBytes) break;
    bytes += key.size() + value.size();
    out.emplace(key, value);
  }
  return out;
}

Result<std::optional<Platform>> ParsePlatformObject(const json& j) {
  auto it = j.find("platform");
  if (it == j.end() || it->is_null()) return std::optional<Platform>();
  if (!it->is_object()) return Status::Corrupt("index entry: 'platform' is not an object");
  Platform p;
  auto os = GetString(*it, "os");
  auto arch = GetString(*it, "architecture");
  if (!os || !arch) return Status::Corrupt("index entry: platform needs 'os' and 'architecture'");
  p.os = *os;
  p.architecture = *arch;
  p.variant = GetString(*it, "variant").value_or("");
  return std::optional<Platform>(std::move(p));
}

// Decides the media type of a document from the Content-Type and the body's
// own "mediaType"; both present and different is Corrupt (the OCI spec says
// so, and it blocks a registry from passing one type off as another).
Result<std::string> ResolveMediaType(const json& body, std::string_view content_type,
                                     std::string_view what) {
  std::string header(StripParams(content_type));
  std::string field;
  auto it = body.find("mediaType");
  if (it != body.end()) {
    if (!it->is_string()) return CorruptField(what, "mediaType");
    field = it->get<std::string>();
  }
  // Registries send these for anything they cannot name; they decide nothing.
  if (header == "application/json" || header == "text/plain" ||
      header == "application/octet-stream") {
    header.clear();
  }
  if (!header.empty() && !field.empty() && header != field) {
    return Status::Corrupt(std::string(what) + ": Content-Type '" + header +
                           "' disagrees with the body's mediaType '" + field + "'");
  }
  return header.empty() ? field : header;
}

Result<json> ParseJson(std::string_view body, std::string_view what) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Corrupt(std::string(what) + ": malformed JSON");
  if (!j.is_object()) return Status::Corrupt(std::string(what) + ": JSON is not an object");
  return j;
}

Result<ImageIndex> ParseIndexImpl(std::string_view body, std::string_view media_type) {
  ASSIGN_OR_RETURN(json j, ParseJson(body, "index"));
  ASSIGN_OR_RETURN(std::string mt, ResolveMediaType(j, media_type, "index"));
  if (!mt.empty() && !IsIndexMediaType(mt)) {
    return Status::Corrupt("index: media type '" + mt + "' is not an image index");
  }
  auto manifests = j.find("manifests");
  if (manifests == j.end() || !manifests->is_array()) return CorruptField("index", "manifests");
  ImageIndex index;
  // The OCI index may omit mediaType; a "manifests" array is what makes it one.
  index.media_type = mt.empty() ? std::string(kMediaTypeOciIndex) : mt;
  for (size_t i = 0; i < manifests->size(); ++i) {
    const json& e = (*manifests)[i];
    std::string what = "index entry " + std::to_string(i);
    IndexEntry entry;
    ASSIGN_OR_RETURN(entry.descriptor, ParseDescriptor(e, what));
    ASSIGN_OR_RETURN(entry.platform, ParsePlatformObject(e));
    index.manifests.push_back(std::move(entry));
  }
  return index;
}

Result<ImageManifest> ParseManifestImpl(std::string_view body, std::string_view media_type) {
  ASSIGN_OR_RETURN(json j, ParseJson(body, "manifest"));
  auto sv = j.find("schemaVersion");
  if (sv != j.end()) {
    if (!sv->is_number_integer()) return CorruptField("manifest", "schemaVersion");
    if (sv->get<int64_t>() == 1) {
      return Status::Unsupported("manifest: Docker schema 1 manifests are not supported");
    }
    if (sv->get<int64_t>() != 2) return Status::Corrupt("manifest: schemaVersion is not 2");
  }
  ASSIGN_OR_RETURN(std::string mt, ResolveMediaType(j, media_type, "manifest"));
  if (IsIndexMediaType(mt)) {
    return Status::Corrupt("manifest: media type '" + mt + "' is an index, not a manifest");
  }
  if (!mt.empty() && !IsManifestMediaType(mt)) {
    return Status::Unsupported("manifest: media type '" + mt + "' is not an image manifest");
  }
  ImageManifest m;
  m.media_type = mt.empty() ? std::string(kMediaTypeOciManifest) : mt;
  auto config = j.find("config");
  if (config == j.end()) return CorruptField("manifest", "config");
  ASSIGN_OR_RETURN(m.config, ParseDescriptor(*config, "manifest config"));
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) return CorruptField("manifest", "layers");
  for (size_t i = 0; i < layers->size(); ++i) {
    ASSIGN_OR_RETURN(BlobDescriptor d,
                     ParseDescriptor((*layers)[i], "manifest layer " + std::to_string(i)));
    m.layers.push_back(std::move(d));
    m.layer_annotations.push_back(ParseAnnotations((*layers)[i]));
  }
  return m;
}

Result<ImageConfig> ParseConfigImpl(std::string_view body) {
  ASSIGN_OR_RETURN(json j, ParseJson(body, "config"));
  ImageConfig c;
  auto os = GetString(j, "os");
  auto arch = GetString(j, "architecture");
  if (!os) return CorruptField("config", "os");
  if (!arch) return CorruptField("config", "architecture");
  c.platform.os = *os;
  c.platform.architecture = *arch;
  c.platform.variant = GetString(j, "variant").value_or("");
  auto rootfs = j.find("rootfs");
  if (rootfs == j.end() || !rootfs->is_object()) return CorruptField("config", "rootfs");
  auto type = GetString(*rootfs, "type");
  if (!type || *type != "layers") return CorruptField("config", "rootfs.type");
  auto ids = rootfs->find("diff_ids");
  if (ids == rootfs->end() || !ids->is_array()) return CorruptField("config", "rootfs.diff_ids");
  for (const json& id : *ids) {
    if (!id.is_string()) return CorruptField("config", "rootfs.diff_ids");
    std::string s = id.get<std::string>();
    Status st = ValidateDigest(s);
    if (!st.ok()) return Status(DigestErrorCode(st), "config: rootfs.diff_ids: " + st.message());
    c.diff_ids.push_back(std::move(s));
  }
  return c;
}

// Variant as compared: arm64 without a variant means v8.
std::string EffectiveVariant(const Platform& p) {
  std::string arch = Lower(p.architecture), variant = Lower(p.variant);
  NormalizeArch(arch, variant);
  if (arch == "arm64" && variant.empty()) return "v8";
  return variant;
}

}  // namespace

std::string ManifestAcceptHeader() {
  return std::string(kMediaTypeOciIndex) + ", " + std::string(kMediaTypeOciManifest) + ", " +
         std::string(kMediaTypeDockerManifestList) + ", " + std::string(kMediaTypeDockerManifest);
}

std::string Platform::ToString() const {
  std::string s = os + "/" + architecture;
  if (!variant.empty()) s += "/" + variant;
  return s;
}

Result<Platform> ParsePlatform(std::string_view s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t slash = s.find('/', start);
    parts.emplace_back(s.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) {
    return Status::InvalidArgument("platform '" + std::string(s) +
                                   "' must be os/arch or os/arch/variant");
  }
  for (const std::string& p : parts) {
    if (p.empty()) {
      return Status::InvalidArgument("platform '" + std::string(s) + "' has an empty part");
    }
    for (char c : p) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') {
        return Status::InvalidArgument("platform '" + std::string(s) +
                                       "' has an invalid character '" + std::string(1, c) + "'");
      }
    }
  }
  Platform p;
  p.os = Lower(parts[0]);
  p.architecture = Lower(parts[1]);
  if (parts.size() == 3) p.variant = Lower(parts[2]);
  NormalizeArch(p.architecture, p.variant);
  return p;
}

Platform HostPlatform() {
  Platform p;
  p.os = "linux";
  utsname u{};
  std::string machine = uname(&u) == 0 ? u.machine : "x86_64";
  if (machine == "x86_64") {
    p.architecture = "amd64";
  } else if (machine == "aarch64" || machine == "arm64") {
    p.architecture = "arm64";
    p.variant = "v8";
  } else if (machine == "armv7l" || machine == "armv7") {
    p.architecture = "arm";
    p.variant = "v7";
  } else if (machine == "armv6l") {
    p.architecture = "arm";
    p.variant = "v6";
  } else if (machine == "armv5tel" || machine == "armv5l") {
    p.architecture = "arm";
    p.variant = "v5";
  } else if (machine == "i386" || machine == "i486" || machine == "i586" || machine == "i686") {
    p.architecture = "386";
  } else if (machine == "mips64") {
    p.architecture = "mips64";
  } else {
    // ppc64le, s390x, riscv64, loong64 ... are spelled the same in Go.
    p.architecture = machine;
  }
  return p;
}

LayerCompression CompressionOfMediaType(std::string_view media_type) {
  std::string_view mt = StripParams(media_type);
  const bool oci = mt.starts_with("application/vnd.oci.image.layer.");
  const bool docker = mt.starts_with("application/vnd.docker.image.rootfs.");
  if (!oci && !docker) return LayerCompression::kUnknown;
  if (EndsWith(mt, "+gzip") || EndsWith(mt, ".tar.gzip")) return LayerCompression::kGzip;
  if (EndsWith(mt, "+zstd") || EndsWith(mt, ".tar.zstd")) return LayerCompression::kZstd;
  if (EndsWith(mt, ".tar")) return LayerCompression::kNone;
  return LayerCompression::kUnknown;  // e.g. "+encrypted"
}

bool IsIndexMediaType(std::string_view media_type) {
  std::string_view mt = StripParams(media_type);
  return mt == kMediaTypeOciIndex || mt == kMediaTypeDockerManifestList;
}

bool IsManifestMediaType(std::string_view media_type) {
  std::string_view mt = StripParams(media_type);
  return mt == kMediaTypeOciManifest || mt == kMediaTypeDockerManifest;
}

Result<ImageIndex> ParseIndex(std::string_view body, std::string_view media_type) {
  try {
    return ParseIndexImpl(body, media_type);
  } catch (const std::exception& e) {
    return Status::Corrupt(std::string("index: ") + e.what());
  }
}

Result<ImageManifest> ParseManifest(std::string_view body, std::string_view media_type) {
  try {
    return ParseManifestImpl(body, media_type);
  } catch (const std::exception& e) {
    return Status::Corrupt(std::string("manifest: ") + e.what());
  }
}

Result<ImageConfig> ParseConfig(std::string_view body) {
  try {
    return ParseConfigImpl(body);
  } catch (const std::exception& e) {
    return Status::Corrupt(std::string("config: ") + e.what());
  }
}

const Annotations& ImageManifest::LayerAnnotations(size_t i) const {
  static const Annotations kEmpty;
  return i < layer_annotations.size() ? layer_annotations[i] : kEmpty;
}

Result<BlobDescriptor> SelectPlatform(const ImageIndex& index, const Platform& want) {
  std::string want_os = Lower(want.os), want_arch = Lower(want.architecture), unused_variant;
  NormalizeArch(want_arch, unused_variant);
  // Empty means "any variant", except arm64 where it means v8.
  const std::string want_variant = EffectiveVariant(want);
  const BlobDescriptor* exact = nullptr;  // variant equal (or none asked)
  const BlobDescriptor* loose = nullptr;  // entry without a variant
  std::vector<std::string> offered;
  for (const IndexEntry& e : index.manifests) {
    if (!IsManifestMediaType(e.descriptor.media_type)) continue;
    if (!e.platform) {
      offered.push_back("(no platform)");
      continue;
    }
    offered.push_back(e.platform->ToString());
    std::string os = Lower(e.platform->os), arch = Lower(e.platform->architecture), variant;
    NormalizeArch(arch, variant);
    if (os != want_os || arch != want_arch) continue;
    std::string entry_variant = EffectiveVariant(*e.platform);
    if (want_variant.empty() || entry_variant == want_variant) {
      if (!exact) exact = &e.descriptor;
    } else if (e.platform->variant.empty()) {
      if (!loose) loose = &e.descriptor;
    }
  }
  if (exact) return *exact;
  if (loose) return *loose;
  std::string list;
  for (const std::string& o : offered) list += (list.empty() ? "" : ", ") + o;
  if (list.empty()) list = "no image manifests";
  return Status::NotFound("no image for platform " + want.ToString() + " in the index; it offers " +
                          list);
}

}  // namespace regfs
