// libFuzzer target: the streaming index builder, LayerIndex (de)serialisation
// and the random-access reader over arbitrary blobs. The first byte picks the
// form: raw bytes as plain / gzip / zstd / sniffed, or the rest compressed
// here with gzip or multi-frame zstd (so the tar walk is reached through the
// decompressors), or the rest as a serialised index.
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  regfs::SetLogLevel(regfs::LogLevel::kError);
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 7;
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
