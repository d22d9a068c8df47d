#include "reader/layer/toc.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>
#include <vector>

#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/layer/tar_header.h"
#include "reader/layer/tar_reader.h"

namespace regfs {
namespace {

using json = nlohmann::json;

// estargz/types.go: FooterSize (51) and legacyFooterSize (47).
constexpr size_t kEstargzFooterSize = 51;
constexpr size_t kLegacyStargzFooterSize = 47;
// containers/storage v1.43 pkg/chunked/internal/compression.go:
// FooterSizeSupported = 40, ZstdChunkedFrameMagic "GnUlInUx"; current
// pkg/chunked/internal/minimal/compression.go: 64, "GNUlInUx".
constexpr size_t kZstdChunkedV1FooterSize = 40;
constexpr size_t kZstdChunkedV2FooterSize = 64;
constexpr char kZstdChunkedV1Magic[8] = {'G', 'n', 'U', 'l', 'I', 'n', 'U', 'x'};
constexpr char kZstdChunkedV2Magic[8] = {'G', 'N', 'U', 'l', 'I', 'n', 'U', 'x'};
// A zstd skippable frame's header: magic (4) + length (4). The TOC position
// names the frame's content, 8 bytes after the frame's start.
constexpr uint64_t kSkippableFrameHeader = 8;
// ManifestTypeCRFS: the only manifest type either generation writes.
constexpr uint64_t kManifestTypeCrfs = 1;

uint64_t LoadLE64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Decimal without sign, as Go's "%d" writes a uint64.
bool ParseDecimal(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t r = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (r > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    r = r * 10 + d;
  }
  *v = r;
  return true;
}

// "a:b:c[:d]" -> numbers; false unless exactly `n` of them.
bool ParsePosition(std::string_view s, size_t n, uint64_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const size_t colon = s.find(':');
    const std::string_view part = i + 1 == n ? s : s.substr(0, colon);
    if (i + 1 < n && colon == std::string_view::npos) return false;
    if (!ParseDecimal(part, &out[i])) return false;
    if (i + 1 < n) s.remove_prefix(colon + 1);
  }
  return true;
}

// The compression a layer media type names. Like CompressionOfMediaType
// (reader/image), which regfs_layer does not link: OCI "+gzip" / "+zstd"
// and Docker's "...diff.tar.gzip"; kUnknown for anything else.
LayerCompression TocCompressionOf(std::string_view mt) {
  auto ends = [&](std::string_view suffix) {
    return mt.size() >= suffix.size() && mt.substr(mt.size() - suffix.size()) == suffix;
  };
  if (ends("+gzip") || ends(".gzip")) return LayerCompression::kGzip;
  if (ends("+zstd")) return LayerCompression::kZstd;
  return LayerCompression::kUnknown;
}

const std::string* Find(const std::map<std::string, std::string>& m, std::string_view key) {
  auto it = m.find(std::string(key));
  return it == m.end() ? nullptr : &it->second;
}

// A decompressor over a compressed range held in memory: gzip (one or more
// members, as a chunk's range may run into the next member) or zstd (frames,
// skippable frames skipped). Read() yields exactly n bytes or fails.
class RangeDecoder {
 public:
  RangeDecoder(LayerCompression c, std::string_view in) : c_(c), in_(in) {}
  ~RangeDecoder() {
    if (gz_init_) inflateEnd(&zs_);
    if (zd_ != nullptr) ZSTD_freeDCtx(zd_);
  }
  RangeDecoder(const RangeDecoder&) = delete;
  RangeDecoder& operator=(const RangeDecoder&) = delete;

  // Appends n bytes to *out (or drops them when out is null).
  Status Read(uint64_t n, std::string* out) {
    char scratch[16384];
    while (n > 0) {
      const size_t room = static_cast<size_t>(std::min<uint64_t>(n, sizeof(scratch)));
      size_t got = 0;
      Status st = c_ == LayerCompression::kGzip ? InflateSome(scratch, room, &got)
                                                : UnzstdSome(scratch, room, &got);
      if (!st.ok()) return st;
      if (got == 0) return Status::Corrupt("compressed data ends early");
      if (out != nullptr) out->append(scratch, got);
      n -= got;
    }
    return Status::Ok();
  }

 private:
  Status InflateSome(char* buf, size_t room, size_t* got) {
    if (!gz_init_) {
      std::memset(&zs_, 0, sizeof(zs_));
      if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) return Status::IoError("inflateInit2 failed");
      gz_init_ = true;
      zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in_.data()));
      zs_.avail_in = static_cast<uInt>(std::min<size_t>(in_.size(), UINT32_MAX));
      fed_ = zs_.avail_in;
    }
    zs_.next_out = reinterpret_cast<Bytef*>(buf);
    zs_.avail_out = static_cast<uInt>(room);
    while (zs_.avail_out == room) {
      if (zs_.avail_in == 0 && fed_ < in_.size()) {
        zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in_.data() + fed_));
        zs_.avail_in = static_cast<uInt>(std::min<size_t>(in_.size() - fed_, UINT32_MAX));
        fed_ += zs_.avail_in;
      }
      if (member_done_) {
        if (zs_.avail_in == 0) break;  // no further member
        if (inflateReset(&zs_) != Z_OK) return Status::Corrupt("gzip: reset failed");
        member_done_ = false;
      }
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        member_done_ = true;
      } else if (rc == Z_BUF_ERROR) {
        if (zs_.avail_in == 0 && fed_ == in_.size()) break;
      } else if (rc != Z_OK) {
        return Status::Corrupt(std::string("gzip: ") + (zs_.msg ? zs_.msg : "inflate failed"));
      }
    }
    *got = room - zs_.avail_out;
    return Status::Ok();
  }

  Status UnzstdSome(char* buf, size_t room, size_t* got) {
    if (zd_ == nullptr) {
      zd_ = ZSTD_createDCtx();
      if (zd_ == nullptr) return Status::IoError("ZSTD_createDCtx failed");
    }
    ZSTD_outBuffer ob{buf, room, 0};
    while (ob.pos == 0) {
      if (zin_.pos == zin_.size) break;
      const size_t rc = ZSTD_decompressStream(zd_, &ob, &zin_);
      if (ZSTD_isError(rc)) return Status::Corrupt(std::string("zstd: ") + ZSTD_getErrorName(rc));
    }
    *got = ob.pos;
    return Status::Ok();
  }

  LayerCompression c_;
  std::string_view in_;
  z_stream zs_{};
  bool gz_init_ = false;
  bool member_done_ = false;
  size_t fed_ = 0;
  ZSTD_DCtx* zd_ = nullptr;
  ZSTD_inBuffer zin_{in_.data(), in_.size(), 0};
};

