// libFuzzer target: the tar header parser and the header sequencing (PAX x/g,
// GNU L/K, sparse, policy skips) over arbitrary bytes. Must never crash, hang
// or allocate from an untrusted size.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "reader/base/log.h"
#include "reader/layer/tar_header.h"
#include "reader/layer/tar_reader.h"

namespace {

class BytesStream : public regfs::TarStream {
 public:
  BytesStream(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  regfs::Result<size_t> Read(std::span<uint8_t> out) override {
    size_t n = std::min(out.size(), size_ - pos_);
    if (n) std::memcpy(out.data(), data_ + pos_, n);
    pos_ += n;
    return n;
  }
  regfs::Result<uint64_t> Skip(uint64_t n) override {
    uint64_t k = std::min<uint64_t>(n, size_ - pos_);
    pos_ += k;
    return k;
  }
  uint64_t Position() const override { return pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  regfs::SetLogLevel(regfs::LogLevel::kError);
  if (size >= regfs::kTarBlockSize) {
    auto h = regfs::ParseTarHeader(std::span<const uint8_t, regfs::kTarBlockSize>(data, 512));
    (void)h;
  }
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto pax = regfs::ParsePaxRecords(text);
  if (pax.ok()) {
    for (const auto& [k, v] : *pax) {
      auto t = regfs::ParsePaxTime(v);
      (void)t;
      auto p = regfs::CleanTarPath(v);
      (void)p;
    }
  }
  auto n = regfs::ParseTarNumber(std::span<const uint8_t>(data, std::min<size_t>(size, 12)));
  (void)n;

  BytesStream stream(data, size);
  regfs::TarReader reader(&stream);
  regfs::TarEntry e;
  // An entry's data is skipped by the next call, which fails when the data
  // is cut short: only an entry followed by a good call promises its bytes.
  uint64_t prev_end = 0;
  for (int i = 0; i < 100000; ++i) {
    auto more = reader.Next(&e);
    if (!more.ok()) break;
    if (prev_end > size) __builtin_trap();
    if (!*more) break;
    prev_end = e.type == regfs::EntryType::kRegular ? e.data_offset + e.size : 0;
    // The limits the reader promises (tar_reader.h).
    if (e.path.size() > regfs::TarReader::kMaxPath) __builtin_trap();
    if (e.path.find('\0') != std::string::npos) __builtin_trap();
    if (e.xattrs.size() > regfs::TarReader::kMaxXattrs) __builtin_trap();
    size_t xattr_bytes = 0;
    for (const auto& [k, v] : e.xattrs) xattr_bytes += k.size() + v.size();
    if (xattr_bytes > regfs::TarReader::kMaxXattrBytes) __builtin_trap();
  }
  size_t global_bytes = 0;
  for (const auto& [k, v] : reader.global_pax()) global_bytes += k.size() + v.size();
  if (global_bytes > regfs::TarReader::kMaxGlobalPaxSize) __builtin_trap();
  return 0;
}
