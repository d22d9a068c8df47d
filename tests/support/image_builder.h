// Test images built in code and pushed through the registry API.
//
// Building (pure, in memory): tar entries (tests/support/tar_writer.h) ->
// layer blob (plain, gzip via zlib, zstd via libzstd, optionally several zstd
// frames) -> image config (rootfs.diff_ids = sha256 of each uncompressed tar)
// -> OCI or Docker schema 2 manifest -> OCI index or Docker manifest list.
// Every Built* value carries the exact bytes and descriptors so tests can
// compare what a reader returns against what was pushed.
//
// Pushing (ImagePusher, libcurl): HEAD to skip existing blobs, monolithic
// POST + PUT uploads, manifests PUT by tag or digest. Answers a 401 challenge
// once per request: Basic with the configured user, or Bearer by fetching a
// token from the realm (with the user when one is set). Failures are Status
// values naming the request and the registry's answer.
#ifndef REGFS_TESTS_SUPPORT_IMAGE_BUILDER_H_
#define REGFS_TESTS_SUPPORT_IMAGE_BUILDER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/image/manifest.h"
#include "tests/support/tar_writer.h"

namespace regfs::testing {

class TestRegistry;

enum class Compression { kNone, kGzip, kZstd };
enum class ManifestFormat { kOci, kDocker };

std::string GzipCompress(std::string_view data, int level = 6);
// One zstd frame, or independent frames of `frame_bytes` uncompressed bytes
// each (concatenated, as seekable zstd writers produce) when frame_bytes > 0.
std::string ZstdCompress(std::string_view data, size_t frame_bytes = 0, int level = 3);
std::string GunzipForTest(std::string_view data);  // empty on error; for checks
std::string UnzstdForTest(std::string_view data);  // empty on error; for checks

struct LayerSpec {
  std::vector<TarEntry> entries;
  Compression compression = Compression::kGzip;
  size_t zstd_frame_bytes = 0;  // see ZstdCompress
  int level = -1;               // -1 = the algorithm's default
  std::string media_type;       // override; empty = derived from compression and format
  // Used instead of entries when non-empty: the exact uncompressed tar bytes.
  std::string raw_tar;
};

struct BuiltLayer {
  std::string tar;            // uncompressed
  std::string blob;           // as pushed (compressed)
  BlobDescriptor descriptor;  // media type, digest and size of blob
  std::string diff_id;        // sha256 of tar
  Compression compression = Compression::kGzip;
};

BuiltLayer BuildLayer(const LayerSpec& spec, ManifestFormat format = ManifestFormat::kOci);

struct ImageSpec {
  std::vector<LayerSpec> layers;
  Platform platform{"linux", "amd64", ""};
  ManifestFormat format = ManifestFormat::kOci;
  std::vector<std::string> env = {
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"};
  std::vector<std::string> cmd = {"/bin/sh"};
  std::string working_dir;
  std::map<std::string, std::string> labels;
};

struct BuiltImage {
  std::vector<BuiltLayer> layers;  // bottom first
  std::string config;              // exact config bytes
  BlobDescriptor config_descriptor;
  std::string manifest;  // exact manifest bytes
  BlobDescriptor manifest_descriptor;
  Platform platform;
  ManifestFormat format = ManifestFormat::kOci;
};

BuiltImage BuildImage(const ImageSpec& spec);

struct IndexSpec {
  std::vector<ImageSpec> images;                 // each image's format is forced to `format`
  ManifestFormat format = ManifestFormat::kOci;  // OCI index or Docker manifest list
  // Puts first an entry with an unknown media type
  // ("application/vnd.regfs.test.unknown+json") and images[0]'s platform,
  // pointing at images[0]'s manifest: a reader must skip it.
  bool add_unknown_media_type_entry = false;
};

struct BuiltIndex {
  std::vector<BuiltImage> images;
  std::string body;           // exact index bytes
  BlobDescriptor descriptor;  // index media type, digest, size
  ManifestFormat format = ManifestFormat::kOci;
};

BuiltIndex BuildIndex(const IndexSpec& spec);

// A few typical entries for quick tests: dirs, files with modes, a symlink,
// a hard link, a fifo, an xattr, a long name.
std::vector<TarEntry> SampleEntries(std::string_view tag = "sample");

// Deterministic pseudo-random bytes as a pure function of (seed, offset), so
// a >100 MB blob can be streamed out and any range of it checked later
// without keeping it.
void FillDeterministic(uint64_t seed, uint64_t offset, std::span<uint8_t> out);
// The first `n` bytes of that stream (file contents that do not compress).
std::string DeterministicBytes(uint64_t seed, size_t n);
// A data tree for benchmarks: files of 4 KiB << (i % 9), 64 to a directory
// under data/; in each 4 KiB block the first 1536 bytes are pseudo-random
// and the rest zero (gzip: ~40%). Seeds from first_seed on, `bytes` in all.
std::vector<TarEntry> DeterministicDataEntries(uint64_t first_seed, uint64_t bytes);
// sha256 of the first `size` bytes of the stream for `seed`, computed in
// pieces (never the whole blob in memory).
std::string DeterministicDigest(uint64_t seed, uint64_t size);

struct HttpResult {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lowercase names; last value wins
};

// Not thread-safe: use one pusher per thread.
class ImagePusher {
 public:
  // Anonymous, or basic/token with `username` when not empty.
  explicit ImagePusher(std::string base_url, std::string username = "", std::string password = "");
  // Uses the registry's URL and its configured user (for kBasic and kToken).
  explicit ImagePusher(const TestRegistry& registry);

