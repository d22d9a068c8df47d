// SHA-256 digests as OCI spells them ("sha256:<64 lowercase hex>").
// Hashing is OpenSSL libcrypto's EVP; incremental so blobs can stream through.
#ifndef REGFS_READER_BASE_DIGEST_H_
#define REGFS_READER_BASE_DIGEST_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "reader/base/status.h"

namespace regfs {

// Checks "sha256:" + 64 lowercase hex. Other algorithms are Unsupported; a
// malformed string is InvalidArgument.
Status ValidateDigest(std::string_view digest);

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t len);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // Returns "sha256:<hex>"; the object must not be updated afterwards.
  std::string FinishDigest();
  // Returns the 32 raw bytes.
  std::string FinishRaw();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Digest(std::string_view data);   // "sha256:<hex>"
std::string Sha256Raw(std::string_view data);      // 32 raw bytes
std::string HexEncode(std::string_view raw);

}  // namespace regfs

#endif  // REGFS_READER_BASE_DIGEST_H_
