// Test helpers for reader/layer: an in-memory BlobSource, a small tar writer
// that can emit every header form (ustar, PAX x/g, GNU L/K, base-256, signed
// checksums, arbitrary type flags), gzip/zstd compressors, shell helpers.
#ifndef REGFS_TESTS_LAYER_LAYER_TEST_UTIL_H_
#define REGFS_TESTS_LAYER_LAYER_TEST_UTIL_H_

#include <zlib.h>
#include <zstd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "reader/base/blob_source.h"
#include "reader/base/digest.h"

namespace regfs::testing {

class MemBlobSource : public BlobSource {
 public:
  explicit MemBlobSource(std::string data) : data_(std::move(data)) {}
  Status ReadAt(const BlobDescriptor&, uint64_t offset, std::span<uint8_t> out) override {
    reads_.fetch_add(1);
    if (offset > data_.size() || out.size() > data_.size() - offset) {
      return Status::RangeNotSatisfiable("out of range");
    }
    std::memcpy(out.data(), data_.data() + offset, out.size());
    return Status::Ok();
  }
  BlobDescriptor Descriptor(std::string media_type = "") const {
    return BlobDescriptor{std::move(media_type), Sha256Digest(data_), data_.size()};
  }
  const std::string& data() const { return data_; }
  uint64_t reads() const { return reads_.load(); }

 private:
  std::string data_;
  std::atomic<uint64_t> reads_{0};
};

// Header fields for TarWriter::Header; numbers are written octal unless base256.
struct TarHdr {
  std::string name;
  char type = '0';
  uint64_t mode = 0644;
  uint64_t uid = 0, gid = 0;
  uint64_t size = 0;
  int64_t mtime = 1700000000;
  std::string linkname;
  std::string uname = "root", gname = "root";
  uint32_t devmajor = 0, devminor = 0;
  std::string prefix;
  bool gnu_magic = false;
  bool base256_size = false;
  bool signed_checksum = false;
  bool corrupt_checksum = false;
};

class TarWriter {
 public:
  void Header(const TarHdr& h) {
    char b[512] = {};
    Put(b, 0, 100, h.name);
    Octal(b + 100, 8, h.mode);
    Octal(b + 108, 8, h.uid);
    Octal(b + 116, 8, h.gid);
    if (h.base256_size) {
      b[124] = static_cast<char>(0x80);
      for (int i = 0; i < 8; ++i) b[135 - i] = static_cast<char>((h.size >> (8 * i)) & 0xff);
    } else {
      Octal(b + 124, 12, h.size);
    }
    Octal(b + 136, 12, static_cast<uint64_t>(h.mtime));
    b[156] = h.type;
    Put(b, 157, 100, h.linkname);
    if (h.gnu_magic) {
      std::memcpy(b + 257, "ustar  \0", 8);
    } else {
      std::memcpy(b + 257, "ustar\0" "00", 8);
      Put(b, 345, 155, h.prefix);
    }
    Put(b, 265, 32, h.uname);
    Put(b, 297, 32, h.gname);
    Octal(b + 329, 8, h.devmajor);
    Octal(b + 337, 8, h.devminor);
    std::memset(b + 148, ' ', 8);
    int64_t sum = 0;
    for (int i = 0; i < 512; ++i) {
      sum += h.signed_checksum ? static_cast<int8_t>(b[i]) : static_cast<uint8_t>(b[i]);
    }
    if (h.corrupt_checksum) sum += 1;
    char tmp[16];
    std::snprintf(tmp, sizeof tmp, "%06llo", static_cast<unsigned long long>(sum & 0777777));
    std::memcpy(b + 148, tmp, 6);
    b[154] = 0;
    b[155] = ' ';
    out_.append(b, 512);
  }
  void Data(std::string_view d) {
    out_.append(d);
    Pad();
  }
  void Pad() { out_.append((512 - out_.size() % 512) % 512, '\0'); }
  void File(const std::string& name, std::string_view content, uint64_t mode = 0644) {
    TarHdr h;
    h.name = name;
    h.mode = mode;
    h.size = content.size();
    Header(h);
    Data(content);
  }
  static std::string PaxRecord(std::string_view key, std::string_view value) {
    std::string body = " " + std::string(key) + "=" + std::string(value) + "\n";
    size_t len = body.size() + 1;
    while (std::to_string(len).size() + body.size() != len) ++len;
    return std::to_string(len) + body;
  }
  void Pax(const std::vector<std::pair<std::string, std::string>>& recs, char type = 'x') {
    std::string d;
    for (auto& [k, v] : recs) d += PaxRecord(k, v);
    TarHdr h;
    h.name = "PaxHeaders/x";
    h.type = type;
    h.size = d.size();
    Header(h);
    Data(d);
  }
  void GnuLong(char type, const std::string& value) {
    TarHdr h;
    h.name = "././@LongLink";
    h.type = type;
    h.size = value.size() + 1;
    h.gnu_magic = true;
    Header(h);
    Data(value + std::string(1, '\0'));
  }
  void End() { out_.append(1024, '\0'); }
  std::string& str() { return out_; }

 private:
  static void Put(char* b, size_t off, size_t len, const std::string& s) {
    std::memcpy(b + off, s.data(), std::min(len, s.size()));
  }
  static void Octal(char* f, size_t len, uint64_t v) {
    std::string s(len - 1, '0');
    for (size_t i = len - 1; i-- > 0 && v;) {
      s[i] = static_cast<char>('0' + (v & 7));
      v >>= 3;
    }
    std::memcpy(f, s.data(), len - 1);
    f[len - 1] = 0;
  }
  std::string out_;
};

// gzip with small deflate blocks by default (many checkpoint candidates).
inline std::string Gzip(std::string_view data, int level = 6) {
  z_stream s{};
  deflateInit2(&s, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&s, data.size()) + 64, '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  s.avail_in = static_cast<uInt>(data.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

// Several gzip members, one per `piece` bytes of input.
inline std::string GzipMembers(std::string_view data, size_t piece) {
  std::string out;
  for (size_t i = 0; i < data.size(); i += piece) out += Gzip(data.substr(i, piece));
  return out;
}

// zstd: one frame, or one frame per `frame` bytes of input.
inline std::string Zstd(std::string_view data, size_t frame = 0) {
  if (frame == 0) frame = data.size() ? data.size() : 1;
  std::string out;
  for (size_t i = 0; i < data.size() || i == 0; i += frame) {
    std::string_view p = data.substr(std::min(i, data.size()), frame);
    std::string f(ZSTD_compressBound(p.size()), '\0');
    size_t n = ZSTD_compress(f.data(), f.size(), p.data(), p.size(), 3);
    f.resize(n);
    out += f;
    if (data.empty()) break;
  }
  return out;
}

// Semi-compressible bytes (text-like words with random numbers).
inline std::string MixedBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  static const char* kWords[] = {"layer ", "gzip ", "index ", "checkpoint ", "window ", "tar ",
                                 "header ", "regfs\n", "0x", "lib", "/usr/share/"};
  std::string s;
  s.reserve(n + 32);
  while (s.size() < n) {
    uint32_t r = rng();
    if (r % 4 == 0) {
      s += std::to_string(rng());
    } else if (r % 7 == 0) {
      for (int i = 0; i < 16; ++i) s.push_back(static_cast<char>(rng()));
    } else {
      s += kWords[r % (sizeof(kWords) / sizeof(kWords[0]))];
    }
  }
  s.resize(n);
  return s;
}

}  // namespace regfs::testing

#endif  // REGFS_TESTS_LAYER_LAYER_TEST_UTIL_H_
