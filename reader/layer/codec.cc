#include "reader/layer/codec.h"

namespace regfs {

Result<std::unique_ptr<ZInflate>> ZInflate::Create(int window_bits) {
  std::unique_ptr<ZInflate> z(new ZInflate());
  if (inflateInit2(&z->strm_, window_bits) != Z_OK) {
    return Status::IoError("zlib: inflateInit2 failed");
  }
  z->live_ = true;
  return z;
}

ZInflate::~ZInflate() {
  if (live_) inflateEnd(&strm_);
}

Result<ZstdDCtxPtr> NewZstdDCtx() {
  ZstdDCtxPtr d(ZSTD_createDCtx());
  if (!d) return Status::IoError("zstd: cannot create a decompression context");
  ZSTD_DCtx_setParameter(d.get(), ZSTD_d_windowLogMax, 27);
  return d;
}

std::string DeflateWindow(std::span<const uint8_t> window) {
  struct DeflateEnd {
    void operator()(z_stream* s) const { deflateEnd(s); }
  };
  z_stream strm{};
  std::string out;
  if (deflateInit2(&strm, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) return out;
  std::unique_ptr<z_stream, DeflateEnd> guard(&strm);
  out.resize(deflateBound(&strm, window.size()));
  strm.next_in = const_cast<Bytef*>(window.data());
  strm.avail_in = static_cast<uInt>(window.size());
  strm.next_out = reinterpret_cast<Bytef*>(out.data());
  strm.avail_out = static_cast<uInt>(out.size());
  if (deflate(&strm, Z_FINISH) != Z_STREAM_END) return std::string();
  out.resize(strm.total_out);
  return out;
}

Status InflateWindow(std::string_view deflated, uint32_t size, uint8_t* out) {
  ASSIGN_OR_RETURN(std::unique_ptr<ZInflate> z, ZInflate::Create(-15));
  z_stream* s = z->get();
  s->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(deflated.data()));
  s->avail_in = static_cast<uInt>(deflated.size());
  s->next_out = out;
  s->avail_out = size;
  int ret = inflate(s, Z_FINISH);
  if (ret != Z_STREAM_END || s->total_out != size) {
    return Status::Corrupt("layer index: checkpoint window does not inflate");
  }
  return Status::Ok();
}

LayerCompression SniffCompression(std::span<const uint8_t> h) {
  if (h.size() >= 2 && h[0] == 0x1f && h[1] == 0x8b) return LayerCompression::kGzip;
  if (h.size() >= 4 && h[0] == 0x28 && h[1] == 0xb5 && h[2] == 0x2f && h[3] == 0xfd) {
    return LayerCompression::kZstd;
  }
  return LayerCompression::kNone;
}

bool HaveIsal() {
#ifdef REGFS_HAVE_ISAL
  return true;
#else
  return false;
#endif
}

InflateEngine DefaultInflateEngine() {
  return HaveIsal() ? InflateEngine::kIsal : InflateEngine::kZlib;
}

}  // namespace regfs
