#include "tests/support/toc_builder.h"

#include <zstd.h>

#include <cstring>
#include <ctime>

#include "reader/base/base64.h"
#include "reader/base/digest.h"
#include "reader/layer/toc.h"
#include "tests/support/image_builder.h"

namespace regfs::testing {
namespace {

using json = nlohmann::json;

constexpr uint64_t kBlock = 512;
uint64_t Padded(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

std::string ZstdFrame(std::string_view data) {
  // One frame per call, as the Go writers Close() and Reset() per chunk.
  return ZstdCompress(data, 0, 3);
}

// zstd skippable frame (RFC 8478 3.1.2): magic 0x184D2A50 LE, length LE32.
std::string Skippable(std::string_view data) {
  std::string out("\x50\x2a\x4d\x18", 4);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((data.size() >> (8 * i)) & 0xff));
  out.append(data);
  return out;
}

void PutLE64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Go's time.Time JSON (RFC 3339 with nanoseconds, trailing zeros trimmed) or,
// for eStargz, formatModtime: UTC, rounded to the second, "" for the epoch.
std::string FormatTime(int64_t sec, uint32_t nsec, bool estargz) {
  if (estargz) {
    if (nsec >= 500000000) ++sec;
    nsec = 0;
    if (sec == 0) return "";
  }
  time_t t = static_cast<time_t>(sec);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string s = buf;
  if (nsec != 0) {
    char frac[16];
    snprintf(frac, sizeof(frac), ".%09u", nsec);
    std::string f = frac;
    while (f.back() == '0') f.pop_back();
    s += f;
  }
  return s + "Z";
}

const char* TypeName(TarType t) {
  switch (t) {
    case TarType::kFile:
      return "reg";
    case TarType::kDir:
      return "dir";
    case TarType::kSymlink:
      return "symlink";
    case TarType::kHardlink:
      return "hardlink";
    case TarType::kCharDev:
      return "char";
    case TarType::kBlockDev:
      return "block";
    case TarType::kFifo:
      return "fifo";
  }
  return "?";
}

// The compressed output being built: members / frames are buffered
// uncompressed and compressed when closed, so offsets are those of a writer
// that closes one and starts the next.
class Out {
 public:
  explicit Out(bool zstd) : zstd_(zstd) {}
  void Write(std::string_view b) { pending_.append(b); }
  // Closes the current member/frame (if anything went into it).
  void Close() {
    if (pending_.empty()) return;
    blob_ += zstd_ ? ZstdFrame(pending_) : GzipCompress(pending_);
    pending_.clear();
  }
  uint64_t pos() const { return blob_.size(); }
  uint64_t pending() const { return pending_.size(); }
  std::string& blob() { return blob_; }