// RFC 3339 as Go writes a time.Time ("2006-01-02T15:04:05.999999999Z07:00").
// False when malformed.
bool ParseRfc3339(std::string_view s, int64_t* sec, uint32_t* nsec) {
  auto digits = [&](size_t pos, size_t n, int* v) {
    if (pos + n > s.size()) return false;
    int r = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      r = r * 10 + (s[i] - '0');
    }
    *v = r;
    return true;
  };
  int y, mo, d, h, mi, se;
  if (!digits(0, 4, &y) || s.size() < 20 || s[4] != '-' || !digits(5, 2, &mo) || s[7] != '-' ||
      !digits(8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(11, 2, &h) || s[13] != ':' ||
      !digits(14, 2, &mi) || s[16] != ':' || !digits(17, 2, &se)) {
    return false;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return false;
  size_t pos = 19;
  uint32_t frac = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t n = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (n < 9) frac = frac * 10 + static_cast<uint32_t>(s[pos] - '0');
      ++n;
      ++pos;
    }
    if (n == 0) return false;
    for (size_t i = n; i < 9; ++i) frac *= 10;
  }
  int64_t offset = 0;
  if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
    ++pos;
  } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
    int oh, om;
    if (!digits(pos + 1, 2, &oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
        !digits(pos + 4, 2, &om)) {
      return false;
    }
    offset = (oh * 3600 + om * 60) * (s[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return false;
  }
  if (pos != s.size()) return false;
  // Days from the civil date (H. Hinnant's algorithm), no time zone database.
  const int yy = y - (mo <= 2 ? 1 : 0);
  const int era = yy / 400;
  const int yoe = yy - era * 400;
  const int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const int64_t days = static_cast<int64_t>(era) * 146097 + doe - 719468;
  *sec = days * 86400 + h * 3600 + mi * 60 + se - offset;
  *nsec = frac;
  return true;
}

// Field access that never throws: absent is fine, the wrong JSON type is not.
class EntryFields {
 public:
  explicit EntryFields(const json& e) : e_(e) {}
  bool Str(const char* key, std::string* v) {
    auto it = e_.find(key);
    if (it == e_.end() || it->is_null()) return true;
    if (!it->is_string()) return Bad(key);
    *v = it->get<std::string>();
    return true;
  }
  // Non-negative integers only (JSON floats, negatives and strings refused).
  bool U64(const char* key, uint64_t* v) {
    auto it = e_.find(key);
    if (it == e_.end() || it->is_null()) return true;
    if (it->is_number_unsigned()) {
      *v = it->get<uint64_t>();
      return true;
    }
    if (it->is_number_integer() && it->get<int64_t>() >= 0) {
      *v = static_cast<uint64_t>(it->get<int64_t>());
      return true;
    }
    return Bad(key);
  }
  // Go's int64 mode: any integer (negative modes are masked later).
  bool I64(const char* key, int64_t* v) {
    auto it = e_.find(key);
    if (it == e_.end() || it->is_null()) return true;
    if (it->is_number_integer()) {
      *v = it->is_number_unsigned() ? static_cast<int64_t>(it->get<uint64_t>())
                                    : it->get<int64_t>();
      return true;
    }
    return Bad(key);
  }
  const json* Obj(const char* key) {
    auto it = e_.find(key);
    if (it == e_.end() || it->is_null()) return nullptr;
    if (!it->is_object()) {
      Bad(key);
      return nullptr;
    }
    return &*it;
  }
  const std::string& bad() const { return bad_; }

 private:
  bool Bad(const char* key) {
    bad_ = key;
    return false;
  }
  const json& e_;
  std::string bad_;
};

// One piece of a regular file's data as the TOC lists it.
struct Piece {
  uint64_t chunk_offset = 0;
  uint64_t chunk_size = 0;  // 0: to the end of the file
  uint64_t offset = 0;      // compressed start
  uint64_t inner_offset = 0;
  uint64_t end_offset = 0;  // zstd:chunked endOffset (0: unknown)
  std::string digest;       // chunkDigest
};

bool PathOk(const std::string& p) {
  if (p.size() > TarReader::kMaxPath || p.find('\0') != std::string::npos) return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t slash = p.find('/', start);
    if (slash == std::string::npos) slash = p.size();
    if (slash - start > TarReader::kMaxNameComponent) return false;
    start = slash + 1;
  }
  return true;
}

class TocParser {
 public:
  TocParser(const BlobDescriptor& blob, const TocLocation& loc, const TocLimits& limits)
      : blob_(blob), loc_(loc), limits_(limits) {}

  Result<LayerIndex> Parse(std::string_view text) {
    json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return Fail("TOC is not valid JSON");
    if (!doc.is_object()) return Fail("TOC is not a JSON object");
    auto entries = doc.find("entries");
    if (entries == doc.end() || !entries->is_array()) return Fail("TOC has no entries array");
    if (entries->size() > limits_.max_entries) {
      return Fail("TOC has " + std::to_string(entries->size()) + " entries (max " +
                  std::to_string(limits_.max_entries) + ")");
    }
    // The compressed data ends where the TOC's frame/member begins.
    data_end_ = loc_.format == TocFormat::kZstdChunked
                    ? (loc_.toc_offset >= kSkippableFrameHeader ? loc_.toc_offset - kSkippableFrameHeader
                                                                : 0)
                    : loc_.toc_offset;
    index_.blob_digest = blob_.digest;
    index_.blob_size = blob_.size;
    index_.compression = loc_.format == TocFormat::kEstargz ? LayerCompression::kGzip
                                                            : LayerCompression::kZstd;
    index_.toc_format = loc_.format;
    index_.toc_digest = loc_.toc_digest;
    for (size_t i = 0; i < entries->size(); ++i) {
      Status st = Entry((*entries)[i], i);
      if (!st.ok()) return st;
    }
    RETURN_IF_ERROR(FinishFile());
    RETURN_IF_ERROR(Finish());
    return std::move(index_);
  }

