#include "fs/prefetcher.h"

#include <algorithm>

#include "reader/base/log.h"

namespace regfs {

Prefetcher::Prefetcher(BlobSource* source, int threads, uint64_t job_size, uint64_t max_request,
                       uint64_t max_window)
    : source_(source),
      job_size_(job_size),
      max_request_(std::max(job_size, max_request)),
      max_window_(std::max(job_size, max_window)) {
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

void Prefetcher::OnRead(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                        BlobSource* source) {
  constexpr uint64_t kSlack = 2ull << 20;
  uint64_t from = 0, count = 0;
  {
    std::lock_guard lock(mu_);
    if (streams_.size() >= kMaxStreams && !streams_.count(blob.digest)) streams_.clear();
    Stream& st = streams_[blob.digest];
    bool sequential = st.next != 0 && offset + kSlack >= st.next && offset <= st.next + kSlack;
    if (!sequential) {
      st = Stream{offset + len, 0, 0};
      return;
    }
    st.next = std::max(st.next, offset + len);
    st.window = st.window == 0 ? job_size_ : std::min(st.window * 2, max_window_);
    uint64_t target = std::min(blob.size, st.next + st.window);
    from = std::max(st.ahead_to, st.next);
    if (target <= from) return;
    // Top up in batches of half the window (at most one request's worth),
    // so that an established stream makes few large requests rather than one
    // small one every few reads.
    if (target < blob.size && target - from < std::min(st.window / 2, max_request_)) return;
    count = target - from;
    st.ahead_to = target;
  }
  Enqueue(blob, from, count, source);
}

void Prefetcher::Enqueue(const BlobDescriptor& blob, uint64_t offset, uint64_t len,
                         BlobSource* source) {
  if (!source) source = source_;
  if (offset >= blob.size) return;
  uint64_t end = std::min(blob.size, offset + len);
  uint64_t start = offset / job_size_ * job_size_;
  bool added = false;
  {
    std::lock_guard lock(mu_);
    for (uint64_t o = start; o < end; o += job_size_) {
      if (queue_.size() >= kMaxQueue) break;
      if (!pending_.insert({blob.digest, o}).second) continue;
      queue_.push_back({source, blob, o, std::min(job_size_, blob.size - o)});
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
             queue_.front().source == job.source &&
             queue_.front().offset == job.offset + job.len &&
             job.len + queue_.front().len <= max_request_) {
        job.len += queue_.front().len;
        pieces.push_back(queue_.front().offset);
        queue_.pop_front();
      }
    }
    Status s = job.source->Prefetch(job.blob, job.offset, job.len);
    if (!s.ok()) {
      LOG_INFO("read-ahead of " + job.blob.digest + " at " + std::to_string(job.offset) +
               " failed: " + s.ToString());
    }
    std::lock_guard lock(mu_);
    for (uint64_t o : pieces) pending_.erase({job.blob.digest, o});
  }
}

}  // namespace regfs