 private:
  bool zstd_;
  std::string blob_;
  std::string pending_;
};

}  // namespace

TocBlob BuildTocBlob(const std::vector<TarEntry>& entries_in, const TocBuildOptions& o) {
  const bool storage_style =
      o.style == TocStyle::kZstdChunkedV1 || o.style == TocStyle::kZstdChunkedV2;
  const bool zstd = storage_style || o.style == TocStyle::kStargzZstdChunked;
  const bool estargz_time = !storage_style;

  std::vector<TarEntry> entries = entries_in;
  if (o.landmark_before >= 0) {
    // build.go: landmark files hold one byte, 0xf.
    TarEntry lm = TarEntry::File(std::string(o.no_prefetch_landmark ? kNoPrefetchLandmark
                                                                    : kPrefetchLandmark),
                                 std::string(1, '\x0f'));
    entries.insert(entries.begin() + std::min<size_t>(o.landmark_before, entries.size()), lm);
  }

  TocBlob r;
  Out out(zstd);
  json toc_entries = json::array();
  std::map<uint64_t, std::string> last_uname, last_gname;
  uint64_t prev_offset = 0;    // estargz.go prevOffset
  for (const TarEntry& e : entries) {
    std::string one;
    AppendTarEntry(&one, e);
    const uint64_t data_len = e.type == TarType::kFile ? e.content.size() : 0;
    const std::string header = one.substr(0, one.size() - Padded(data_len));
    r.tar += one;

    json j;
    j["name"] = e.type == TarType::kDir ? e.path + "/" : e.path;
    j["type"] = TypeName(e.type);
    if (e.mode != 0) j["mode"] = e.mode;
    if (e.uid != 0) j["uid"] = e.uid;
    if (e.gid != 0) j["gid"] = e.gid;
    // estargz.go nameIfChanged: a name only when it changed for that id;
    // containers/storage writes no names.
    if (!storage_style) {
      if (!e.uname.empty() && last_uname[e.uid] != e.uname) {
        j["userName"] = e.uname;
        last_uname[e.uid] = e.uname;
      }
      if (!e.gname.empty() && last_gname[e.gid] != e.gname) {
        j["groupName"] = e.gname;
        last_gname[e.gid] = e.gname;
      }
    }
    const std::string mt = FormatTime(e.mtime, e.mtime_nsec, estargz_time);
    if (!mt.empty()) j["modtime"] = mt;
    if (!e.link_target.empty()) j["linkName"] = e.link_target;
    if (e.type == TarType::kCharDev || e.type == TarType::kBlockDev) {
      if (e.dev_major != 0) j["devMajor"] = e.dev_major;
      if (e.dev_minor != 0) j["devMinor"] = e.dev_minor;
    }
    if (!e.xattrs.empty()) {
      json x = json::object();
      for (const auto& [k, v] : e.xattrs) x[k] = Base64Encode(v);
      j["xattrs"] = x;
    }
    if (e.type == TarType::kFile) {
      j["size"] = e.content.size();
      if (!e.content.empty()) j["digest"] = Sha256Digest(e.content);
    }

    if (!storage_style) {
      // estargz.go appendTar: the header goes into the current member.
      out.Write(header);
      if (e.type == TarType::kFile && !e.content.empty()) {
        uint64_t written = 0;
        json ent = j;
        while (written < e.content.size()) {
          uint64_t chunk = std::min<uint64_t>(o.chunk_size, e.content.size() - written);
          if (chunk == o.chunk_size && chunk < e.content.size()) ent["chunkSize"] = chunk;
          if (o.min_chunk_size == 0 || out.pos() + out.pending() - prev_offset >= o.min_chunk_size) {
            out.Close();
            ent["offset"] = out.pos();
            prev_offset = out.pos();
          } else {
            ent["offset"] = prev_offset;
            ent["innerOffset"] = out.pending();
          }
          if (ent["offset"].get<uint64_t>() == 0) ent.erase("offset");  // omitempty
          if (ent.contains("innerOffset") && ent["innerOffset"].get<uint64_t>() == 0) {
            ent.erase("innerOffset");
          }
          if (written > 0) ent["chunkOffset"] = written;
          const std::string_view piece = std::string_view(e.content).substr(written, chunk);
          ent["chunkDigest"] = Sha256Digest(piece);
          out.Write(piece);
          toc_entries.push_back(ent);
          written += chunk;
          ent = json{{"name", e.path}, {"type", "chunk"}};
        }
      } else {
        toc_entries.push_back(j);
      }
      // Tar padding after the data stays in the member.
      out.Write(std::string_view(one).substr(header.size() + data_len));
    } else {
      // compressor.go writeZstdChunkedStream: the header in the current
      // frame; the payload from a new frame, one frame per chunk; the next
      // header in a new frame again.
      out.Write(header);
      if (e.type == TarType::kFile && !e.content.empty()) {
        out.Close();
        const uint64_t start = out.pos();
        struct C {
          uint64_t chunk_offset, offset, size;
          std::string digest;
        };
        std::vector<C> chunks;
        for (uint64_t w = 0; w < e.content.size(); w += o.chunk_size) {
          const std::string_view piece = std::string_view(e.content).substr(w, o.chunk_size);
          chunks.push_back(C{w, out.pos(), piece.size(), Sha256Digest(piece)});
          out.Write(piece);
          out.Close();
        }
        j["offset"] = start;
        j["endOffset"] = out.pos();
        std::vector<json> es{j};
        for (size_t i = 1; i < chunks.size(); ++i) {
          json c{{"type", "chunk"}, {"name", e.path}};
          if (chunks[i].chunk_offset != 0) c["chunkOffset"] = chunks[i].chunk_offset;
          es.push_back(c);
        }
        if (chunks.size() > 1) {
          for (size_t i = 0; i < chunks.size(); ++i) {
            es[i]["chunkSize"] = chunks[i].size;
            es[i]["offset"] = chunks[i].offset;
            es[i]["chunkDigest"] = chunks[i].digest;
          }
        }
        for (json& x : es) toc_entries.push_back(std::move(x));
        out.Write(std::string_view(one).substr(header.size() + data_len));
      } else {
        toc_entries.push_back(j);
      }
    }
  }
  // The end-of-archive blocks in the last frame / member.
  std::string trailer;
  FinishTar(&trailer);
  r.tar += trailer;
  out.Write(trailer);
  out.Close();

  json toc{{"version", 1}, {"entries", toc_entries}};
  if (o.mutate_toc) o.mutate_toc(toc);
  // estargz writes MarshalIndent(toc, "", "\t"); containers/storage Marshal.
  r.toc_json = storage_style ? toc.dump() : toc.dump(1, '\t');

  std::string& blob = out.blob();
  if (!zstd) {
    r.toc_offset = blob.size();
    std::string toc_tar;
    AppendTarEntry(&toc_tar, TarEntry::File(std::string(kEstargzTocName), r.toc_json, 0));
    FinishTar(&toc_tar);
    blob += GzipCompress(toc_tar);
    // gzip.go gzipFooterBytes / the legacy 47-byte form.
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(r.toc_offset));
    std::string extra;
    if (o.style == TocStyle::kLegacyStargz) {
      extra = std::string(hex) + "STARGZ";
    } else {
      extra = std::string("SG\x16\x00", 4) + hex + "STARGZ";
    }
    std::string footer("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff", 10);
    footer.push_back(static_cast<char>(extra.size()));
    footer.push_back(0);
    footer += extra;
    footer += std::string("\x01\x00\x00\xff\xff", 5);
    footer += std::string(8, '\0');
    blob += footer;
    r.toc_digest = Sha256Digest(r.toc_json);
    r.media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
    if (o.style == TocStyle::kEstargz) {
      r.annotations[std::string(kEstargzTocDigestAnnotation)] = r.toc_digest;
    }
  } else {
    const std::string compressed_toc = ZstdFrame(r.toc_json);
    r.toc_offset = blob.size() + 8;
    blob += Skippable(compressed_toc);
    r.toc_digest = Sha256Digest(compressed_toc);
    const std::string position = std::to_string(r.toc_offset) + ":" +
                                 std::to_string(compressed_toc.size()) + ":" +
                                 std::to_string(r.toc_json.size()) + ":1";
    std::string footer;
    PutLE64(&footer, r.toc_offset);
    PutLE64(&footer, compressed_toc.size());
    PutLE64(&footer, r.toc_json.size());
    PutLE64(&footer, 1);
    r.media_type = "application/vnd.oci.image.layer.v1.tar+zstd";
    if (o.style == TocStyle::kZstdChunkedV2) {
      // A stand-in tar-split (its content is not read by regfs).
      const std::string tarsplit = ZstdFrame("{\"type\":1}\n");
      const uint64_t ts_offset = blob.size() + 8;
      blob += Skippable(tarsplit);
      PutLE64(&footer, ts_offset);
      PutLE64(&footer, tarsplit.size());
      PutLE64(&footer, 11);
      footer += "GNUlInUx";
      r.annotations[std::string(kZstdChunkedV2ChecksumAnnotation)] = r.toc_digest;
      if (!o.omit_position_annotation) {
        r.annotations[std::string(kZstdChunkedV2PositionAnnotation)] = position;
        r.annotations[std::string(kZstdChunkedV2TarsplitAnnotation)] =
            std::to_string(ts_offset) + ":" + std::to_string(tarsplit.size()) + ":11";
      }
    } else {
      footer += "GnUlInUx";
      r.annotations[std::string(kZstdChunkedV1ChecksumAnnotation)] = r.toc_digest;
      if (!o.omit_position_annotation) {
        r.annotations[std::string(kZstdChunkedV1PositionAnnotation)] = position;
      }
      if (o.style == TocStyle::kStargzZstdChunked) {
        // ctr-remote also records the JSON's digest under the eStargz key.
        r.annotations[std::string(kEstargzTocDigestAnnotation)] = Sha256Digest(r.toc_json);
      }
    }
    blob += Skippable(footer);
  }
  r.blob = std::move(blob);
  return r;
}

}  // namespace regfs::testing