 private:
  Status Fail(const std::string& why) const {
    return Status::Corrupt("layer " + blob_.digest + ": " + TocFormatName(loc_.format) +
                           " TOC: " + why);
  }
  Status FailAt(size_t i, const std::string& why) const {
    return Fail("entry " + std::to_string(i) + ": " + why);
  }
  void Skip(const std::string& path, const std::string& why) {
    if (++skipped_ <= 100) LOG_WARN("TOC of " + blob_.digest + ": skipping '" + path + "': " + why);
  }

  Status Entry(const json& e, size_t i) {
    if (!e.is_object()) return FailAt(i, "not an object");
    EntryFields f(e);
    std::string type, name, link, digest, chunk_digest, chunk_type, mtime, uname, gname;
    uint64_t size = 0, offset = 0, end_offset = 0, chunk_offset = 0, chunk_size = 0,
             inner_offset = 0, uid = 0, gid = 0, dev_major = 0, dev_minor = 0;
    int64_t mode = 0;
    if (!f.Str("type", &type) || !f.Str("name", &name) || !f.Str("linkName", &link) ||
        !f.Str("digest", &digest) || !f.Str("chunkDigest", &chunk_digest) ||
        !f.Str("chunkType", &chunk_type) || !f.Str("modtime", &mtime) ||
        !f.Str("userName", &uname) || !f.Str("groupName", &gname) || !f.U64("size", &size) ||
        !f.U64("offset", &offset) || !f.U64("endOffset", &end_offset) ||
        !f.U64("chunkOffset", &chunk_offset) || !f.U64("chunkSize", &chunk_size) ||
        !f.U64("innerOffset", &inner_offset) || !f.U64("uid", &uid) || !f.U64("gid", &gid) ||
        !f.U64("devMajor", &dev_major) || !f.U64("devMinor", &dev_minor) ||
        !f.I64("mode", &mode)) {
      return FailAt(i, "malformed field '" + f.bad() + "'");
    }
    if (name.size() > TarReader::kMaxLongNameSize || link.size() > TarReader::kMaxLongNameSize) {
      return FailAt(i, "name or link name over " + std::to_string(TarReader::kMaxLongNameSize) +
                           " bytes");
    }
    const bool data_piece = type == "chunk" || (type == "reg" && size > 0);
    Piece piece;
    if (data_piece) {
      piece.chunk_offset = chunk_offset;
      piece.chunk_size = chunk_size;
      piece.offset = offset;
      piece.inner_offset = inner_offset;
      piece.end_offset = end_offset;
      piece.digest = chunk_digest;
      // zstd:chunked "zeros" chunks (holes) are still compressed in the blob
      // (containers/storage compressor.go writes the zeros into the frame):
      // they are read and verified like data chunks.
      if (!chunk_type.empty() && chunk_type != "zeros") {
        return FailAt(i, "unknown chunkType '" + chunk_type + "'");
      }
    }
    if (type == "chunk") {
      // estargz.go initFields: a chunk continues the last "reg" entry.
      if (!in_file_) return FailAt(i, "chunk entry without a regular file before it");
      file_pieces_.push_back(std::move(piece));
      return Status::Ok();
    }
    RETURN_IF_ERROR(FinishFile());

    // estargz.go initFields: a user/group name given once holds for the
    // later entries with the same id.
    if (!uname.empty()) {
      unames_[uid] = uname;
    } else if (auto it = unames_.find(uid); it != unames_.end()) {
      uname = it->second;
    }
    if (!gname.empty()) {
      gnames_[gid] = gname;
    } else if (auto it = gnames_.find(gid); it != gnames_.end()) {
      gname = it->second;
    }

    TarEntry out;
    if (type == "reg") {
      out.type = EntryType::kRegular;
    } else if (type == "dir") {
      out.type = EntryType::kDirectory;
    } else if (type == "symlink") {
      out.type = EntryType::kSymlink;
    } else if (type == "hardlink") {
      out.type = EntryType::kHardLink;
    } else if (type == "char") {
      out.type = EntryType::kCharDevice;
    } else if (type == "block") {
      out.type = EntryType::kBlockDevice;
    } else if (type == "fifo") {
      out.type = EntryType::kFifo;
    } else {
      Skip(name, "unknown type '" + type + "'");
      return Status::Ok();
    }
    std::optional<std::string> path = CleanTarPath(name);
    bool keep = true;
    if (!path) {
      Skip(name, "'..' in the path");
      keep = false;
    } else if (!PathOk(*path)) {
      Skip(name, "path beyond Linux's limits");
      keep = false;
    }
    if (keep && (uid > UINT32_MAX || gid > UINT32_MAX)) {
      Skip(name, "uid/gid beyond 32 bits");
      keep = false;
    }
    if (keep && (dev_major > UINT32_MAX || dev_minor > UINT32_MAX)) {
      Skip(name, "device number beyond 32 bits");
      keep = false;
    }
    if (keep && out.type == EntryType::kSymlink &&
        (link.size() > TarReader::kMaxPath || link.find('\0') != std::string::npos)) {
      Skip(name, "symlink target beyond Linux's limits");
      keep = false;
    }
    if (keep && out.type == EntryType::kHardLink) {
      std::optional<std::string> t = CleanTarPath(link);
      if (!t || !PathOk(*t)) {
        Skip(name, "hard link target unusable");
        keep = false;
      } else {
        link = std::move(*t);
      }
    }
    // Files the layer's tree does not show (stargz-snapshotter hides them):
    // the TOC's own tar entry and the prefetch landmarks.
    bool hidden = false;
    if (keep && (*path == kEstargzTocName || *path == kPrefetchLandmark ||
                 *path == kNoPrefetchLandmark)) {
      hidden = true;
      if (*path == kPrefetchLandmark) {
        index_.prefetch_size = content_size_;
        saw_landmark_ = true;
      } else if (*path == kNoPrefetchLandmark) {
        index_.prefetch_size = 0;
        saw_landmark_ = true;
      }
    }
    if (out.type == EntryType::kRegular) {
      in_file_ = true;
      // A hidden or skipped file's data is left out of the content stream:
      // nothing reads it (and a landmark need not carry a digest).
      file_hidden_ = hidden || !keep;
      file_size_ = size;
      file_digest_ = digest;
      file_pieces_.clear();
      if (data_piece) file_pieces_.push_back(std::move(piece));
      file_entry_ = keep && !hidden ? index_.entries.size() + 1 : 0;
      file_index_ = i;
    }
    if (!keep || hidden) return Status::Ok();

    out.path = std::move(*path);
    out.mode = static_cast<uint32_t>(mode) & 07777;
    out.uid = static_cast<uint32_t>(uid);
    out.gid = static_cast<uint32_t>(gid);
    out.uname = std::move(uname);
    out.gname = std::move(gname);
    if (!mtime.empty() && !ParseRfc3339(mtime, &out.mtime_sec, &out.mtime_nsec)) {
      // estargz.go ignores a time it cannot parse (zero time); so do we.
      out.mtime_sec = 0;
      out.mtime_nsec = 0;
    }
    if (out.type == EntryType::kSymlink || out.type == EntryType::kHardLink) {
      out.link_target = std::move(link);
    }
    if (out.type == EntryType::kCharDevice || out.type == EntryType::kBlockDevice) {
      out.dev_major = static_cast<uint32_t>(dev_major);
      out.dev_minor = static_cast<uint32_t>(dev_minor);
    }
    if (const json* x = f.Obj("xattrs")) {
      RETURN_IF_ERROR(Xattrs(*x, i, &out));
    } else if (!f.bad().empty()) {
      return FailAt(i, "malformed field 'xattrs'");
    }
    if (out.type == EntryType::kRegular) out.size = size;
    return Add(std::move(out), i);
  }

