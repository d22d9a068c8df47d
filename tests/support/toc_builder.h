// TocBuilder: writes layers with a table of contents from a list of tar
// entries, following the format descriptions of the writers (no Go tool in
// the loop):
//  - eStargz as containerd/stargz-snapshotter estargz/estargz.go Writer and
//    gzip.go write it: one gzip member per file chunk (MinChunkSize > 0 lets
//    small files share one, with innerOffset), tar headers in the member of
//    the data before them, the TOC as tar entry stargz.index.json in its own
//    member, a 51-byte footer (or the 47-byte legacy stargz one).
//  - zstd:chunked as containers/storage pkg/chunked/compressor/compressor.go
//    writes it: a zstd frame per chunk of file data, headers in frames of
//    their own, the zstd-compressed TOC in a skippable frame, then
//    (generation 2) the tar-split frame, and a footer frame of 40 bytes
//    ("GnUlInUx", v1.43 internal/compression.go) or 64 bytes ("GNUlInUx",
//    current internal/minimal/compression.go).
//  - zstd:chunked as stargz-snapshotter estargz/zstdchunked writes it
//    (ctr-remote --zstdchunked): the eStargz layout in zstd frames, its JSON
//    TOC zstd-compressed in a skippable frame, the 40-byte footer.
#ifndef REGFS_TESTS_SUPPORT_TOC_BUILDER_H_
#define REGFS_TESTS_SUPPORT_TOC_BUILDER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "reader/layer/layer_index.h"
#include "tests/support/tar_writer.h"

namespace regfs::testing {

enum class TocStyle {
  kEstargz,
  kLegacyStargz,         // 47-byte footer (no annotation needed to find the TOC)
  kZstdChunkedV1,        // containers/storage 1.43 (Debian 12's podman/skopeo)
  kZstdChunkedV2,        // containers/storage 1.44+
  kStargzZstdChunked,    // stargz-snapshotter's zstd:chunked
};

struct TocBuildOptions {
  TocStyle style = TocStyle::kEstargz;
  // Bytes of file data per chunk (estargz.go ChunkSize; for zstd:chunked a
  // fixed split stands in for the rolling checksum).
  uint64_t chunk_size = 4 << 20;
  // estargz.go MinChunkSize: a new member only once this many (here:
  // uncompressed) bytes went into the current one.
  uint64_t min_chunk_size = 0;
  // Inserts a landmark file before entries[landmark_before] (build.go puts
  // ".prefetch.landmark" after the prioritized files, ".no.prefetch.landmark"
  // first when there are none). -1: no landmark.
  int landmark_before = -1;
  bool no_prefetch_landmark = false;
  // Changes the TOC JSON before it is written and hashed (the annotations
  // then match the altered TOC), to test the parser against odd TOCs.
  std::function<void(nlohmann::json&)> mutate_toc;
  // zstd:chunked: leave the position annotations out (the footer must say).
  bool omit_position_annotation = false;
};

struct TocBlob {
  std::string blob;
  std::string tar;  // the uncompressed tar stream of the same entries (with the landmark)
  std::string media_type;
  std::map<std::string, std::string> annotations;
  std::string toc_json;
  std::string toc_digest;  // what the annotation says
  uint64_t toc_offset = 0;  // compressed TOC (member / skippable frame content)
};

TocBlob BuildTocBlob(const std::vector<TarEntry>& entries, const TocBuildOptions& options = {});

// The entries' content stream: regular files' contents in order (the
// landmark's byte included when options add one, as it is in the TOC order
// but is hidden by the reader; callers compare per file).
}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_TOC_BUILDER_H_
