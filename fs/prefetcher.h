// Read-ahead for sequential reads of blobs: a small pool of background
// threads that pull ranges through a BlobSource (the chunk cache), so that the
// bytes are cached before the reader asks. On-demand reads come first: the
// pool is small, jobs are chunk-sized, and a full queue drops new jobs rather
// than delaying anyone. Failures are only logged: the on-demand read that
// later needs those bytes will fetch them and report its own error.
#ifndef REGFS_FS_PREFETCHER_H_
#define REGFS_FS_PREFETCHER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "reader/base/blob_source.h"

namespace regfs {

class Prefetcher {
 public:
  // Jobs are job_size pieces; contiguous queued pieces of a blob are fetched
  // together, in requests of up to max_request bytes, through
  // source->Prefetch (which, for the cache, skips chunks already cached).
  Prefetcher(BlobSource* source, int threads, uint64_t job_size, uint64_t max_request);
  ~Prefetcher();  // drops queued jobs, joins the threads
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Queues [offset, offset + len) of `blob`, split into job_size pieces
  // aligned to job_size. Pieces already queued or running are skipped.
  void Enqueue(const BlobDescriptor& blob, uint64_t offset, uint64_t len);

 private:
  struct Job {
    BlobDescriptor blob;
    uint64_t offset;
    uint64_t len;
  };
  void Run();

  BlobSource* source_;
  const uint64_t job_size_;
  const uint64_t max_request_;
  static constexpr size_t kMaxQueue = 256;

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::set<std::pair<std::string, uint64_t>> pending_;  // (digest, offset) queued or running
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace regfs

#endif  // REGFS_FS_PREFETCHER_H_
