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

// SHA-256 whose running state can be taken and resumed at 64-byte block
// boundaries. One pass over a blob gives both its digest and the state after
// each chunk (a chain of midstates); a chunk fetched again later is then
// checked by resuming from the state before it and comparing the state after
// it (or, for the blob's last chunk, the digest). Forging a chunk that passes
// is a second preimage of SHA-256's compression function from a known state,
// so the check is as strong as a per-chunk SHA-256 while the pass hashes every
// byte once instead of twice. OpenSSL's EVP interface hides the state; this
// uses its low-level SHA256_CTX (deprecated in 3.0, same SHA-NI code).
class Sha256Chain {
 public:
  static constexpr size_t kStateBytes = 32;
  static constexpr size_t kBlock = 64;

  Sha256Chain();  // at the start of a message
  ~Sha256Chain();
  Sha256Chain(Sha256Chain&&) noexcept;
  Sha256Chain& operator=(Sha256Chain&&) noexcept;
  Sha256Chain(const Sha256Chain&) = delete;
  Sha256Chain& operator=(const Sha256Chain&) = delete;

  // The hash of a message whose first `bytes` bytes (a multiple of kBlock)
  // left it in `state` (as returned by State()). InvalidArgument otherwise.
  static Result<Sha256Chain> Resume(std::string_view state, uint64_t bytes);

  void Update(const void* data, size_t len);
  uint64_t bytes() const { return bytes_; }
  // The running state (kStateBytes raw bytes); only at a block boundary
  // (bytes() % kBlock == 0), empty otherwise.
  std::string State() const;
  // The digest of the message so far (32 raw bytes / "sha256:<hex>"); the
  // object must not be updated afterwards.
  std::string FinishRaw();
  std::string FinishDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  uint64_t bytes_ = 0;
};

std::string Sha256Digest(std::string_view data);   // "sha256:<hex>"
std::string Sha256Raw(std::string_view data);      // 32 raw bytes
std::string HexEncode(std::string_view raw);

}  // namespace regfs

#endif  // REGFS_READER_BASE_DIGEST_H_