  // Both formats write xattr values base64 (estargz: Go's []byte in JSON;
  // containers/storage: base64.StdEncoding explicitly). Limits as TarReader.
  Status Xattrs(const json& x, size_t i, TarEntry* out) {
    size_t bytes = 0;
    for (auto it = x.begin(); it != x.end(); ++it) {
      if (!it.value().is_string()) return FailAt(i, "xattr value is not a string");
      std::optional<std::string> v = Base64DecodeStrict(it.value().get_ref<const std::string&>());
      if (!v) return FailAt(i, "xattr '" + it.key() + "' is not base64");
      if (it.key().empty() || it.key().size() > TarReader::kMaxXattrName ||
          v->size() > TarReader::kMaxXattrValue || out->xattrs.size() >= TarReader::kMaxXattrs ||
          bytes + it.key().size() + v->size() > TarReader::kMaxXattrBytes ||
          it.key().find('\0') != std::string::npos) {
        ++dropped_xattrs_;
        continue;
      }
      bytes += it.key().size() + v->size();
      out->xattrs.emplace_back(it.key(), std::move(*v));
    }
    return Status::Ok();
  }

  // Records an entry: duplicates and hard links as BuildLayerIndex does
  // (index_builder.cc): the later entry of a path wins; a hard link takes
  // its target's data; when a linked entry is replaced its first surviving
  // link takes over the inode.
  Status Add(TarEntry e, size_t i) {
    if (index_.entries.size() >= limits_.max_entries) return FailAt(i, "too many entries");
    size_t inode = kNoInode;
    if (e.type == EntryType::kHardLink) {
      auto it = by_path_.find(e.link_target);
      const TarEntry* t = it == by_path_.end() ? nullptr : &index_.entries[it->second];
      if (t == nullptr || t->type == EntryType::kDirectory || e.link_target == e.path) {
        Skip(e.path, "hard link target '" + e.link_target + "' is not before it or cannot be linked");
        return Status::Ok();
      }
      if (inode_of_[it->second] == kNoInode) {
        inode_of_[it->second] = inodes_.size();
        inodes_.push_back(Inode{it->second, {}, 0});
      }
      inode = inode_of_[it->second];
      // The target's data is placed already: FinishFile ran before this
      // entry. Finish() copies it again from the inode's final primary.
      e.size = t->size;
      e.data_offset = t->data_offset;
    }
    auto [it, inserted] = by_path_.try_emplace(e.path, index_.entries.size());
    if (!inserted) {
      const size_t old = it->second;
      dead_[old] = true;
      it->second = index_.entries.size();
      if (inode_of_[old] != kNoInode && inodes_[inode_of_[old]].primary == old) {
        Inode& n = inodes_[inode_of_[old]];
        while (n.next < n.links.size() && dead_[n.links[n.next]]) ++n.next;
        if (n.next < n.links.size()) {
          const size_t heir = n.links[n.next++];
          std::string heir_path = std::move(index_.entries[heir].path);
          index_.entries[heir] = index_.entries[old];
          index_.entries[heir].path = std::move(heir_path);
          n.primary = heir;
        }
      }
    }
    if (inode != kNoInode) inodes_[inode].links.push_back(index_.entries.size());
    index_.entries.push_back(std::move(e));
    inode_of_.push_back(inode);
    dead_.push_back(false);
    return Status::Ok();
  }

