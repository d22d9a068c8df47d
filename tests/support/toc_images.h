// Images with a table of contents (eStargz, zstd:chunked), made by the real
// tools from an image in the test registry, for the end-to-end tests and the
// benchmark of lazy TOC layers (issue 16):
//   - eStargz and stargz-snapshotter's zstd:chunked: `ctr images pull`,
//     `ctr-remote image convert --estargz|--zstdchunked --oci`, `ctr images
//     push` against a private containerd (PrivateContainerd: its own config,
//     root, state and socket in a temp dir; no systemd);
//   - zstd:chunked as podman 4.3.1 writes it: skopeo 1.9.3 (the same
//     containers/image 5.23 and containers/storage 1.43 as Debian's podman)
//     `--dest-compress --dest-compress-format zstd:chunked` into a `dir:`
//     copy, whose blobs and manifest ImagePusher then pushes. A skopeo or
//     podman push of it would not do: containers/image reuses the gzip blob
//     the registry already has for the same DiffID.
// Plus what the tests check against: the blob's footer and TOC, the compressed
// range of a file's chunk, the bytes the registry served per blob (from its
// access log), and a blob altered in the registry's storage.
//
// Failure: every step returns a Status naming the command and its output;
// nothing throws or aborts. containerd is always killed and reaped (Stop(),
// the destructor, or SIGKILL when the starting thread exits).
#ifndef REGFS_TESTS_SUPPORT_TOC_IMAGES_H_
#define REGFS_TESTS_SUPPORT_TOC_IMAGES_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {

enum class TocTool {
  kEstargz,            // ctr-remote image convert --estargz --oci
  kStargzZstdChunked,  // ctr-remote image convert --zstdchunked --oci
  kPodmanZstdChunked,  // containers/storage 1.43 (skopeo 1.9.3, podman 4.3.1)
};
inline constexpr TocTool kAllTocTools[] = {TocTool::kEstargz, TocTool::kStargzZstdChunked,
                                           TocTool::kPodmanZstdChunked};
// "estargz", "zstdchunked_stargz", "zstdchunked_podman" (test-name safe).
std::string TocToolName(TocTool tool);

// The annotations the tools write on a TOC layer's descriptor.
inline constexpr char kStargzTocDigest[] = "containerd.io/snapshot/stargz/toc.digest";
inline constexpr char kEstargzUncompressedSize[] = "io.containers.estargz.uncompressed-size";
inline constexpr char kZstdChunkedManifestChecksum[] =
    "io.containers.zstd-chunked.manifest-checksum";
inline constexpr char kZstdChunkedManifestPosition[] =
    "io.containers.zstd-chunked.manifest-position";
// containers/storage 1.44+ (no Debian 12 tool writes these).
inline constexpr char kZstdChunkedManifestChecksumNew[] =
    "io.github.containers.zstd-chunked.manifest-checksum";
inline constexpr char kZstdChunkedManifestPositionNew[] =
    "io.github.containers.zstd-chunked.manifest-position";

// What is missing of containerd, ctr, ctr-remote, skopeo; "" when nothing.
std::string TocToolsMissing();

class PrivateContainerd {
 public:
  PrivateContainerd();
  ~PrivateContainerd();  // Stop()s, then removes its directory
  PrivateContainerd(const PrivateContainerd&) = delete;
  PrivateContainerd& operator=(const PrivateContainerd&) = delete;

  // Writes the config, starts containerd and waits (bounded, 30 s) until
  // `ctr version` answers.
  Status Start();
  // SIGTERM, SIGKILL after 10 s, reaped; unmounts whatever it left mounted
  // under its root. Idempotent.
  void Stop();
  bool running() const { return pid_ > 0; }

  // `ctr -a SOCKET ARGS` / `ctr-remote -a SOCKET ARGS`.
  CommandResult Ctr(const std::vector<std::string>& args, int timeout_s = 300) const;
  CommandResult CtrRemote(const std::vector<std::string>& args, int timeout_s = 300) const;
  std::string socket() const { return dir_.Sub("c.sock"); }
  std::string LogTail(size_t max_bytes = 3000) const;

