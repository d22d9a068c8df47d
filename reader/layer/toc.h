// Layers with a table of contents (TOC): eStargz and zstd:chunked. Their TOC
// lists every file with its metadata and where its bytes are compressed, so
// a layer can be listed from a footer and a TOC fetch (two small Range
// reads) and each file read by fetching only the chunks it touches.
//
// Formats (primary sources: containerd/stargz-snapshotter estargz/, and
// containers/storage pkg/chunked/):
//  - eStargz: gzip members; the TOC is a tar entry "stargz.index.json" in its
//    own gzip member; a 51-byte footer gzip member whose extra field holds
//    "%016xSTARGZ" (the TOC member's offset). Legacy stargz: a 47-byte footer
//    ("%016xSTARGZ" as the extra field's whole payload, no subfield header).
//    Annotation containerd.io/snapshot/stargz/toc.digest = sha256 of the TOC
//    JSON.
//  - zstd:chunked generation 1 (containers/storage <= 1.43, Debian 12's
//    podman/skopeo, stargz-snapshotter): zstd frames, then a skippable frame
//    with the zstd-compressed TOC and a 40-byte footer (magic "GnUlInUx").
//    Annotations io.containers.zstd-chunked.manifest-checksum / -position.
//  - zstd:chunked generation 2 (containers/storage 1.44+): also a tar-split
//    frame and a 64-byte footer (magic "GNUlInUx"). Annotations
//    io.github.containers.zstd-chunked.manifest-checksum / -position /
//    tarsplit-position.
//
// The index built from a TOC describes a *content stream* (see LayerIndex):
// regular files' bytes back to back in TOC order. TocReader serves bytes of
// that stream by chunk, verifying each chunk's SHA-256 before handing out
// any of its bytes.
//
// What the TOC gives and what it does not (checked against Debian 12's
// skopeo zstd:chunked and ctr-remote's eStargz / zstd:chunked output: the
// same entries as a full pass over the blob, minus the TOC entry and the
// landmark, and the same bytes):
//  - eStargz mtimes are whole seconds (estargz.go formatModtime rounds);
//  - containers/storage's TOC has no owner names (uname/gname stay empty;
//    its tar-split has them and is not read);
//  - zstd:chunked "zeros" chunks (runs of zeros) are compressed in the blob
//    like any other chunk: they are fetched and verified like data;
//  - a chunk without a digest (chunkDigest, or the file's digest for a file
//    in one chunk) makes the TOC unusable (Corrupt): it could not be
//    verified;
//  - entries a tar extraction would refuse ('..', over Linux's name limits,
//    uid/gid over 32 bits, unknown types, hard links to nothing before
//    them) are skipped and counted in skipped_entries, as TarReader does;
//    their data, and the landmark's, is left out of the content stream.
//
// Failure: nothing from the blob is trusted. A TOC whose digest differs from
// the annotation, malformed JSON, fields out of range, inconsistent chunks,
// or anything over TocLimits -> Corrupt (the caller falls back to a full
// pass over the blob). A chunk that does not decompress to its size or does
// not match its digest -> Corrupt naming the chunk and the blob, and no byte
// of it is returned. Source errors pass through unchanged.
#ifndef REGFS_READER_LAYER_TOC_H_
#define REGFS_READER_LAYER_TOC_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"
#include "reader/layer/layer_index.h"

namespace regfs {

// Annotation keys.
inline constexpr std::string_view kEstargzTocDigestAnnotation =
    "containerd.io/snapshot/stargz/toc.digest";
inline constexpr std::string_view kEstargzUncompressedSizeAnnotation =
    "io.containers.estargz.uncompressed-size";
inline constexpr std::string_view kZstdChunkedV1ChecksumAnnotation =
    "io.containers.zstd-chunked.manifest-checksum";
inline constexpr std::string_view kZstdChunkedV1PositionAnnotation =
    "io.containers.zstd-chunked.manifest-position";
inline constexpr std::string_view kZstdChunkedV2ChecksumAnnotation =
    "io.github.containers.zstd-chunked.manifest-checksum";
inline constexpr std::string_view kZstdChunkedV2PositionAnnotation =
    "io.github.containers.zstd-chunked.manifest-position";
inline constexpr std::string_view kZstdChunkedV2TarsplitAnnotation =
    "io.github.containers.zstd-chunked.tarsplit-position";

// Files the TOC lists that are not part of the layer's tree.
inline constexpr std::string_view kEstargzTocName = "stargz.index.json";
inline constexpr std::string_view kPrefetchLandmark = ".prefetch.landmark";
inline constexpr std::string_view kNoPrefetchLandmark = ".no.prefetch.landmark";

// Where a layer's TOC is and what it must hash to, from the annotations.
struct TocLocation {
  TocFormat format = TocFormat::kNone;
  // zstd:chunked: 1 (io.containers.*, 40-byte footer) or 2
  // (io.github.containers.*, 64-byte footer). 0 for eStargz.
  int generation = 0;
  std::string toc_digest;  // "sha256:<hex>" from the annotation
  // zstd:chunked: the TOC's place when the annotation gave it (the footer
  // is read otherwise). eStargz: always from the footer.
  bool position_known = false;
  uint64_t toc_offset = 0;             // compressed TOC in the blob
  uint64_t toc_size = 0;               // its compressed length
  uint64_t toc_uncompressed_size = 0;  // zstd:chunked: the JSON's length
  // Generation 2: the tar-split frame (not needed to list or read the
  // layer; kept for callers that want it). Zero when unknown.
  uint64_t tarsplit_offset = 0;
  uint64_t tarsplit_size = 0;
  uint64_t tarsplit_uncompressed_size = 0;

