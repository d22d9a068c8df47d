#include "reader/base/digest.h"

// Sha256Chain needs SHA256_CTX's state, which only the deprecated low-level
// interface exposes.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <stdexcept>

namespace regfs {

struct Sha256::Ctx {
  struct Free {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  std::unique_ptr<EVP_MD_CTX, Free> md;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md.reset(EVP_MD_CTX_new());
  if (!ctx_->md || EVP_DigestInit_ex(ctx_->md.get(), EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("EVP sha256 init failed");
  }
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(const void* data, size_t len) {
  if (len) EVP_DigestUpdate(ctx_->md.get(), data, len);
}

std::string Sha256::FinishRaw() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_->md.get(), out, &n);
  return std::string(reinterpret_cast<char*>(out), n);
}

std::string Sha256::FinishDigest() { return "sha256:" + HexEncode(FinishRaw()); }

struct Sha256Chain::Ctx {
  SHA256_CTX sha;
};

Sha256Chain::Sha256Chain() : ctx_(std::make_unique<Ctx>()) { SHA256_Init(&ctx_->sha); }
Sha256Chain::~Sha256Chain() = default;
Sha256Chain::Sha256Chain(Sha256Chain&&) noexcept = default;
Sha256Chain& Sha256Chain::operator=(Sha256Chain&&) noexcept = default;

Result<Sha256Chain> Sha256Chain::Resume(std::string_view state, uint64_t bytes) {
  if (state.size() != kStateBytes || bytes % kBlock != 0 || bytes >> 61 != 0) {
    return Status::InvalidArgument("sha256 state of " + std::to_string(state.size()) +
                                   " bytes at offset " + std::to_string(bytes));
  }
  Sha256Chain c;
  // SHA256_CTX keeps the state words in host order and the length in bits
  // split in two 32-bit halves; nothing is buffered at a block boundary.
  for (size_t i = 0; i < 8; ++i) {
    uint32_t w = 0;
    for (size_t k = 0; k < 4; ++k) w = (w << 8) | static_cast<uint8_t>(state[i * 4 + k]);
    c.ctx_->sha.h[i] = w;
  }
  const uint64_t bits = bytes * 8;
  c.ctx_->sha.Nl = static_cast<SHA_LONG>(bits & 0xffffffffu);
  c.ctx_->sha.Nh = static_cast<SHA_LONG>(bits >> 32);
  c.ctx_->sha.num = 0;
  c.bytes_ = bytes;
  return c;
}

void Sha256Chain::Update(const void* data, size_t len) {
  if (!len) return;
  SHA256_Update(&ctx_->sha, data, len);
  bytes_ += len;
}

std::string Sha256Chain::State() const {
  if (bytes_ % kBlock != 0) return {};
  std::string out(kStateBytes, '\0');
  for (size_t i = 0; i < 8; ++i) {
    const uint32_t w = ctx_->sha.h[i];
    for (size_t k = 0; k < 4; ++k) out[i * 4 + k] = static_cast<char>((w >> (24 - 8 * k)) & 0xff);
  }
  return out;
}

std::string Sha256Chain::FinishRaw() {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256_Final(out, &ctx_->sha);
  return std::string(reinterpret_cast<char*>(out), sizeof out);
}

std::string Sha256Chain::FinishDigest() { return "sha256:" + HexEncode(FinishRaw()); }

std::string Sha256Digest(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.FinishDigest();
}

std::string Sha256Raw(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.FinishRaw();
}

std::string HexEncode(std::string_view raw) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 15]);
  }
  return s;
}

Status ValidateDigest(std::string_view digest) {
  auto colon = digest.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Status::InvalidArgument("malformed digest '" + std::string(digest) + "'");
  }
  std::string_view algo = digest.substr(0, colon), hex = digest.substr(colon + 1);
  if (algo != "sha256") {
    return Status::Unsupported("digest algorithm '" + std::string(algo) + "' is not supported");
  }
  if (hex.size() != 64) {
    return Status::InvalidArgument("sha256 digest must have 64 hex digits: '" +
                                   std::string(digest) + "'");
  }
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return Status::InvalidArgument("digest has a character that is not lowercase hex: '" +
                                     std::string(digest) + "'");
    }
  }
  return Status::Ok();
}

}  // namespace regfs
