#include "fs/prefetcher.h"

#include <algorithm>

#include "reader/base/log.h"

namespace regfs {

Prefetcher::Prefetcher(BlobSource* source, int threads, uint64_t job_size, CachedFn is_cached)
    : source_(source), job_size_(job_size), is_cached_(std::move(is_cached)) {
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
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (is_cached_ && is_cached_(job.blob, job.offset, job.len)) {
      std::lock_guard lock(mu_);
      pending_.erase({job.blob.digest, job.offset});
      continue;
    }
    Status s = source_->Prefetch(job.blob, job.offset, job.len);
    if (!s.ok()) {
      LOG_INFO("read-ahead of " + job.blob.digest + " at " + std::to_string(job.offset) +
               " failed: " + s.ToString());
    }
    std::lock_guard lock(mu_);
    pending_.erase({job.blob.digest, job.offset});
  }
}

}  // namespace regfs
