// libFuzzer target: the streaming index builder, LayerIndex (de)serialisation
// and the random-access reader over arbitrary blobs. The first byte picks the
// form: raw bytes as plain / gzip / zstd / sniffed, or the rest compressed
// here with gzip or multi-frame zstd (so the tar walk is reached through the
// decompressors), or the rest as a serialised index, or (mode 7) the rest as
// a recipe for a hostile tar built here (header-only types with sizes,
// global / per-entry PAX and GNU long names around their caps, xattrs past
// Linux's limits, bad paths, hard-link chains) with build options (DiffID
// right or wrong, entry / output limits, cancellation) from the recipe too.
#include <zlib.h>
#include <zstd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_index.h"
#include "reader/layer/layer_reader.h"
#include "reader/layer/tar_reader.h"
#include "tests/layer/layer_test_util.h"

namespace {

class MemSource : public regfs::BlobSource {
 public:
  explicit MemSource(std::string d) : d_(std::move(d)) {}
  regfs::Status ReadAt(const regfs::BlobDescriptor&, uint64_t off, std::span<uint8_t> out) override {
    if (off > d_.size() || out.size() > d_.size() - off) {
      return regfs::Status::RangeNotSatisfiable("out of range");
    }
    if (!out.empty()) std::memcpy(out.data(), d_.data() + off, out.size());
    return regfs::Status::Ok();
  }
  const std::string& data() const { return d_; }