  // Places the collected regular file's pieces in the content stream.
  Status FinishFile() {
    if (!in_file_) return Status::Ok();
    in_file_ = false;
    const size_t i = file_index_;
    const uint64_t start = content_size_;
    if (file_size_ > 0 && !file_hidden_) {
      if (file_pieces_.empty()) return FailAt(i, "regular file with data but no offset");
      if (file_size_ > limits_.max_content_bytes - content_size_) {
        return Fail("content over " + std::to_string(limits_.max_content_bytes) + " bytes");
      }
      uint64_t at = 0;
      for (size_t k = 0; k < file_pieces_.size(); ++k) {
        Piece& p = file_pieces_[k];
        if (p.chunk_offset != at) {
          return FailAt(i, "chunk at file offset " + std::to_string(p.chunk_offset) +
                               " where " + std::to_string(at) + " was expected");
        }
        uint64_t sz = p.chunk_size;
        // estargz.go: a chunkSize of 0 means "to the end of the file".
        if (sz == 0 || sz > file_size_ - at) {
          if (sz != 0) return FailAt(i, "chunk beyond the file's size");
          sz = file_size_ - at;
        }
        if (sz == 0) return FailAt(i, "empty chunk");
        if (sz > limits_.max_chunk_size) {
          return FailAt(i, "chunk of " + std::to_string(sz) + " bytes (max " +
                               std::to_string(limits_.max_chunk_size) + ")");
        }
        std::string dg = p.digest;
        // A file in one piece: its digest is the chunk's (estargz.go
        // Verifiers falls back on it; containers/storage writes no
        // chunkDigest for one-chunk files).
        if (dg.empty() && file_pieces_.size() == 1) dg = file_digest_;
        if (dg.empty()) return FailAt(i, "chunk without a digest (cannot be verified)");
        if (!ValidateDigest(dg).ok()) return FailAt(i, "malformed chunk digest '" + dg + "'");
        // Offset 0 is possible: with MinChunkSize, estargz.go may put the
        // first file's data in the blob's first member (after its header).
        if (p.offset >= data_end_) {
          return FailAt(i, "chunk offset " + std::to_string(p.offset) + " outside the data");
        }
        if (p.inner_offset > limits_.max_chunk_size) return FailAt(i, "innerOffset too large");
        TocChunk c;
        c.out_offset = content_size_ + at;
        c.size = sz;
        c.in_offset = p.offset;
        c.inner_offset = p.inner_offset;
        c.digest = std::move(dg);
        // containers/storage: endOffset ends the file's last frame.
        end_hints_.push_back(k + 1 == file_pieces_.size() && p.end_offset > p.offset &&
                                     p.end_offset <= data_end_
                                 ? p.end_offset
                                 : 0);
        starts_.push_back(p.offset);
        index_.toc_chunks.push_back(std::move(c));
        at += sz;
      }
      if (at != file_size_) return FailAt(i, "chunks do not add up to the file's size");
      content_size_ += file_size_;
    }
    if (file_entry_ != 0) index_.entries[file_entry_ - 1].data_offset = start;
    file_entry_ = 0;
    return Status::Ok();
  }

  Status Finish() {
    // A chunk's compressed range runs to the next member / frame start that
    // any chunk names (the writers start one per chunk, except chunks that
    // share one through innerOffset), or to the TOC.
    std::vector<uint64_t> starts = starts_;
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
    for (size_t k = 0; k < index_.toc_chunks.size(); ++k) {
      TocChunk& c = index_.toc_chunks[k];
      auto next = std::upper_bound(starts.begin(), starts.end(), c.in_offset);
      uint64_t end = next == starts.end() ? data_end_ : *next;
      if (end_hints_[k] != 0) end = std::min(end, end_hints_[k]);
      c.in_size = end - c.in_offset;
      if (c.in_size > limits_.max_chunk_compressed) {
        return Fail("chunk at blob offset " + std::to_string(c.in_offset) + " spans " +
                    std::to_string(c.in_size) + " compressed bytes (max " +
                    std::to_string(limits_.max_chunk_compressed) + ")");
      }
    }
    for (size_t k = 0; k < index_.entries.size(); ++k) {
      if (!dead_[k] && index_.entries[k].type == EntryType::kHardLink) {
        const TarEntry& p = index_.entries[inodes_[inode_of_[k]].primary];
        index_.entries[k].link_target = p.path;
        index_.entries[k].size = p.size;
        index_.entries[k].data_offset = p.data_offset;
      }
    }
    if (std::find(dead_.begin(), dead_.end(), true) != dead_.end()) {
      std::vector<TarEntry> live;
      live.reserve(index_.entries.size());
      for (size_t k = 0; k < index_.entries.size(); ++k) {
        if (!dead_[k]) live.push_back(std::move(index_.entries[k]));
      }
      index_.entries = std::move(live);
    }
    index_.uncompressed_size = content_size_;
    index_.skipped_entries = skipped_;
    if (dropped_xattrs_ > 0) {
      LOG_WARN("TOC of " + blob_.digest + ": dropped " + std::to_string(dropped_xattrs_) +
               " xattrs beyond the limits");
    }
    (void)saw_landmark_;
    return Status::Ok();
  }

  static constexpr size_t kNoInode = std::numeric_limits<size_t>::max();
  struct Inode {
    size_t primary;
    std::vector<size_t> links;
    size_t next = 0;
  };

  const BlobDescriptor& blob_;
  const TocLocation& loc_;
  const TocLimits& limits_;
  LayerIndex index_;
  uint64_t data_end_ = 0;
  uint64_t content_size_ = 0;
  uint64_t skipped_ = 0;
  uint64_t dropped_xattrs_ = 0;
  bool saw_landmark_ = false;
  std::unordered_map<uint64_t, std::string> unames_, gnames_;
  // The regular file being collected (its "chunk" entries follow it).
  bool in_file_ = false;
  bool file_hidden_ = false;
  uint64_t file_size_ = 0;
  std::string file_digest_;
  std::vector<Piece> file_pieces_;
  size_t file_entry_ = 0;  // its index in entries + 1; 0 when not listed
  size_t file_index_ = 0;  // its TOC position, for messages
  std::vector<uint64_t> starts_;
  std::vector<uint64_t> end_hints_;  // per toc_chunk
  std::unordered_map<std::string, size_t> by_path_;
  std::vector<Inode> inodes_;
  std::vector<size_t> inode_of_;
  std::vector<bool> dead_;
};

Status ReadRange(BlobSource& src, const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                 std::string* out) {
  out->assign(len, '\0');
  return src.ReadAt(blob, offset, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out->data()), len));
}

}  // namespace

