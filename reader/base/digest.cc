#include "reader/base/digest.h"

#include <openssl/evp.h>

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