 private:
  std::string d_;
};

std::string GzipOf(std::string_view in) {
  uLongf cap = compressBound(in.size()) + 64;
  std::string out(cap, '\0');
  z_stream s{};
  deflateInit2(&s, 1, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

std::string ZstdFramesOf(std::string_view in) {
  std::string out;
  for (size_t i = 0; i == 0 || i < in.size(); i += 4096) {
    std::string_view p = in.substr(std::min(i, in.size()), 4096);
    std::string f(ZSTD_compressBound(p.size()), '\0');
    f.resize(ZSTD_compress(f.data(), f.size(), p.data(), p.size(), 1));
    out += f;
    if (in.empty()) break;
  }
  return out;
}

// Reads the recipe a byte at a time (zeros once it runs out).
class Recipe {
 public:
  Recipe(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint8_t Byte() { return i_ < n_ ? d_[i_++] : 0; }
  bool done() const { return i_ >= n_; }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t i_ = 0;
};

// Sizes around the caps the reader enforces.
size_t SizeClass(uint8_t b) {
  static constexpr size_t kSizes[] = {0,       1,         100,       255,       256,
                                      4095,    4096,      4097,      64 << 10,  (64 << 10) + 1,
                                      70 << 10, 1 << 20,  (1 << 20) + 1, 3};
  return kSizes[b % (sizeof(kSizes) / sizeof(kSizes[0]))];
}

std::string NameOf(Recipe* r) {
  const uint8_t b = r->Byte();
  switch (b % 8) {
    case 0: return "f" + std::to_string(r->Byte() % 8);
    case 1: return "d/" + std::string(SizeClass(r->Byte()) % 300 + 1, 'n');
    case 2: return "../up";
    case 3: return std::string("nul\0x", 5);
    case 4: return "./a//b/";
    case 5: return std::string(SizeClass(r->Byte()), 'p');
    case 6: return "v7dir/";
    default: return "l" + std::to_string(r->Byte() % 4);
  }
}

// A hostile tar from the recipe; at most ~3 MiB (a little over the 1 MiB
// PAX cap twice), so that a run stays fast.
std::string HostileTar(Recipe* r) {
  regfs::testing::TarWriter w;
  for (int op = 0; op < 32 && !r->done() && w.str().size() < (2u << 20); ++op) {
    const uint8_t kind = r->Byte();
    switch (kind % 10) {
      case 0:
        w.File(NameOf(r), std::string(r->Byte() * 7, 'c'));
        break;
      case 1: {
        // A header-only type with a size field; the next block is a header.
        regfs::testing::TarHdr h;
        h.name = NameOf(r);
        h.type = static_cast<char>('1' + r->Byte() % 6);
        if (r->Byte() & 1) h.type = '\0';
        h.size = uint64_t{r->Byte()} << (r->Byte() % 34);
        h.linkname = NameOf(r);
        w.Header(h);
        break;
      }
      case 2:
        w.Pax({{"comment", std::string(SizeClass(r->Byte()), 'g')},
               {"uname", "global"},
               {"SCHILY.xattr.user.g", "v"}},
              'g');
        break;
      case 3: {
        std::vector<std::pair<std::string, std::string>> recs;
        const int n = r->Byte() % 200;
        for (int i = 0; i < n; ++i) {
          recs.emplace_back("SCHILY.xattr.user." + std::string(r->Byte() % 2 ? 260 : 3, 'k') +
                                std::to_string(i % 150),
                            std::string(SizeClass(r->Byte()) % (70 << 10), 'v'));
        }
        w.Pax(recs);
        break;
      }
      case 4:
        w.Pax({{"path", NameOf(r)}, {"size", std::to_string(r->Byte())}});
        break;
      case 5:
        w.GnuLong(r->Byte() & 1 ? 'L' : 'K', std::string(SizeClass(r->Byte()), 'L'));
        break;
      case 6: {
        regfs::testing::TarHdr l;
        l.name = NameOf(r);
        l.type = '1';
        l.linkname = NameOf(r);
        w.Header(l);
        break;
      }
      case 7:
        w.Pax({{"comment", std::string(SizeClass(r->Byte()), 'x')}});
        break;
      case 8: {
        regfs::testing::TarHdr s;
        s.name = NameOf(r);
        s.type = '2';
        w.Pax({{"linkpath", std::string(SizeClass(r->Byte()), 't')}});
        w.Header(s);
        break;
      }
      default:
        w.File(NameOf(r), "");
        break;
    }
  }
  if (r->Byte() % 4 != 0) w.End();
  return std::move(w.str());
}

// What the reader promises about every entry it returns.
void CheckEntryBounds(const regfs::TarEntry& e) {
  using regfs::TarReader;
  if (e.path.size() > TarReader::kMaxPath || e.path.find('\0') != std::string::npos) {
    __builtin_trap();
  }
  size_t start = 0;
  while (start <= e.path.size()) {
    size_t slash = e.path.find('/', start);
    if (slash == std::string::npos) slash = e.path.size();
    if (slash - start > TarReader::kMaxNameComponent) __builtin_trap();
    if (e.path.compare(start, slash - start, "..") == 0 && slash - start == 2) __builtin_trap();
    start = slash + 1;
  }
  if (e.xattrs.size() > TarReader::kMaxXattrs) __builtin_trap();
  size_t bytes = 0;
  for (const auto& [k, v] : e.xattrs) {
    if (k.size() > TarReader::kMaxXattrName || v.size() > TarReader::kMaxXattrValue) {
      __builtin_trap();
    }
    bytes += k.size() + v.size();
  }
  if (bytes > TarReader::kMaxXattrBytes) __builtin_trap();
}

int HostileMode(const uint8_t* data, size_t size) {
  Recipe r(data, size);
  const uint8_t form = r.Byte() % 3;
  const uint8_t opt = r.Byte();
  const std::string tar = HostileTar(&r);
  std::string blob = form == 1 ? GzipOf(tar) : form == 2 ? ZstdFramesOf(tar) : tar;
  const regfs::LayerCompression c = form == 1   ? regfs::LayerCompression::kGzip
                                    : form == 2 ? regfs::LayerCompression::kZstd
                                                : regfs::LayerCompression::kNone;
  MemSource src(blob);
  regfs::BlobDescriptor desc{"", regfs::Sha256Digest(blob), blob.size()};
  regfs::IndexBuildOptions opts;
  opts.read_size = 4096 << (opt % 4);
  const bool right_diff_id = (opt & 0x10) != 0;
  const bool wrong_diff_id = !right_diff_id && (opt & 0x20) != 0;
  if (right_diff_id) opts.expected_diff_id = regfs::Sha256Digest(tar);
  if (wrong_diff_id) opts.expected_diff_id = regfs::Sha256Digest(tar + "!");
  if (opt & 0x40) opts.max_entries = opt % 7;
  if (opt & 0x80) opts.max_uncompressed_bytes = uint64_t{opt} << 12;
  int calls = 0;
  const int cancel_at = (opt & 0x0c) == 0x0c ? 1 + opt % 5 : -1;
  if (cancel_at > 0) opts.cancelled = [&calls, cancel_at] { return ++calls >= cancel_at; };
  auto built = regfs::BuildLayerIndex(&src, desc, c, opts);
  if (!built.ok()) {
    const std::string& m = built.status().message();
    if (right_diff_id && m.find("DiffID") != std::string::npos) __builtin_trap();
    if (built.status().code() == regfs::Code::kTransient && cancel_at < 0) __builtin_trap();
    return 0;
  }
  if (wrong_diff_id) __builtin_trap();  // a wrong DiffID must never pass
  if (right_diff_id && built->diff_id != opts.expected_diff_id) __builtin_trap();
  if (built->uncompressed_size != tar.size()) __builtin_trap();
  if (built->entries.size() > opts.max_entries) __builtin_trap();
  for (const regfs::TarEntry& e : built->entries) {
    CheckEntryBounds(e);
    if (e.type == regfs::EntryType::kHardLink && e.link_target == e.path) __builtin_trap();
  }
  auto back = regfs::LayerIndex::Deserialize(built->Serialize());
  if (!back.ok() || !(*back == *built)) __builtin_trap();
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  regfs::SetLogLevel(regfs::LogLevel::kError);
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 8;
  if (mode == 7) return HostileMode(data + 1, size - 1);
  std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 6) {
    auto x = regfs::LayerIndex::Deserialize(rest);
    if (x.ok() && x->Serialize() != rest) __builtin_trap();
    return 0;
  }
  regfs::LayerCompression c = regfs::LayerCompression::kNone;
  switch (mode) {
    case 1: c = regfs::LayerCompression::kGzip; break;
    case 2: c = regfs::LayerCompression::kZstd; break;
    case 3: c = regfs::LayerCompression::kUnknown; break;
    case 4: rest = GzipOf(rest); c = regfs::LayerCompression::kGzip; break;
    case 5: rest = ZstdFramesOf(rest); c = regfs::LayerCompression::kZstd; break;
    default: break;
  }
  MemSource src(rest);
  regfs::BlobDescriptor desc{"", regfs::Sha256Digest(rest), rest.size()};
  regfs::IndexBuildOptions opts;
  opts.checkpoint_interval = 64 << 10;
  opts.read_size = 4096;
  auto built = regfs::BuildLayerIndex(&src, desc, c, opts);
  if (!built.ok()) return 0;
  if (c == regfs::LayerCompression::kNone && built->diff_id != desc.digest) __builtin_trap();
  for (const regfs::TarEntry& e : built->entries) CheckEntryBounds(e);
  auto back = regfs::LayerIndex::Deserialize(built->Serialize());
  if (!back.ok() || !(*back == *built)) __builtin_trap();
  auto index = std::make_shared<regfs::LayerIndex>(std::move(built).value());
  regfs::LayerReaderOptions ro;
  ro.input_chunk = 4096;
  regfs::LayerReader reader(&src, desc, index, ro);
  std::string buf;
  for (const regfs::TarEntry& e : index->entries) {
    if (e.type != regfs::EntryType::kRegular || e.size > (1 << 20)) continue;
    buf.resize(e.size);
    auto n = reader.Read(e, 0, std::span(reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
    if (!n.ok() || *n != e.size) __builtin_trap();  // the index promised these bytes
    if (c == regfs::LayerCompression::kNone && buf != rest.substr(e.data_offset, e.size)) {
      __builtin_trap();
    }
  }
  return 0;
}
