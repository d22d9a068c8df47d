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
#include <map>
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
  // A sequential reader's window starts at job_size and doubles up to
  // max_window.
  Prefetcher(BlobSource* source, int threads, uint64_t job_size, uint64_t max_request,
             uint64_t max_window = 64ull << 20);
  ~Prefetcher();  // drops queued jobs, joins the threads
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Queues [offset, offset + len) of `blob`, split into job_size pieces
  // aligned to job_size. Pieces already queued or running are skipped.
  // `source` (default: the constructor's) must outlive the Prefetcher.
  void Enqueue(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
               BlobSource* source = nullptr);
  // The read-ahead policy, for every reader of blobs: a foreground read of
  // [offset, offset + len) was served; when the blob's reads are sequential
  // (a little reordering allowed: the kernel reads ahead from several
  // threads), the window ahead of the reader grows and is queued.
  void OnRead(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
              BlobSource* source = nullptr);

 private:
  struct Job {
    BlobSource* source;
    BlobDescriptor blob;
    uint64_t offset;
    uint64_t len;
  };
  void Run();

  struct Stream {
    uint64_t next = 0;      // where a sequential reader would read next
    uint64_t window = 0;    // current read-ahead window
    uint64_t ahead_to = 0;  // read-ahead queued up to here
  };

  BlobSource* source_;
  const uint64_t job_size_;
  const uint64_t max_request_;
  const uint64_t max_window_;
  static constexpr size_t kMaxQueue = 256;

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::set<std::pair<std::string, uint64_t>> pending_;  // (digest, offset) queued or running
  bool stop_ = false;
  std::vector<std::thread> threads_;
  std::map<std::string, Stream> streams_;  // by blob digest (bounded: kMaxStreams)
  static constexpr size_t kMaxStreams = 4096;
};

}  // namespace regfs

#endif  // REGFS_FS_PREFETCHER_H_
