#include "tests/support/fake_blob_source.h"

#include <cstring>
#include <thread>

#include "reader/base/digest.h"

namespace regfs::testing {

std::string RandomBytes(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  uint64_t x = seed;
  for (size_t i = 0; i < n; i += 8) {
    x += 0x9e3779b97f4a7c15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(s.data() + i, &z, std::min<size_t>(8, n - i));
  }
  return s;
}

BlobDescriptor FakeBlobSource::AddBlob(std::string bytes, std::string media_type) {
  std::string digest = Sha256Digest(bytes);
  return AddBlobAs(std::move(digest), std::move(bytes), std::move(media_type));
}

BlobDescriptor FakeBlobSource::AddBlobAs(std::string digest, std::string bytes,
                                         std::string media_type) {
  BlobDescriptor d{std::move(media_type), digest, bytes.size()};
  std::lock_guard<std::mutex> lock(mu_);
  blobs_[digest] = std::move(bytes);
  return d;
}

void FakeBlobSource::ReplaceContent(const std::string& digest, std::string bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  blobs_[digest] = std::move(bytes);
}

Status FakeBlobSource::ReadAt(const BlobDescriptor& blob, uint64_t offset,
                              std::span<uint8_t> out) {
  std::chrono::milliseconds delay;
  {
    std::unique_lock<std::mutex> lock(mu_);
    log_.push_back({blob.digest, offset, out.size()});
    cv_.notify_all();
    cv_.wait(lock, [this] { return !hold_; });
    delay = delay_;
  }
  if (delay.count() > 0) std::this_thread::sleep_for(delay);
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_next_ > 0) {
    --fail_next_;
    return fail_status_;
  }
  auto it = blobs_.find(blob.digest);
  if (it == blobs_.end()) return Status::NotFound("no blob " + blob.digest);
  const std::string& b = it->second;
  if (offset > b.size() || out.size() > b.size() - offset) {
    return Status::RangeNotSatisfiable("range outside blob");
  }
  if (!out.empty()) {
    std::memcpy(out.data(), b.data() + offset, out.size());
    if (corrupt_) out[out.size() / 2] ^= 0x5a;
  }
  bytes_served_ += out.size();
  return Status::Ok();
}

void FakeBlobSource::FailNext(int n, Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = n;
  fail_status_ = std::move(status);
}

void FakeBlobSource::SetDelay(std::chrono::milliseconds delay) {
  std::lock_guard<std::mutex> lock(mu_);
  delay_ = delay;
}

void FakeBlobSource::SetCorruptResponses(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  corrupt_ = on;
}

void FakeBlobSource::HoldRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  hold_ = true;
}

void FakeBlobSource::ReleaseRequests() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
  }
  cv_.notify_all();
}

bool FakeBlobSource::WaitForRequests(uint64_t n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return log_.size() >= n; });
}

uint64_t FakeBlobSource::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_.size();
}

uint64_t FakeBlobSource::requests_for(const std::string& digest) const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& r : log_) n += r.digest == digest;
  return n;
}

uint64_t FakeBlobSource::bytes_served() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_served_;
}

std::vector<FakeBlobSource::Request> FakeBlobSource::request_log() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

void FakeBlobSource::ResetCounters() {
  std::lock_guard<std::mutex> lock(mu_);
  log_.clear();
  bytes_served_ = 0;
}

}  // namespace regfs::testing
