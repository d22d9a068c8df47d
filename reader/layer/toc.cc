#include "reader/layer/toc.h"

namespace regfs {

std::optional<TocLocation> DetectToc(const std::map<std::string, std::string>& annotations,
                                     const BlobDescriptor& blob) {
  (void)annotations;
  (void)blob;
  return std::nullopt;
}

Status ParseTocFooter(std::string_view, uint64_t, TocLocation*) {
  return Status::Unsupported("TOC footer: not implemented yet");
}

Result<LayerIndex> ParseTocJson(std::string_view, const BlobDescriptor&, const TocLocation&,
                                const TocLimits&) {
  return Status::Unsupported("TOC: not implemented yet");
}

Result<LayerIndex> BuildIndexFromToc(BlobSource&, const BlobDescriptor&, const TocLocation&,
                                     const TocLimits&) {
  return Status::Unsupported("TOC: not implemented yet");
}

TocReader::TocReader(BlobSource* source, BlobDescriptor blob,
                     std::shared_ptr<const LayerIndex> index, TocReaderOptions options)
    : source_(source), blob_(std::move(blob)), index_(std::move(index)), options_(options) {}

TocReader::~TocReader() = default;

Result<size_t> TocReader::ReadAt(uint64_t, std::span<uint8_t>) {
  return Status::Unsupported("TOC reader: not implemented yet");
}

Result<size_t> TocReader::Read(const TarEntry&, uint64_t, std::span<uint8_t>) {
  return Status::Unsupported("TOC reader: not implemented yet");
}

Status TocReader::Prefetch(uint64_t, uint64_t) {
  return Status::Unsupported("TOC reader: not implemented yet");
}

TocReaderStats TocReader::stats() const { return {fetched_.load(), hits_.load(), compressed_.load()}; }

Result<std::shared_ptr<const std::string>> TocReader::GetChunk(size_t) {
  return Status::Unsupported("TOC reader: not implemented yet");
}

}  // namespace regfs