std::optional<TocLocation> DetectToc(const std::map<std::string, std::string>& annotations,
                                     const BlobDescriptor& blob) {
  const LayerCompression c = TocCompressionOf(blob.media_type);
  auto valid_digest = [&](const std::string* d, std::string_view key) {
    if (d == nullptr) return false;
    if (!ValidateDigest(*d).ok()) {
      LOG_WARN("layer " + blob.digest + ": annotation " + std::string(key) + " '" +
               d->substr(0, 100) + "' is not a sha256 digest; reading it without its TOC");
      return false;
    }
    return true;
  };
  if (c != LayerCompression::kGzip) {
    // zstd:chunked, newest generation first.
    struct Gen {
      int generation;
      std::string_view checksum, position;
    };
    for (const Gen& g : {Gen{2, kZstdChunkedV2ChecksumAnnotation, kZstdChunkedV2PositionAnnotation},
                         Gen{1, kZstdChunkedV1ChecksumAnnotation, kZstdChunkedV1PositionAnnotation}}) {
      const std::string* d = Find(annotations, g.checksum);
      if (!valid_digest(d, g.checksum)) continue;
      TocLocation loc;
      loc.format = TocFormat::kZstdChunked;
      loc.generation = g.generation;
      loc.toc_digest = *d;
      if (const std::string* p = Find(annotations, g.position)) {
        uint64_t v[4];
        if (ParsePosition(*p, 4, v) && v[3] == kManifestTypeCrfs && v[1] > 0 &&
            v[0] <= blob.size && v[1] <= blob.size - v[0]) {
          loc.position_known = true;
          loc.toc_offset = v[0];
          loc.toc_size = v[1];
          loc.toc_uncompressed_size = v[2];
        } else {
          LOG_WARN("layer " + blob.digest + ": annotation " + std::string(g.position) + " '" +
                   p->substr(0, 100) + "' unusable; the footer will say");
        }
      }
      if (g.generation == 2) {
        if (const std::string* t = Find(annotations, kZstdChunkedV2TarsplitAnnotation)) {
          uint64_t v[3];
          if (ParsePosition(*t, 3, v)) {
            loc.tarsplit_offset = v[0];
            loc.tarsplit_size = v[1];
            loc.tarsplit_uncompressed_size = v[2];
          }
        }
      }
      return loc;
    }
  }
  if (c != LayerCompression::kZstd) {
    const std::string* d = Find(annotations, kEstargzTocDigestAnnotation);
    if (valid_digest(d, kEstargzTocDigestAnnotation)) {
      TocLocation loc;
      loc.format = TocFormat::kEstargz;
      loc.toc_digest = *d;
      return loc;
    }
  }
  return std::nullopt;
}

Status ParseTocFooter(std::string_view footer, uint64_t blob_size, TocLocation* loc) {
  auto bad = [](const std::string& why) { return Status::Corrupt("TOC footer: " + why); };
  if (loc->format == TocFormat::kEstargz) {
    // gzip.go gzipFooterBytes: header (10, FLG = FEXTRA), XLEN (2), extra,
    // then an empty stored block (5) and CRC/ISIZE (8). New form: extra =
    // 'S' 'G' LEN(2) "%016xSTARGZ" (XLEN 26, 51 bytes); legacy: extra =
    // "%016xSTARGZ" (XLEN 22, 47 bytes).
    size_t footer_size;
    std::string_view payload;
    auto header_ok = [&](std::string_view f, size_t xlen) {
      return static_cast<uint8_t>(f[0]) == 0x1f && static_cast<uint8_t>(f[1]) == 0x8b &&
             f[2] == 8 && (f[3] & 4) != 0 && static_cast<uint8_t>(f[10]) == (xlen & 0xff) &&
             static_cast<uint8_t>(f[11]) == (xlen >> 8);
    };
    if (footer.size() >= kEstargzFooterSize &&
        header_ok(footer.substr(footer.size() - kEstargzFooterSize), 26) &&
        footer.substr(footer.size() - kEstargzFooterSize + 12, 4) == std::string_view("SG\x16\0", 4)) {
      footer_size = kEstargzFooterSize;
      payload = footer.substr(footer.size() - kEstargzFooterSize + 16, 22);
    } else if (footer.size() >= kLegacyStargzFooterSize &&
               header_ok(footer.substr(footer.size() - kLegacyStargzFooterSize), 22)) {
      footer_size = kLegacyStargzFooterSize;
      payload = footer.substr(footer.size() - kLegacyStargzFooterSize + 12, 22);
    } else {
      return bad("not an eStargz or stargz footer");
    }
    if (payload.substr(16) != "STARGZ") return bad("no STARGZ magic");
    uint64_t off = 0;
    for (char ch : payload.substr(0, 16)) {
      int d;
      if (ch >= '0' && ch <= '9') {
        d = ch - '0';
      } else if (ch >= 'a' && ch <= 'f') {
        d = ch - 'a' + 10;
      } else if (ch >= 'A' && ch <= 'F') {
        d = ch - 'A' + 10;
      } else {
        return bad("TOC offset is not hex");
      }
      off = (off << 4) | static_cast<uint64_t>(d);
    }
    if (blob_size < footer_size || off >= blob_size - footer_size) {
      return bad("TOC offset " + std::to_string(off) + " outside the blob");
    }
    loc->toc_offset = off;
    loc->toc_size = blob_size - footer_size - off;
    loc->toc_uncompressed_size = 0;
    loc->position_known = true;
    return Status::Ok();
  }
  if (loc->format != TocFormat::kZstdChunked) return bad("no TOC format");
  const size_t size = loc->generation == 2 ? kZstdChunkedV2FooterSize : kZstdChunkedV1FooterSize;
  if (footer.size() < size) return bad("short");
  const std::string_view f = footer.substr(footer.size() - size);
  const char* magic = loc->generation == 2 ? kZstdChunkedV2Magic : kZstdChunkedV1Magic;
  if (std::memcmp(f.data() + size - 8, magic, 8) != 0) {
    return bad(std::string("no zstd:chunked magic (generation ") +
               std::to_string(loc->generation) + ")");
  }
  const uint64_t off = LoadLE64(f.data()), len = LoadLE64(f.data() + 8),
                 ulen = LoadLE64(f.data() + 16), type = LoadLE64(f.data() + 24);
  if (type != kManifestTypeCrfs) return bad("manifest type " + std::to_string(type));
  if (len == 0 || off > blob_size || len > blob_size - off) {
    return bad("TOC range outside the blob");
  }
  loc->toc_offset = off;
  loc->toc_size = len;
  loc->toc_uncompressed_size = ulen;
  loc->position_known = true;
  if (loc->generation == 2) {
    loc->tarsplit_offset = LoadLE64(f.data() + 32);
    loc->tarsplit_size = LoadLE64(f.data() + 40);
    loc->tarsplit_uncompressed_size = LoadLE64(f.data() + 48);
  }
  return Status::Ok();
}

Result<LayerIndex> ParseTocJson(std::string_view json_text, const BlobDescriptor& blob,
                                const TocLocation& loc, const TocLimits& limits) {
  if (loc.format == TocFormat::kNone) return Status::InvalidArgument("TOC: no format");
  if (json_text.size() > limits.max_toc_json) {
    return Status::Corrupt("layer " + blob.digest + ": TOC of " + std::to_string(json_text.size()) +
                           " bytes (max " + std::to_string(limits.max_toc_json) + ")");
  }
  TocParser p(blob, loc, limits);
  return p.Parse(json_text);
}

