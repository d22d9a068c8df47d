// LayerIndex: everything needed to list a layer's tar contents and to read any
// byte of its uncompressed stream without decompressing from the start:
// entries with full metadata, gzip checkpoints (zran: compressed bit offset +
// the 32 KiB window before it, kept deflate-compressed), zstd frame starts.
//
// Serialize()/Deserialize() give a compact versioned binary form (magic,
// version, CRC-32) that the cache stores as an opaque blob keyed by the layer
// digest. Deserialize never trusts the bytes: garbage, truncation, a foreign
// version or inconsistent offsets are Corrupt, never a crash.
#ifndef REGFS_READER_LAYER_LAYER_INDEX_H_
#define REGFS_READER_LAYER_LAYER_INDEX_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "reader/base/status.h"
#include "reader/image/manifest.h"
#include "reader/layer/tar_reader.h"

namespace regfs {

inline constexpr uint32_t kGzipWindowSize = 32768;

// A place in a gzip stream where inflation can restart.
struct GzipCheckpoint {
  uint64_t out_offset = 0;  // uncompressed offset
  uint64_t in_offset = 0;   // compressed offset of the first whole byte to feed
  // Bits (0-7) still to use from the byte at in_offset - 1 (its high bits).
  uint8_t bits = 0;
  uint32_t window_size = 0;   // bytes of history (<= 32 KiB; less near the start)
  std::string window_deflate;  // that history, raw-deflate compressed

  bool operator==(const GzipCheckpoint&) const = default;
};

// A zstd frame start (frames are independent; decoding may start at any).
struct ZstdFrame {
  uint64_t in_offset = 0;
  uint64_t out_offset = 0;
  bool operator==(const ZstdFrame&) const = default;
};

// Layers built for lazy pulling carry a table of contents (TOC) that says
// where each file's bytes are (see reader/layer/toc.h).
enum class TocFormat : uint8_t { kNone = 0, kEstargz = 1, kZstdChunked = 2 };
const char* TocFormatName(TocFormat format);

// One piece of a TOC layer's content stream and where its compressed bytes
// are. The chunk's bytes are: fetch blob [in_offset, in_offset + in_size),
// decompress it (one gzip member / zstd frame, or several when a writer
// packed small files together), skip inner_offset bytes, take size bytes.
struct TocChunk {
  uint64_t out_offset = 0;    // offset in the content stream
  uint64_t size = 0;          // uncompressed bytes of the chunk
  uint64_t in_offset = 0;     // compressed range to fetch
  uint64_t in_size = 0;
  uint64_t inner_offset = 0;  // decompressed bytes to skip first (eStargz innerOffset)
  std::string digest;         // "sha256:<hex>" of the chunk's size bytes; "" = none given
  bool operator==(const TocChunk&) const = default;
};

struct LayerIndex {
  // 2: diff_id; header-only entry types carry no data, global PAX records
  // change no entry, names beyond Linux's limits skipped (indexes of version
  // 1 may describe hostile layers differently: they are rebuilt).
  // 3: TOC fields (toc_format, toc_digest, toc_chunks, prefetch_size). A
  // version 2 index still loads (as a non-TOC index).
  static constexpr uint32_t kFormatVersion = 3;

  std::string blob_digest;  // "sha256:..." the blob this describes (verified)
  uint64_t blob_size = 0;
  LayerCompression compression = LayerCompression::kNone;
  uint64_t uncompressed_size = 0;
  // gzip only; sorted by out_offset; the first is at out_offset 0.
  std::vector<GzipCheckpoint> checkpoints;
  // zstd only; sorted; the first is {0, 0}. Only frame starts at least the
  // checkpoint interval apart are kept.
  std::vector<ZstdFrame> zstd_frames;
  // Tar entries in archive order. Duplicates are resolved as extraction does
  // (the later entry replaces the earlier one, which is dropped). Hard links
  // carry the data_offset/size of their target and link_target names the
  // entry whose inode they share (chains resolved).
  std::vector<TarEntry> entries;
  uint64_t gzip_members = 0;     // gzip: members in the stream (concatenated gzip > 1)
  // Entries refused by policy (see tar_reader.h; logged at build time, the
  // first 100), and global PAX headers ignored for being over their cap.
  uint64_t skipped_entries = 0;
  bool tar_end_marker = false;   // the archive had its end-of-archive block
  // "sha256:<hex>" of the uncompressed stream, when verified: the build was
  // given IndexBuildOptions::expected_diff_id and it matched, or the layer is
  // uncompressed (its DiffID is its digest). Empty when not verified: a
  // caller that needs a DiffID checked and loads a stored index with another
  // (or no) diff_id must rebuild it with expected_diff_id set.
  std::string diff_id;

  // TOC layers (eStargz, zstd:chunked) only. Their index was built from the
  // TOC, not from a pass over the blob: entries' data_offset / size and
  // uncompressed_size then refer to the *content stream*, the concatenation
  // of all regular files' contents in TOC order (no tar headers, no
  // padding), and toc_chunks say where each piece of it is compressed.
  TocFormat toc_format = TocFormat::kNone;
  std::string toc_digest;  // "sha256:..." of the TOC, as the annotation names it
  // Sorted by out_offset, contiguous from 0 to uncompressed_size, no gaps.
  std::vector<TocChunk> toc_chunks;
  // Bytes of the content stream before the prefetch landmark (files the
  // image's builder marked to fetch first); 0 = none.
  uint64_t prefetch_size = 0;

  // True when the stream has no restart point after its start (single-frame
  // zstd): a read at offset X decompresses from 0 to X, so the caller should
  // keep decompressed bytes if it wants random access to be cheap.
  bool NeedsSequentialDecompression() const {
    return compression == LayerCompression::kZstd && zstd_frames.size() <= 1 &&
           uncompressed_size > 0;
  }

  std::string Serialize() const;
  static Result<LayerIndex> Deserialize(std::string_view bytes);

  bool operator==(const LayerIndex&) const = default;
};

}  // namespace regfs

#endif  // REGFS_READER_LAYER_LAYER_INDEX_H_
