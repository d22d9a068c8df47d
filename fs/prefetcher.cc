#include "fs/prefetcher.h"

#include <algorithm>

#include "reader/base/log.h"

namespace regfs {

Prefetcher::Prefetcher(BlobSource* source, int threads, uint64_t job_size, uint64_t max_request)
    : source_(source), job_size_(job_size), max_request_(std::max(job_size, max_request)) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Prefetcher::Enqueue(const BlobDescriptor& blob, uint64_t offset, uint64_t len) {
  if (offset >= blob.size) return;
  uint64_t end = std::min(blob.size, offset + len);
  uint64_t start = offset / job_size_ * job_size_;
  bool added = false;
  {
    std::lock_guard lock(mu_);
    for (uint64_t o = start; o < end; o += job_size_) {
      if (queue_.size() >= kMaxQueue) break;
      if (!pending_.insert({blob.digest, o}).second) continue;
      queue_.push_back({blob, o, std::min(job_size_, blob.size - o)});
      added = true;
    }
  }
  if (added) cv_.notify_all();
}

void Prefetcher::Run() {
  for (;;) {
    Job job;
    std::vector<uint64_t> pieces;  // offsets of the queued jobs merged into `job`
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      pieces.push_back(job.offset);
      // Jobs queued right after it, of the same blob and contiguous, go in
      // the same request, up to max_request_: a long sequential window makes
      // few large requests, a short one (maybe two random reads that landed
      // close) only small ones.
      while (!queue_.empty() && queue_.front().blob.digest == job.blob.digest &&
             queue_.front().offset == job.offset + job.len &&
             job.len + queue_.front().len <= max_request_) {
        job.len += queue_.front().len;
        pieces.push_back(queue_.front().offset);
        queue_.pop_front();
      }
    }
    Status s = source_->Prefetch(job.blob, job.offset, job.len);
    if (!s.ok()) {
      LOG_INFO("read-ahead of " + job.blob.digest + " at " + std::to_string(job.offset) +
               " failed: " + s.ToString());
    }
    std::lock_guard lock(mu_);
    for (uint64_t o : pieces) pending_.erase({job.blob.digest, o});
  }
}

}  // namespace regfs
