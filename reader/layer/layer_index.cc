#include "reader/layer/layer_index.h"

#include <zlib.h>

#include <cstring>
#include <limits>

#include "reader/base/digest.h"

namespace regfs {
namespace {

// Layout: magic(8) version(u32 LE) body_len(u64 LE) body crc32(u32 LE, over
// everything before it). The body is varints and length-prefixed strings;
// offsets are delta-coded and paths prefix-compressed against the previous one.
constexpr char kMagic[8] = {'R', 'G', 'F', 'S', 'L', 'I', 'D', 'X'};
constexpr size_t kHeaderSize = 8 + 4 + 8;

class Writer {
 public:
  void U8(uint8_t v) { s_.push_back(static_cast<char>(v)); }
  void Var(uint64_t v) {
    while (v >= 0x80) {
      U8(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    U8(static_cast<uint8_t>(v));
  }
  void ZigZag(int64_t v) {
    Var((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63));
  }
  void Str(std::string_view v) {
    Var(v.size());
    s_.append(v);
  }
  void Fixed(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::string& str() { return s_; }

 private:
  std::string s_;
};

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool U8(uint8_t* v) {
    if (pos_ >= s_.size()) return false;
    *v = static_cast<uint8_t>(s_[pos_++]);
    return true;
  }
  bool Var(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!U8(&b)) return false;
      if (shift == 63 && (b & 0x7e)) return false;
      r |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  template <typename T>
  bool VarAs(T* v) {
    uint64_t r;
    if (!Var(&r) || r > std::numeric_limits<T>::max()) return false;
    *v = static_cast<T>(r);
    return true;
  }
  bool ZigZag(int64_t* v) {
    uint64_t r;
    if (!Var(&r)) return false;
    *v = static_cast<int64_t>(r >> 1) ^ -static_cast<int64_t>(r & 1);
    return true;
  }
  bool Str(std::string* v) {
    uint64_t n;
    if (!Var(&n) || n > s_.size() - pos_) return false;
    v->assign(s_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  // A count of items that each take at least one byte: bounded by what is left.
  bool Count(uint64_t* n) { return Var(n) && *n <= s_.size() - pos_; }
  bool AtEnd() const { return pos_ == s_.size(); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

uint64_t LoadLE(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint32_t Crc(std::string_view s) {
  uLong c = crc32(0L, Z_NULL, 0);
  // crc32_z takes a size_t length.
  c = crc32_z(c, reinterpret_cast<const Bytef*>(s.data()), s.size());
  return static_cast<uint32_t>(c);
}

Status Bad(const char* what) { return Status::Corrupt(std::string("layer index: ") + what); }

// The version 3 fields. Chunks must tile the content stream [0,
// uncompressed_size) in order, each compressed range inside the blob, and
// the TOC fields must be all absent or all consistent.
Status DeserializeToc(Reader& r, LayerIndex* x) {
  uint8_t fmt;
  uint64_t n;
  if (!r.U8(&fmt) || !r.Str(&x->toc_digest) || !r.Var(&x->prefetch_size) || !r.Count(&n)) {
    return Bad("truncated TOC fields");
  }
  if (fmt > static_cast<uint8_t>(TocFormat::kZstdChunked)) return Bad("unknown TOC format");
  x->toc_format = static_cast<TocFormat>(fmt);
  if (x->toc_format == TocFormat::kNone) {
    if (!x->toc_digest.empty() || x->prefetch_size != 0 || n != 0) {
      return Bad("TOC fields in a non-TOC index");
    }
    return Status::Ok();
  }
  if (!ValidateDigest(x->toc_digest).ok()) return Bad("malformed TOC digest");
  if (x->prefetch_size > x->uncompressed_size) return Bad("prefetch size beyond the layer");
  const LayerCompression want = x->toc_format == TocFormat::kEstargz ? LayerCompression::kGzip
                                                                     : LayerCompression::kZstd;
  if (x->compression != want) return Bad("TOC format and compression disagree");
  x->toc_chunks.resize(n);
  uint64_t out = 0, prev_in = 0;
  for (TocChunk& c : x->toc_chunks) {
    int64_t din;
    if (!r.Var(&c.size) || !r.ZigZag(&din) || !r.Var(&c.in_size) || !r.Var(&c.inner_offset) ||
        !r.Str(&c.digest)) {
      return Bad("truncated TOC chunk");
    }
    c.out_offset = out;
    c.in_offset = prev_in + static_cast<uint64_t>(din);
    prev_in = c.in_offset;
    if (c.size == 0 || c.size > x->uncompressed_size - out || c.in_size == 0 ||
        c.in_offset > x->blob_size || c.in_size > x->blob_size - c.in_offset ||
        (!c.digest.empty() && !ValidateDigest(c.digest).ok())) {
      return Bad("inconsistent TOC chunk");
    }
    out += c.size;
  }
  if (out != x->uncompressed_size) return Bad("TOC chunks do not cover the content stream");
  return Status::Ok();
}

}  // namespace

const char* TocFormatName(TocFormat format) {
  switch (format) {
    case TocFormat::kNone:
      return "none";
    case TocFormat::kEstargz:
      return "estargz";
    case TocFormat::kZstdChunked:
      return "zstd:chunked";
  }
  return "?";
}

std::string LayerIndex::Serialize() const {
  Writer b;
  b.Str(blob_digest);
  b.Var(blob_size);
  b.U8(static_cast<uint8_t>(compression));
  b.Var(uncompressed_size);
  b.U8(tar_end_marker ? 1 : 0);
  b.Var(skipped_entries);
  b.Var(gzip_members);
  b.Str(diff_id);

  b.Var(checkpoints.size());
  uint64_t prev_out = 0, prev_in = 0;
  for (const GzipCheckpoint& c : checkpoints) {
    b.Var(c.out_offset - prev_out);
    b.Var(c.in_offset - prev_in);
    prev_out = c.out_offset;
    prev_in = c.in_offset;
    b.U8(c.bits);
    b.Var(c.window_size);
    b.Str(c.window_deflate);
  }
  b.Var(zstd_frames.size());
  prev_out = prev_in = 0;
  for (const ZstdFrame& f : zstd_frames) {
    b.Var(f.out_offset - prev_out);
    b.Var(f.in_offset - prev_in);
    prev_out = f.out_offset;
    prev_in = f.in_offset;
  }

  b.Var(entries.size());
  std::string_view prev_path, prev_uname, prev_gname;
  int64_t prev_mtime = 0;
  uint64_t prev_data = 0;
  for (const TarEntry& e : entries) {
    size_t shared = 0;
    while (shared < prev_path.size() && shared < e.path.size() &&
           prev_path[shared] == e.path[shared]) {
      ++shared;
    }
    b.Var(shared);
    b.Str(std::string_view(e.path).substr(shared));
    prev_path = e.path;
    b.U8(static_cast<uint8_t>(e.type));
    b.Var(e.mode);
    b.Var(e.uid);
    b.Var(e.gid);
    // Owner names repeat: 0 means "same as the previous entry".
    for (auto [name, prev] : {std::pair{std::string_view(e.uname), &prev_uname},
                              std::pair{std::string_view(e.gname), &prev_gname}}) {
      if (name == *prev) {
        b.Var(0);
      } else {
        b.Var(name.size() + 1);
        b.str().append(name);
        *prev = name;
      }
    }
    b.ZigZag(e.mtime_sec - prev_mtime);
    prev_mtime = e.mtime_sec;
    b.Var(e.mtime_nsec);
    b.Var(e.size);
    b.ZigZag(static_cast<int64_t>(e.data_offset - prev_data));
    prev_data = e.data_offset;
    b.Str(e.link_target);
    b.Var(e.dev_major);
    b.Var(e.dev_minor);
    b.Var(e.xattrs.size());
    for (const auto& [k, v] : e.xattrs) {
      b.Str(k);
      b.Str(v);
    }
  }

  // Version 3: the TOC fields, after everything version 2 had.
  b.U8(static_cast<uint8_t>(toc_format));
  b.Str(toc_digest);
  b.Var(prefetch_size);
  b.Var(toc_chunks.size());
  uint64_t prev_chunk_in = 0;
  for (const TocChunk& c : toc_chunks) {
    // out_offset is implied (chunks are contiguous); in_offset delta-coded
    // against the previous chunk's (equal for chunks sharing a member).
    b.Var(c.size);
    b.ZigZag(static_cast<int64_t>(c.in_offset - prev_chunk_in));
    prev_chunk_in = c.in_offset;
    b.Var(c.in_size);
    b.Var(c.inner_offset);
    b.Str(c.digest);
  }

  Writer out;
  out.str().append(kMagic, sizeof(kMagic));
  out.Fixed(kFormatVersion, 4);
  out.Fixed(b.str().size(), 8);
  out.str().append(b.str());
  out.Fixed(Crc(out.str()), 4);
  return std::move(out.str());
}

Result<LayerIndex> LayerIndex::Deserialize(std::string_view bytes) {
  if (bytes.size() < kHeaderSize + 4 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return Bad("bad magic or too short");
  }
  const uint32_t version = static_cast<uint32_t>(LoadLE(bytes.data() + 8, 4));
  // Version 2 differs only by lacking the TOC fields at the end.
  if (version != kFormatVersion && version != 2) {
    return Status::Corrupt("layer index: format version " + std::to_string(version) +
                           " (this build reads " + std::to_string(kFormatVersion) + ")");
  }
  const uint64_t body_len = LoadLE(bytes.data() + 12, 8);
  if (body_len != bytes.size() - kHeaderSize - 4) return Bad("length mismatch");
  const uint32_t crc = static_cast<uint32_t>(LoadLE(bytes.data() + bytes.size() - 4, 4));
  if (crc != Crc(bytes.substr(0, bytes.size() - 4))) return Bad("checksum mismatch");

  Reader r(bytes.substr(kHeaderSize, body_len));
  LayerIndex x;
  uint8_t comp, marker;
  if (!r.Str(&x.blob_digest) || !r.Var(&x.blob_size) || !r.U8(&comp) ||
      !r.Var(&x.uncompressed_size) || !r.U8(&marker) || !r.Var(&x.skipped_entries) ||
      !r.Var(&x.gzip_members) || !r.Str(&x.diff_id)) {
    return Bad("truncated header");
  }
  if (!x.diff_id.empty() && !ValidateDigest(x.diff_id).ok()) return Bad("malformed diff_id");
  switch (static_cast<LayerCompression>(comp)) {
    case LayerCompression::kNone:
    case LayerCompression::kGzip:
    case LayerCompression::kZstd:
      x.compression = static_cast<LayerCompression>(comp);
      break;
    default:
      return Bad("unknown compression");
  }
  x.tar_end_marker = marker != 0;

  uint64_t n;
  if (!r.Count(&n)) return Bad("bad checkpoint count");
  x.checkpoints.resize(n);
  uint64_t prev_out = 0, prev_in = 0;
  for (GzipCheckpoint& c : x.checkpoints) {
    uint64_t dout, din;
    if (!r.Var(&dout) || !r.Var(&din) || !r.U8(&c.bits) || !r.VarAs(&c.window_size) ||
        !r.Str(&c.window_deflate)) {
      return Bad("truncated checkpoint");
    }
    c.out_offset = prev_out + dout;
    c.in_offset = prev_in + din;
    if (c.out_offset < prev_out || c.in_offset < prev_in || c.bits > 7 ||
        c.window_size > kGzipWindowSize || c.out_offset > x.uncompressed_size ||
        c.in_offset > x.blob_size || (c.bits > 0 && c.in_offset == 0)) {
      return Bad("inconsistent checkpoint");
    }
    prev_out = c.out_offset;
    prev_in = c.in_offset;
  }
  if (!r.Count(&n)) return Bad("bad frame count");
  x.zstd_frames.resize(n);
  prev_out = prev_in = 0;
  for (ZstdFrame& f : x.zstd_frames) {
    uint64_t dout, din;
    if (!r.Var(&dout) || !r.Var(&din)) return Bad("truncated frame");
    f.out_offset = prev_out + dout;
    f.in_offset = prev_in + din;
    if (f.out_offset < prev_out || f.in_offset < prev_in || f.out_offset > x.uncompressed_size ||
        f.in_offset > x.blob_size) {
      return Bad("inconsistent frame");
    }
    prev_out = f.out_offset;
    prev_in = f.in_offset;
  }

  if (!r.Count(&n)) return Bad("bad entry count");
  x.entries.resize(n);
  std::string prev_path, prev_uname, prev_gname;
  int64_t prev_mtime = 0;
  uint64_t prev_data = 0;
  for (TarEntry& e : x.entries) {
    uint64_t shared;
    std::string suffix;
    uint8_t type;
    if (!r.Var(&shared) || shared > prev_path.size() || !r.Str(&suffix) || !r.U8(&type) ||
        type > static_cast<uint8_t>(EntryType::kFifo) || !r.VarAs(&e.mode) || !r.VarAs(&e.uid) ||
        !r.VarAs(&e.gid)) {
      return Bad("truncated entry");
    }
    e.path = prev_path.substr(0, shared) + suffix;
    prev_path = e.path;
    e.type = static_cast<EntryType>(type);
    for (auto [dst, prev] : {std::pair{&e.uname, &prev_uname}, std::pair{&e.gname, &prev_gname}}) {
      uint64_t len;
      if (!r.Var(&len)) return Bad("truncated entry owner");
      if (len == 0) {
        *dst = *prev;
      } else {
        std::string s;
        // len - 1 bytes of name follow.
        for (uint64_t i = 0; i + 1 < len; ++i) {
          uint8_t c;
          if (!r.U8(&c)) return Bad("truncated entry owner");
          s.push_back(static_cast<char>(c));
        }
        *dst = s;
        *prev = std::move(s);
      }
    }
    int64_t dm, dd;
    uint64_t nx;
    if (!r.ZigZag(&dm) || !r.VarAs(&e.mtime_nsec) || e.mtime_nsec >= 1000000000u ||
        !r.Var(&e.size) || !r.ZigZag(&dd) || !r.Str(&e.link_target) || !r.VarAs(&e.dev_major) ||
        !r.VarAs(&e.dev_minor) || !r.Count(&nx)) {
      return Bad("truncated entry");
    }
    e.mtime_sec = static_cast<int64_t>(static_cast<uint64_t>(prev_mtime) + static_cast<uint64_t>(dm));
    prev_mtime = e.mtime_sec;
    e.data_offset = prev_data + static_cast<uint64_t>(dd);
    prev_data = e.data_offset;
    if (e.size > x.uncompressed_size || e.data_offset > x.uncompressed_size - e.size) {
      return Bad("entry data outside the layer");
    }
    e.xattrs.resize(nx);
    for (auto& [k, v] : e.xattrs) {
      if (!r.Str(&k) || !r.Str(&v)) return Bad("truncated xattr");
    }
  }
  if (version >= 3) {
    Status st = DeserializeToc(r, &x);
    if (!st.ok()) return st;
  }
  if (!r.AtEnd()) return Bad("trailing bytes");
  // A TOC index reads through its chunks, not from restart points.
  if (x.toc_format == TocFormat::kNone) {
    if (x.compression == LayerCompression::kGzip &&
        (x.checkpoints.empty() || x.checkpoints[0].out_offset != 0)) {
      return Bad("gzip index without a first checkpoint");
    }
    if (x.compression == LayerCompression::kZstd &&
        (x.zstd_frames.empty() || x.zstd_frames[0].out_offset != 0 ||
         x.zstd_frames[0].in_offset != 0)) {
      return Bad("zstd index without a first frame");
    }
  }
  return x;
}

}  // namespace regfs