  bool operator==(const TocLocation&) const = default;
};

// nullopt when the annotations name no TOC or name it in a form we cannot
// use (a malformed digest or position: logged, the layer is read as a
// plain gzip/zstd layer). When both eStargz and zstd:chunked annotations are
// present the media type decides (gzip -> eStargz, zstd -> zstd:chunked);
// of the two zstd:chunked generations the newer wins.
std::optional<TocLocation> DetectToc(const std::map<std::string, std::string>& annotations,
                                     const BlobDescriptor& blob);

struct TocLimits {
  // containers/storage (pkg/chunked/compression_linux.go maxTocSize)
  // refuses a TOC over 150 MiB, compressed or not; so do we. The JSON is
  // held in memory (and parsed into a DOM) while the index is built.
  uint64_t max_toc_compressed = 150 << 20;
  uint64_t max_toc_json = 150 << 20;
  // Entries listed in the TOC (chunk records included).
  uint64_t max_entries = 4'000'000;
  // Chunks must be at most this big uncompressed (a chunk is decoded whole
  // and held while its digest is checked) and their compressed range at
  // most max_chunk_compressed.
  uint64_t max_chunk_size = 64 << 20;
  uint64_t max_chunk_compressed = 80 << 20;
  // The content stream (sum of regular files' sizes).
  uint64_t max_content_bytes = uint64_t{1} << 40;
  // When the TOC's position is not known (eStargz; zstd:chunked without the
  // position annotation) this many bytes are read from the blob's end with
  // the footer (as estargz.go Open does): a TOC inside them costs no second
  // request (one round trip less per layer on a slow link). 0: the footer only.
  uint64_t tail_read = 64 << 10;
};

// Reads the footer (when the position is not known; with the blob's last
// limits.tail_read bytes) and the TOC of `blob` through `src` in one or two
// Range reads, verifies the TOC against
// loc.toc_digest, parses it and returns the layer's index: entries (paths
// cleaned as tar entries are, the TOC entry and landmark files left out,
// hard links carrying their target's data), toc_chunks covering the content
// stream, prefetch_size, compression (gzip or zstd), blob_digest/blob_size,
// toc_format and toc_digest. No byte of file data is read.
Result<LayerIndex> BuildIndexFromToc(BlobSource& src, const BlobDescriptor& blob,
                                     const TocLocation& loc, const TocLimits& limits = {});

// Pure parsing steps, exposed for tests and the fuzzer.
// The position of the TOC from a footer (the blob's last 51 / 47 / 40 / 64
// bytes as `format` and loc.generation say). Corrupt when malformed or out
// of the blob.
Status ParseTocFooter(std::string_view footer, uint64_t blob_size, TocLocation* loc);
// The index from the TOC JSON (already decompressed and verified).
Result<LayerIndex> ParseTocJson(std::string_view json, const BlobDescriptor& blob,
                                const TocLocation& loc, const TocLimits& limits = {});

struct TocReaderOptions {
  // Decoded chunks kept (LRU), by count and by bytes.
  size_t max_cached_chunks = 16;
  uint64_t max_cached_bytes = 32 << 20;
};

struct TocReaderStats {
  uint64_t chunks_fetched = 0;      // chunks decoded
  uint64_t chunk_cache_hits = 0;
  uint64_t inflight_waits = 0;      // reads that waited for another's decode
  uint64_t compressed_fetched = 0;  // bytes asked of the source
};

// Random access to a TOC layer's content stream. Thread-safe; no lock is
// held during I/O or decompression. Threads that miss the same chunk at
// once share one fetch and decode (the kernel's readahead sends several
// reads into one chunk together); they all get its result, error included.
class TocReader {
 public:
  // `source` must outlive the reader. The index must have toc_chunks
  // (toc_format != kNone).
  TocReader(BlobSource* source, BlobDescriptor blob, std::shared_ptr<const LayerIndex> index,
            TocReaderOptions options = {});
  ~TocReader();
  TocReader(const TocReader&) = delete;
  TocReader& operator=(const TocReader&) = delete;

  // Content stream bytes [offset, offset + n), n = min(out.size(), what is
  // left); returns n (0 at or past the end). InvalidArgument if the index is
  // not a TOC index of this blob.
  Result<size_t> ReadAt(uint64_t offset, std::span<uint8_t> out);
  // Bytes of an entry's data (regular files and hard links to them).
  Result<size_t> Read(const TarEntry& entry, uint64_t offset, std::span<uint8_t> out);
  // Fetches (through the source's Prefetch) the compressed ranges of the
  // chunks that hold content stream [offset, offset + len): e.g. the
  // landmarked prefix [0, prefetch_size).
  Status Prefetch(uint64_t offset, uint64_t len);

  const LayerIndex& index() const { return *index_; }
  TocReaderStats stats() const;

 private:
  struct Decoded {
    size_t chunk = 0;
    std::shared_ptr<const std::string> bytes;
  };
  Result<std::shared_ptr<const std::string>> GetChunk(size_t i);

  BlobSource* source_;
  BlobDescriptor blob_;
  std::shared_ptr<const LayerIndex> index_;
  TocReaderOptions options_;

  struct InFlight;
  Result<std::shared_ptr<const std::string>> Decode(size_t i);

  mutable std::mutex mu_;       // guards cache_, cached_bytes_, inflight_
  std::list<Decoded> cache_;    // most recently used first
  uint64_t cached_bytes_ = 0;
  std::map<size_t, std::shared_ptr<InFlight>> inflight_;  // chunk -> its decode

  std::atomic<uint64_t> fetched_{0}, hits_{0}, compressed_{0}, waits_{0};
};

}  // namespace regfs

#endif  // REGFS_READER_LAYER_TOC_H_
