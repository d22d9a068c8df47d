#include "tests/support/fake_blob_source.h"

#include <algorithm>
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

Status FakeBlobSource::ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                                  const ByteSink& sink) {
  std::string buf(len, '\0');
  RETURN_IF_ERROR(ReadAt(blob, offset, {reinterpret_cast<uint8_t*>(buf.data()), buf.size()}));
  constexpr uint64_t kNever = UINT64_MAX;
  uint64_t piece, fail_after, hold_after;
  Status fail_status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    piece = stream_piece_ ? stream_piece_ : std::max<uint64_t>(len, 1);
    fail_after = fail_stream_after_.value_or(kNever);
    fail_status = fail_stream_status_;
    hold_after = hold_stream_after_.value_or(kNever);
  }
  for (uint64_t done = 0; done < len;) {
    uint64_t n = std::min<uint64_t>(piece, len - done);
    if (done + n > fail_after) n = fail_after - done;
    if (done < hold_after && done + n > hold_after) n = hold_after - done;
    if (n > 0) {
      RETURN_IF_ERROR(sink({reinterpret_cast<const uint8_t*>(buf.data()) + done, n}));
      done += n;
    }
    if (done == fail_after) return fail_status;
    if (done == hold_after) {
      std::unique_lock<std::mutex> lock(mu_);
      stream_held_ = true;
      cv_.notify_all();
      cv_.wait(lock, [this] { return !hold_stream_after_; });
      hold_after = kNever;
    }
  }
  return Status::Ok();
}

void FakeBlobSource::SetStreamPiece(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  stream_piece_ = bytes;
}

void FakeBlobSource::FailStreamsAfter(uint64_t bytes, Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_stream_after_ = bytes;
  fail_stream_status_ = std::move(status);
}

void FakeBlobSource::HoldStreamsAfter(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_stream_after_ = bytes;
  stream_held_ = false;
}

bool FakeBlobSource::WaitForHeldStream(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] { return stream_held_; });
}

void FakeBlobSource::ReleaseStreams() {
  std::lock_guard<std::mutex> lock(mu_);
  hold_stream_after_.reset();
  cv_.notify_all();
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
