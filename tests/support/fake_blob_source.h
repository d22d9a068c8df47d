// FakeBlobSource: a BlobSource over in-memory blobs for tests. Counts every
// request (per blob, with offsets), and injects faults on demand: fail the
// next N requests with a given Status, delay each request, hold requests until
// released (to line up concurrent readers), corrupt the bytes it returns, or
// serve content that does not match the digest (a lying registry).
// Thread-safe.
#ifndef REGFS_TESTS_SUPPORT_FAKE_BLOB_SOURCE_H_
#define REGFS_TESTS_SUPPORT_FAKE_BLOB_SOURCE_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "reader/base/blob_source.h"
#include "reader/base/status.h"

namespace regfs::testing {

// Deterministic pseudo-random bytes (splitmix64), fast enough for 100 MB.
std::string RandomBytes(size_t n, uint64_t seed);

class FakeBlobSource : public BlobSource {
 public:
  struct Request {
    std::string digest;
    uint64_t offset = 0;
    uint64_t length = 0;
  };

  // Adds a blob; returns its descriptor with the true sha256 digest.
  BlobDescriptor AddBlob(std::string bytes,
                         std::string media_type = "application/octet-stream");
  // Serves `bytes` under a descriptor naming `digest`, which may be wrong.
  BlobDescriptor AddBlobAs(std::string digest, std::string bytes,
                           std::string media_type = "application/octet-stream");
  // Changes what is served for `digest` from now on (same size expected).
  void ReplaceContent(const std::string& digest, std::string bytes);

  Status ReadAt(const BlobDescriptor& blob, uint64_t offset, std::span<uint8_t> out) override;
  // One request (logged, faults as for ReadAt), whose bytes reach the sink in
  // pieces of SetStreamPiece bytes (default: all at once).
  Status ReadStream(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                    const ByteSink& sink) override;

  // Faults.
  void FailNext(int n, Status status);
  void SetDelay(std::chrono::milliseconds delay);
  void SetCorruptResponses(bool on);  // flips one byte in every response
  void HoldRequests();                // requests block until ReleaseRequests()
  void ReleaseRequests();
  void SetStreamPiece(size_t bytes);
  // The next streams stop with `status` once they have delivered `bytes`.
  void FailStreamsAfter(uint64_t bytes, Status status);
  // The next streams pause once they have delivered `bytes`, until
  // ReleaseStreams(); WaitForHeldStream() waits (bounded) for one to pause.
  void HoldStreamsAfter(uint64_t bytes);
  bool WaitForHeldStream(std::chrono::milliseconds timeout);
  void ReleaseStreams();
  // Waits (bounded) until at least n requests have arrived; false on timeout.
  bool WaitForRequests(uint64_t n, std::chrono::milliseconds timeout);

  // Counters.
  uint64_t requests() const;
  uint64_t requests_for(const std::string& digest) const;
  uint64_t bytes_served() const;
  std::vector<Request> request_log() const;
  void ResetCounters();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> blobs_;
  std::vector<Request> log_;
  uint64_t bytes_served_ = 0;
  int fail_next_ = 0;
  Status fail_status_;
  std::chrono::milliseconds delay_{0};
  bool corrupt_ = false;
  bool hold_ = false;
  size_t stream_piece_ = 0;
  std::optional<uint64_t> fail_stream_after_;
  Status fail_stream_status_;
  std::optional<uint64_t> hold_stream_after_;
  bool stream_held_ = false;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_FAKE_BLOB_SOURCE_H_
