// libFuzzer target: the TOC parsing of eStargz / zstd:chunked layers
// (reader/layer/toc.h) over arbitrary bytes. The first byte picks what is
// fuzzed: the footer parsers, or the TOC JSON (as either format) followed by
// reads through TocReader of the index it gives, over the input itself as
// the blob (so the chunk decoders meet arbitrary compressed bytes; the JSON
// ends at the first NUL byte, blob data may follow). Must
// never crash, hang or allocate from an untrusted size; an index that parses
// must survive Serialize/Deserialize unchanged.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "reader/base/blob_source.h"
#include "reader/base/log.h"
#include "reader/layer/layer_index.h"
#include "reader/layer/toc.h"

namespace {

class MemSource : public regfs::BlobSource {
 public:
  explicit MemSource(std::string_view bytes) : bytes_(bytes) {}
  regfs::Status ReadAt(const regfs::BlobDescriptor&, uint64_t offset,
                       std::span<uint8_t> out) override {
    if (offset > bytes_.size() || out.size() > bytes_.size() - offset) {
      return regfs::Status::RangeNotSatisfiable("outside the blob");
    }
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return regfs::Status::Ok();
  }

 private:
  std::string_view bytes_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  regfs::SetLogLevel(regfs::LogLevel::kError);
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  regfs::BlobDescriptor blob{"", "sha256:" + std::string(64, 'a'), size};

  if ((mode & 3) == 0) {
    // Footers: the three forms, each against the same bytes.
    regfs::TocLocation loc;
    loc.format = regfs::TocFormat::kEstargz;
    (void)regfs::ParseTocFooter(rest, size, &loc);
    for (int gen : {1, 2}) {
      regfs::TocLocation z;
      z.format = regfs::TocFormat::kZstdChunked;
      z.generation = gen;
      (void)regfs::ParseTocFooter(rest, size, &z);
    }
    return 0;
  }

  regfs::TocLocation loc;
  loc.format = (mode & 4) ? regfs::TocFormat::kZstdChunked : regfs::TocFormat::kEstargz;
  loc.toc_digest = "sha256:" + std::string(64, 'b');
  // The TOC "starts" at the end of the input: every offset in it is data.
  loc.toc_offset = size;
  regfs::TocLimits limits;
  limits.max_entries = 20000;
  limits.max_chunk_size = 1 << 20;
  limits.max_chunk_compressed = 1 << 20;
  blob.media_type = (mode & 4) ? "application/vnd.oci.image.layer.v1.tar+zstd"
                               : "application/vnd.oci.image.layer.v1.tar+gzip";
  // The JSON ends at the first NUL; what follows is blob data its offsets
  // may point at (the seeds put real gzip members / zstd frames there).
  const std::string_view json_text = rest.substr(0, rest.find('\0'));
  regfs::Result<regfs::LayerIndex> index = regfs::ParseTocJson(json_text, blob, loc, limits);
  if (!index.ok()) return 0;

  const std::string bytes = index->Serialize();
  regfs::Result<regfs::LayerIndex> back = regfs::LayerIndex::Deserialize(bytes);
  if (!back.ok() || !(*back == *index)) {
    fprintf(stderr, "index does not survive Serialize/Deserialize: %s\n",
            back.ok() ? "differs" : back.status().ToString().c_str());
    abort();
  }

  // Read the content stream (its first MiB) through the chunk reader.
  MemSource src(std::string_view(reinterpret_cast<const char*>(data), size));
  auto shared = std::make_shared<const regfs::LayerIndex>(std::move(index).value());
  regfs::TocReader reader(&src, blob, shared);
  std::string buf(4096, '\0');
  const uint64_t end = std::min<uint64_t>(shared->uncompressed_size, 1 << 20);
  for (uint64_t off = 0; off < end; off += buf.size()) {
    regfs::Result<size_t> n =
        reader.ReadAt(off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
    if (!n.ok()) break;
  }
  (void)reader.Prefetch(0, shared->prefetch_size);
  return 0;
}