  Status PushBlob(std::string_view repo, std::string_view data);
  // Streams `size` bytes produced by `fill(offset, out)`; `digest` must be
  // their sha256 ("sha256:<hex>"). Nothing beyond one buffer is held.
  Status PushBlobStream(std::string_view repo, uint64_t size, const std::string& digest,
                        const std::function<void(uint64_t, std::span<uint8_t>)>& fill);
  // `ref` is a tag or a digest.
  Status PushManifest(std::string_view repo, std::string_view ref, std::string_view body,
                      std::string_view media_type);
  // Blobs (layers, config), then the manifest by tag.
  Status PushImage(std::string_view repo, std::string_view tag, const BuiltImage& image);
  // Every image (by digest), then the index by tag.
  Status PushIndex(std::string_view repo, std::string_view tag, const BuiltIndex& index);
  // A >=100 MB-class blob from FillDeterministic(seed), streamed. Also pushes
  // a one-layer OCI manifest tagged `tag` that references it (media type
  // application/vnd.oci.image.layer.v1.tar) so it is a normal image layer.
  Result<BlobDescriptor> PushRandomBlob(std::string_view repo, uint64_t size, uint64_t seed,
                                        std::string_view tag = "random");

  // Authenticated GET/HEAD of `path` ("/v2/..."), for checks in tests. The
  // body is kept up to `max_body` bytes.
  Result<HttpResult> Get(std::string_view path, std::string_view accept = "", bool head = false,
                         size_t max_body = 64 << 20);

  int requests() const { return requests_; }

 private:
  struct Request;
  Result<HttpResult> Perform(Request& req);
  Result<HttpResult> PerformOnce(Request& req);
  Status Authenticate(const HttpResult& challenge, std::string_view repo);

  std::string base_url_, username_, password_;
  std::string ca_file_;  // the test registry's certificate, when it serves https
  // The client certificate the test registry asks for, if it does.
  std::string client_cert_file_, client_key_file_;
  std::mutex mu_;
  std::map<std::string, std::string> tokens_;  // repo -> bearer token; guarded by mu_
  bool use_basic_ = false;
  int requests_ = 0;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_IMAGE_BUILDER_H_
