// OCI / Docker manifests and indexes: media types, parsing, platform choice.
// Pure functions over bytes; fetching lives in reader/http/registry_client.h.
#ifndef REGFS_READER_IMAGE_MANIFEST_H_
#define REGFS_READER_IMAGE_MANIFEST_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"

namespace regfs {

inline constexpr std::string_view kMediaTypeOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kMediaTypeOciManifest =
    "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kMediaTypeDockerManifestList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kMediaTypeDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view kMediaTypeOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view kMediaTypeDockerConfig =
    "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view kMediaTypeOciLayerTar = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kMediaTypeOciLayerGzip =
    "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kMediaTypeOciLayerZstd =
    "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kMediaTypeDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
// The Accept header value for manifest requests: all four manifest types.
std::string ManifestAcceptHeader();

struct Platform {
  std::string os;                // "linux"
  std::string architecture;      // "amd64", "arm64"
  std::string variant;           // "v8", or empty
  std::string ToString() const;  // "linux/arm64/v8"
};

// "os/arch[/variant]"; InvalidArgument otherwise.
Result<Platform> ParsePlatform(std::string_view s);
// This host, as Go spells it (uname machine x86_64 -> amd64, aarch64 -> arm64/v8 ...).
Platform HostPlatform();

enum class LayerCompression { kNone = 0, kGzip = 2, kZstd = 4, kUnknown = 255 };
LayerCompression CompressionOfMediaType(std::string_view media_type);

struct IndexEntry {
  BlobDescriptor descriptor;
  std::optional<Platform> platform;
};

struct ImageIndex {
  std::string media_type;
  std::vector<IndexEntry> manifests;
};

// Caps on the layer annotations kept from a manifest: a key or value over
// kMaxAnnotationValue is dropped, and so is every annotation past
// kMaxAnnotationsPerLayer or past kMaxAnnotationBytes (keys + values) per
// layer. The annotations that matter (TOC digests and positions) are short.
inline constexpr size_t kMaxAnnotationValue = 4096;
inline constexpr size_t kMaxAnnotationsPerLayer = 64;
inline constexpr size_t kMaxAnnotationBytes = 64 << 10;

using Annotations = std::map<std::string, std::string>;

struct ImageManifest {
  std::string media_type;
  BlobDescriptor config;
  std::vector<BlobDescriptor> layers;  // bottom first
  // layer_annotations[i]: the string annotations of layers[i] (capped, see
  // above; non-string values ignored). layers.size() long in a parsed
  // manifest (a hand-built one may leave it short: use LayerAnnotations).
  // Kept apart from BlobDescriptor, which is the cache key type copied
  // everywhere.
  std::vector<Annotations> layer_annotations;

  // layer_annotations[i], or an empty map.
  const Annotations& LayerAnnotations(size_t i) const;
};

struct ImageConfig {
  Platform platform;
  std::vector<std::string> diff_ids;  // rootfs.diff_ids, bottom first
};

// True for the two index media types.
bool IsIndexMediaType(std::string_view media_type);
bool IsManifestMediaType(std::string_view media_type);

// `media_type` is the Content-Type the registry sent (may be empty: then the
// body's "mediaType" field decides). Corrupt on malformed JSON or missing fields.
// Corrupt when the Content-Type and the body's mediaType disagree (generic
// types such as application/json are ignored); Unsupported for Docker schema 1
// and for digests of another algorithm. Never throws.
Result<ImageIndex> ParseIndex(std::string_view body, std::string_view media_type);
Result<ImageManifest> ParseManifest(std::string_view body, std::string_view media_type);
Result<ImageConfig> ParseConfig(std::string_view body);

// Chooses the entry for `want`: os and architecture must match; a variant in
// `want` must match when the entry has one (arm64 defaults to v8). Entries
// whose media type is not a manifest are skipped. NotFound lists the
// platforms that were on offer.
Result<BlobDescriptor> SelectPlatform(const ImageIndex& index, const Platform& want);

}  // namespace regfs

#endif  // REGFS_READER_IMAGE_MANIFEST_H_
