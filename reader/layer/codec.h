// Codec plumbing shared by the index builder and the layer reader: one RAII
// owner per zlib / zstd / ISA-L state, the window (de)compression of gzip
// checkpoints, and format sniffing. Internal to reader/layer.
//
// Failure: allocation failures inside the C libraries become IoError;
// malformed window bytes are Corrupt.
#ifndef REGFS_READER_LAYER_CODEC_H_
#define REGFS_READER_LAYER_CODEC_H_

#include <zlib.h>
#include <zstd.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "reader/base/status.h"
#include "reader/image/manifest.h"

namespace regfs {

// A z_stream set up for inflate; inflateEnd on destruction.
class ZInflate {
 public:
  // window_bits as for inflateInit2 (-15 raw, 31 gzip).
  static Result<std::unique_ptr<ZInflate>> Create(int window_bits);
  ~ZInflate();
  ZInflate(const ZInflate&) = delete;
  ZInflate& operator=(const ZInflate&) = delete;
  z_stream* get() { return &strm_; }

 private:
  ZInflate() = default;
  z_stream strm_{};
  bool live_ = false;
};

struct ZstdDCtxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
using ZstdDCtxPtr = std::unique_ptr<ZSTD_DCtx, ZstdDCtxFree>;
// A decompression context with our window limit (2^27, zstd's default cap).
Result<ZstdDCtxPtr> NewZstdDCtx();

// Raw-deflate compression of a checkpoint window, and back. `size` is the
// expected uncompressed size; a mismatch is Corrupt.
std::string DeflateWindow(std::span<const uint8_t> window);
Status InflateWindow(std::string_view deflated, uint32_t size, uint8_t* out);

// Compression by magic bytes: 1f 8b -> gzip, 28 b5 2f fd -> zstd, else none.
LayerCompression SniffCompression(std::span<const uint8_t> head);

// Which gzip inflater the reader uses for checkpointed reads.
enum class InflateEngine { kZlib, kIsal };
// ISA-L when this build has it, zlib otherwise.
InflateEngine DefaultInflateEngine();
bool HaveIsal();

}  // namespace regfs

#endif  // REGFS_READER_LAYER_CODEC_H_