 private:
  TempDir dir_{"regfs-ctd"};
  pid_t pid_ = -1;
};

struct TocLayer {
  std::string media_type, digest;
  uint64_t size = 0;
  std::map<std::string, std::string> annotations;
  std::string blob;  // the exact bytes, as the registry serves them
};

struct TocImage {
  TocTool tool = TocTool::kEstargz;
  std::string repo, tag;
  std::string manifest, config;  // exact bytes
  std::vector<TocLayer> layers;  // bottom first
  uint64_t BlobBytes() const;    // sum of the layers' sizes
};

// Pulls repo:tag back from the registry (manifest, config, every layer).
Result<TocImage> FetchTocImage(const TestRegistry& registry, const std::string& repo,
                               const std::string& tag, TocTool tool);

// Converts src_repo:src_tag (already in `registry`) with `tool` and pushes
// the result as dst_repo:dst_tag. kEstargz and kStargzZstdChunked need a
// started `containerd`; kPodmanZstdChunked ignores it and works in `work_dir`.
Result<TocImage> ConvertImage(TocTool tool, const TestRegistry& registry,
                              PrivateContainerd* containerd, const std::string& work_dir,
                              const std::string& src_repo, const std::string& src_tag,
                              const std::string& dst_repo, const std::string& dst_tag);

// A TOC blob's footer, read from its last bytes.
struct TocFooter {
  std::string kind;  // "estargz" (51 bytes), "stargz" (legacy, 47),
                     // "zstd:chunked" (40-byte payload after an 8-byte
                     // skippable frame header, magic GnUlInUx),
                     // "zstd:chunked-v2" (64-byte payload, magic GNUlInUx)
  size_t size = 0;   // bytes at the end of the blob the footer takes
  uint64_t toc_offset = 0;
  uint64_t toc_length = 0;  // compressed; 0 where the footer does not say (eStargz)
  uint64_t toc_uncompressed_length = 0;
};
Result<TocFooter> ParseTocFooter(std::string_view blob);

// The TOC JSON of a layer: eStargz's stargz.index.json tar entry, or
// zstd:chunked's manifest frame, decompressed.
Result<std::string> ExtractTocJson(const TocLayer& layer);

// The compressed range [offset, offset + length) of the blob that holds the
// first chunk of regular file `path` (from the TOC's offsets: up to the next
// larger offset, or the TOC).
struct BlobRange {
  uint64_t offset = 0, length = 0;
};
Result<BlobRange> FirstChunkRange(const TocLayer& layer, std::string_view path);

// Bytes the registry sent in answers to GETs of /blobs/<digest> (an empty
// digest: of every blob), from its access log, once the log has settled.
uint64_t BlobBytesServed(const TestRegistry& registry, std::string_view digest = "");

// XORs `length` bytes of the stored blob at `offset` with 0xff, in the
// registry's storage directory (the registry does not check what it serves).
// Calling it again with the same range restores the blob.
Status FlipStoredBlobBytes(const TestRegistry& registry, std::string_view digest, uint64_t offset,
                           uint64_t length);

// The image the tests and the benchmark convert: layer 0 the host's cat and
// its libraries with RichEntries("toc") (every entry kind, xattrs, hard
// links, long names, /etc/os-release, ~11 MiB); layer 1 `bulk_mib` MiB of
// files 4 KiB to 1 MiB in data/ (compressing to ~40%); layer 2 a deletion,
// an opaque directory and a new file. Gzip, OCI; runs `cat /etc/os-release`.
ImageSpec TocBaseImageSpec(uint64_t bulk_mib);
// What `cat /etc/os-release` prints in it.
std::string TocBaseOsRelease();

// Writes each layer's blob, the manifest and the config under `dir`
// (created): <dir>/<tool>/{manifest.json,config.json,layer-N.blob,layer-N.toc.json}.
Status DumpTocImage(const TocImage& image, const std::string& dir);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_TOC_IMAGES_H_
