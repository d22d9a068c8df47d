#include "reader/base/blob_source.h"

#include <algorithm>
#include <vector>

namespace regfs {

Status BlobSource::ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                              const ByteSink& sink) {
  // In 1 MiB pieces through one buffer: for sources without a stream of
  // their own (memory, decompression), not for one request per piece.
  constexpr uint64_t kPiece = 1u << 20;
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(len, kPiece)));
  for (uint64_t done = 0; done < len;) {
    const size_t n = static_cast<size_t>(std::min(len - done, kPiece));
    RETURN_IF_ERROR(ReadAt(blob, offset + done, {buf.data(), n}));
    RETURN_IF_ERROR(sink({buf.data(), n}));
    done += n;
  }
  return Status::Ok();
}

Status BlobSource::Prefetch(const BlobDescriptor& blob, uint64_t offset, uint64_t len) {
  return ReadStream(blob, offset, len, [](std::span<const uint8_t>) { return Status::Ok(); });
}

}  // namespace regfs