Result<LayerIndex> BuildIndexFromToc(BlobSource& src, const BlobDescriptor& blob,
                                     const TocLocation& loc_in, const TocLimits& limits) {
  TocLocation loc = loc_in;
  const std::string what = "layer " + blob.digest + ": " + TocFormatName(loc.format) + " TOC";
  if (loc.format == TocFormat::kNone) return Status::InvalidArgument(what + ": no TOC format");
  std::string tail;  // the blob's last bytes, when read for the footer
  if (!loc.position_known) {
    // eStargz: 51 bytes also hold a legacy 47-byte footer at their end.
    const uint64_t n = loc.format == TocFormat::kEstargz
                           ? kEstargzFooterSize
                           : (loc.generation == 2 ? kZstdChunkedV2FooterSize : kZstdChunkedV1FooterSize);
    if (blob.size < (loc.format == TocFormat::kEstargz ? kLegacyStargzFooterSize : n)) {
      return Status::Corrupt(what + ": blob of " + std::to_string(blob.size) +
                             " bytes is too small for a footer");
    }
    const uint64_t take = std::min<uint64_t>(std::max<uint64_t>(n, limits.tail_read), blob.size);
    RETURN_IF_ERROR(ReadRange(src, blob, blob.size - take, take, &tail));
    Status st = ParseTocFooter(tail, blob.size, &loc);
    if (!st.ok()) return st.Annotate(what);
  }
  if (loc.toc_size > limits.max_toc_compressed) {
    return Status::Corrupt(what + ": " + std::to_string(loc.toc_size) +
                           " compressed bytes (max " + std::to_string(limits.max_toc_compressed) +
                           ")");
  }
  if (loc.toc_offset > blob.size || loc.toc_size > blob.size - loc.toc_offset || loc.toc_size == 0) {
    return Status::Corrupt(what + ": range outside the blob");
  }
  std::string compressed;
  const uint64_t tail_start = blob.size - tail.size();
  const uint64_t toc_end = loc.toc_offset + loc.toc_size;
  if (!tail.empty() && loc.toc_offset >= tail_start) {
    compressed = tail.substr(loc.toc_offset - tail_start, loc.toc_size);
  } else if (!tail.empty() && toc_end > tail_start) {
    // The tail holds the TOC's end: fetch only its head.
    RETURN_IF_ERROR(ReadRange(src, blob, loc.toc_offset, tail_start - loc.toc_offset, &compressed));
    compressed.append(tail, 0, toc_end - tail_start);
  } else {
    RETURN_IF_ERROR(ReadRange(src, blob, loc.toc_offset, loc.toc_size, &compressed));
  }

  std::string text;
  if (loc.format == TocFormat::kEstargz) {
    // gzip.go WriteTOCAndFooter: one gzip member holding a tar whose first
    // entry is stargz.index.json; the digest is that entry's data's.
    RangeDecoder dec(LayerCompression::kGzip, compressed);
    std::string header;
    Status st = dec.Read(kTarBlockSize, &header);
    if (!st.ok()) return st.Annotate(what);
    Result<RawTarHeader> h =
        ParseTarHeader(std::span<const uint8_t, kTarBlockSize>(
            reinterpret_cast<const uint8_t*>(header.data()), kTarBlockSize));
    if (!h.ok()) return h.status().Annotate(what);
    if (CleanTarPath(h->name) != std::string(kEstargzTocName)) {
      return Status::Corrupt(what + ": first tar entry is '" + h->name.substr(0, 100) +
                             "', not " + std::string(kEstargzTocName));
    }
    if (h->size > limits.max_toc_json) {
      return Status::Corrupt(what + ": JSON of " + std::to_string(h->size) + " bytes (max " +
                             std::to_string(limits.max_toc_json) + ")");
    }
    st = dec.Read(h->size, &text);
    if (!st.ok()) return st.Annotate(what);
    if (Sha256Digest(text) != loc.toc_digest) {
      return Status::Corrupt(what + ": sha256 " + Sha256Digest(text) +
                             " does not match the annotation's " + loc.toc_digest);
    }
  } else {
    // compressor.go / zstdchunked.go: the annotation's checksum is that of
    // the compressed TOC (the skippable frame's content).
    if (Sha256Digest(compressed) != loc.toc_digest) {
      return Status::Corrupt(what + ": sha256 " + Sha256Digest(compressed) +
                             " does not match the annotation's " + loc.toc_digest);
    }
    if (loc.toc_uncompressed_size > limits.max_toc_json) {
      return Status::Corrupt(what + ": JSON of " + std::to_string(loc.toc_uncompressed_size) +
                             " bytes (max " + std::to_string(limits.max_toc_json) + ")");
    }
    RangeDecoder dec(LayerCompression::kZstd, compressed);
    Status st = dec.Read(loc.toc_uncompressed_size, &text);
    if (!st.ok()) return st.Annotate(what);
    // Nothing may follow the JSON in the frame.
    std::string extra;
    if (dec.Read(1, &extra).ok()) return Status::Corrupt(what + ": longer than its stated size");
  }
  Result<LayerIndex> index = ParseTocJson(text, blob, loc, limits);
  if (!index.ok()) return index.status();
  return index;
}

// ---------------------------------------------------------------- TocReader

TocReader::TocReader(BlobSource* source, BlobDescriptor blob,
                     std::shared_ptr<const LayerIndex> index, TocReaderOptions options)
    : source_(source), blob_(std::move(blob)), index_(std::move(index)), options_(options) {}

TocReader::~TocReader() = default;

TocReaderStats TocReader::stats() const {
  return {fetched_.load(), hits_.load(), waits_.load(), compressed_.load()};
}

// One decode in progress; the threads that want the same chunk wait on it.
struct TocReader::InFlight {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Result<std::shared_ptr<const std::string>> result{Status::Transient("in flight")};
};

Result<std::shared_ptr<const std::string>> TocReader::GetChunk(size_t i) {
  std::shared_ptr<InFlight> mine, theirs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->chunk == i) {
        cache_.splice(cache_.begin(), cache_, it);
        hits_.fetch_add(1, std::memory_order_relaxed);
        return cache_.front().bytes;
      }
    }
    auto [it, inserted] = inflight_.try_emplace(i);
    if (inserted) {
      it->second = std::make_shared<InFlight>();
      mine = it->second;
    } else {
      theirs = it->second;
    }
  }
  if (theirs) {
    waits_.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock<std::mutex> lock(theirs->mu);
    theirs->cv.wait(lock, [&] { return theirs->done; });
    return theirs->result;
  }
  Result<std::shared_ptr<const std::string>> r = Decode(i);
  {
    std::lock_guard<std::mutex> lock(mu_);
    inflight_.erase(i);
    const bool cacheable = r.ok() && options_.max_cached_chunks > 0 &&
                           (*r)->size() <= options_.max_cached_bytes;
    if (cacheable) {
      cache_.push_front(Decoded{i, *r});
      cached_bytes_ += (*r)->size();
      while (cache_.size() > options_.max_cached_chunks ||
             cached_bytes_ > options_.max_cached_bytes) {
        cached_bytes_ -= cache_.back().bytes->size();
        cache_.pop_back();
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mine->mu);
    mine->result = r;
    mine->done = true;
  }
  mine->cv.notify_all();
  return r;
}

Result<std::shared_ptr<const std::string>> TocReader::Decode(size_t i) {
  const TocChunk& c = index_->toc_chunks[i];
  auto where = [&] {
    return "chunk " + std::to_string(i) + " (content [" + std::to_string(c.out_offset) + ", " +
           std::to_string(c.out_offset + c.size) + "), blob bytes [" + std::to_string(c.in_offset) +
           ", " + std::to_string(c.in_offset + c.in_size) + ")) of layer " + blob_.digest;
  };
  std::string compressed;
  RETURN_IF_ERROR(ReadRange(*source_, blob_, c.in_offset, c.in_size, &compressed));
  compressed_.fetch_add(c.in_size, std::memory_order_relaxed);
  auto bytes = std::make_shared<std::string>();
  bytes->reserve(c.size);
  {
    RangeDecoder dec(index_->compression, compressed);
    Status st = dec.Read(c.inner_offset, nullptr);
    if (st.ok()) st = dec.Read(c.size, bytes.get());
    if (!st.ok()) {
      LOG_ERROR(where() + ": " + st.message());
      return Status::Corrupt(where() + ": " + st.message());
    }
  }
  const std::string got = Sha256Digest(*bytes);
  if (got != c.digest) {
    LOG_ERROR(where() + ": sha256 " + got + " does not match the TOC's " + c.digest);
    return Status::Corrupt(where() + ": sha256 " + got + " does not match the TOC's " + c.digest);
  }
  fetched_.fetch_add(1, std::memory_order_relaxed);
  return std::shared_ptr<const std::string>(std::move(bytes));
}

Result<size_t> TocReader::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  const LayerIndex& x = *index_;
  if (x.toc_format == TocFormat::kNone || x.blob_digest != blob_.digest) {
    return Status::InvalidArgument("TOC reader: the index is not a TOC index of " + blob_.digest);
  }
  if (offset >= x.uncompressed_size) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), x.uncompressed_size - offset));
  auto it = std::upper_bound(x.toc_chunks.begin(), x.toc_chunks.end(), offset,
                             [](uint64_t o, const TocChunk& c) { return o < c.out_offset; });
  // Deserialize and ParseTocJson guarantee chunks tile [0, uncompressed_size).
  size_t i = static_cast<size_t>(it - x.toc_chunks.begin()) - 1;
  size_t done = 0;
  while (done < n) {
    if (i >= x.toc_chunks.size()) return Status::Corrupt("TOC reader: chunks end early");
    ASSIGN_OR_RETURN(std::shared_ptr<const std::string> bytes, GetChunk(i));
    const TocChunk& c = x.toc_chunks[i];
    const uint64_t at = offset + done - c.out_offset;
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, c.size - at));
    std::memcpy(out.data() + done, bytes->data() + at, take);
    done += take;
    ++i;
  }
  return n;
}

Result<size_t> TocReader::Read(const TarEntry& entry, uint64_t offset, std::span<uint8_t> out) {
  if (entry.type != EntryType::kRegular && entry.type != EntryType::kHardLink) {
    return Status::InvalidArgument("TOC reader: '" + entry.path + "' has no data");
  }
  if (offset >= entry.size) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), entry.size - offset));
  return ReadAt(entry.data_offset + offset, out.subspan(0, n));
}

Status TocReader::Prefetch(uint64_t offset, uint64_t len) {
  const LayerIndex& x = *index_;
  if (x.toc_format == TocFormat::kNone || x.blob_digest != blob_.digest) {
    return Status::InvalidArgument("TOC reader: the index is not a TOC index of " + blob_.digest);
  }
  if (offset >= x.uncompressed_size || len == 0) return Status::Ok();
  const uint64_t end = offset + std::min(len, x.uncompressed_size - offset);
  auto it = std::upper_bound(x.toc_chunks.begin(), x.toc_chunks.end(), offset,
                             [](uint64_t o, const TocChunk& c) { return o < c.out_offset; });
  size_t i = static_cast<size_t>(it - x.toc_chunks.begin()) - 1;
  // Adjacent compressed ranges go out as one request (up to 16 MiB).
  constexpr uint64_t kMaxRun = 16 << 20;
  uint64_t run_start = 0, run_end = 0;
  for (; i < x.toc_chunks.size() && x.toc_chunks[i].out_offset < end; ++i) {
    const TocChunk& c = x.toc_chunks[i];
    if (run_end > run_start && c.in_offset >= run_start && c.in_offset <= run_end &&
        std::max(run_end, c.in_offset + c.in_size) - run_start <= kMaxRun) {
      run_end = std::max(run_end, c.in_offset + c.in_size);
      continue;
    }
    if (run_end > run_start) RETURN_IF_ERROR(source_->Prefetch(blob_, run_start, run_end - run_start));
    run_start = c.in_offset;
    run_end = c.in_offset + c.in_size;
  }
  if (run_end > run_start) RETURN_IF_ERROR(source_->Prefetch(blob_, run_start, run_end - run_start));
  return Status::Ok();
}

}  // namespace regfs
