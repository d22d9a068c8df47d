// Chunk cache benchmark. Prints, side by side in one run:
//  - upstream requests for a cold sequential read of a 100 MB blob
//    (target <= size / 8 MiB, thanks to coalescing + readahead);
//  - cached sequential read throughput through CachedBlobSource vs pread of
//    the same bytes from a local file (target ratio >= 0.5);
//  - hit-path latency of a 4 KiB read (p50 / p99), with pread for reference.
// Usage: cache_bench [blob_bytes]
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "tests/support/fake_blob_source.h"

namespace regfs {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Best of `passes` timings of fn(), in seconds.
double Best(int passes, const std::function<bool()>& fn) {
  double best = 1e30;
  for (int i = 0; i < passes; ++i) {
    auto t0 = Clock::now();
    if (!fn()) return -1;
    best = std::min(best, Seconds(Clock::now() - t0));
  }
  return best;
}

struct Percentiles {
  double p50, p99;
};
Percentiles Measure(int n, const std::function<bool(uint64_t)>& fn, uint64_t limit) {
  std::mt19937_64 rng(42);
  std::vector<double> us;
  us.reserve(n);
  for (int i = 0; i < n; ++i) {
    uint64_t off = (rng() % limit) & ~uint64_t{4095};
    auto t0 = Clock::now();
    if (!fn(off)) return {-1, -1};
    us.push_back(Seconds(Clock::now() - t0) * 1e6);
  }
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

int Main(int argc, char** argv) {
  const uint64_t size = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100'000'000;
  char tmpl[] = "/tmp/regfs-cache-bench-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  const std::string dir = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{dir};

  testing::FakeBlobSource upstream;
  const std::string data = testing::RandomBytes(size, 1);
  const BlobDescriptor blob = upstream.AddBlob(data);

  CacheOptions opts;
  opts.dir = dir + "/cache";
  auto cache_r = ChunkCache::Open(opts);
  if (!cache_r.ok() || !(*cache_r)->writable()) {
    std::fprintf(stderr, "cannot open cache: %s\n", cache_r.status().ToString().c_str());
    return 1;
  }
  ChunkCache& cache = **cache_r;
  CachedBlobSource source(&cache, &upstream);
  std::printf("regfs cache_bench: blob %llu bytes, chunk %u bytes, cache %s\n\n",
              static_cast<unsigned long long>(size), cache.chunk_size(), opts.dir.c_str());

  std::vector<uint8_t> buf(1 << 20);
  auto read_all = [&](size_t step) {
    for (uint64_t off = 0; off < size; off += step) {
      size_t n = std::min<uint64_t>(step, size - off);
      if (!source.ReadAt(blob, off, {buf.data(), n}).ok()) return false;
      if (std::memcmp(buf.data(), data.data() + off, n) != 0) return false;
    }
    return true;
  };

  // 1. Cold sequential read, as FUSE would issue it (128 KiB reads).
  auto t0 = Clock::now();
  if (!read_all(128 << 10)) {
    std::fprintf(stderr, "cold read failed\n");
    return 1;
  }
  const double cold_s = Seconds(Clock::now() - t0);
  const double target_req = static_cast<double>(size) / (8 << 20);
  auto state = cache.GetBlobState(blob.digest);
  std::printf("cold sequential read (128 KiB reads, in-memory upstream)\n");
  std::printf("  upstream requests   %llu   (target <= size/8MiB = %.1f)  %s\n",
              static_cast<unsigned long long>(upstream.requests()), target_req,
              upstream.requests() <= target_req ? "OK" : "MISSED");
  std::printf("  upstream bytes      %llu   (blob %llu)\n",
              static_cast<unsigned long long>(upstream.bytes_served()),
              static_cast<unsigned long long>(size));
  std::printf("  time                %.3f s incl. store + sha256 verification; verified=%d "
              "complete=%d\n\n",
              cold_s, state.ok() && state->verified, state.ok() && state->complete());

  // Reference file with the same bytes (page cache warm: just written).
  const std::string file = dir + "/ref.bin";
  {
    int fd = open(file.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd < 0 || write(fd, data.data(), size) != static_cast<ssize_t>(size)) return 1;
    close(fd);
  }
  int fd = open(file.c_str(), O_RDONLY);
  if (fd < 0) return 1;
  auto pread_all = [&](size_t step) {
    for (uint64_t off = 0; off < size; off += step) {
      size_t n = std::min<uint64_t>(step, size - off);
      if (pread(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
        return false;
      if (std::memcmp(buf.data(), data.data() + off, n) != 0) return false;
    }
    return true;
  };

  upstream.ResetCounters();
  std::printf("cached sequential read (best of 3 passes; both sides memcmp the bytes)\n");
  std::printf("  %-10s %14s %14s %8s\n", "read size", "cache MB/s", "pread MB/s", "ratio");
  for (size_t step : {size_t{1} << 20, size_t{128} << 10}) {
    double c = Best(3, [&] { return read_all(step); });
    double p = Best(3, [&] { return pread_all(step); });
    if (c < 0 || p < 0) {
      std::fprintf(stderr, "read failed\n");
      return 1;
    }
    double cm = size / c / 1e6, pm = size / p / 1e6;
    std::printf("  %-10s %14.0f %14.0f %8.2f  (target >= 0.5) %s\n",
                step == (1u << 20) ? "1 MiB" : "128 KiB", cm, pm, cm / pm,
                cm / pm >= 0.5 ? "OK" : "MISSED");
  }
  std::printf("  upstream requests during cached passes: %llu\n\n",
              static_cast<unsigned long long>(upstream.requests()));

  std::printf("hit-path latency, 4 KiB reads at random 4 KiB-aligned offsets (20000 samples)\n");
  Percentiles ch = Measure(20000, [&](uint64_t off) {
    return source.ReadAt(blob, off, {buf.data(), 4096}).ok();
  }, size - 4096);
  Percentiles ph = Measure(20000, [&](uint64_t off) {
    return pread(fd, buf.data(), 4096, static_cast<off_t>(off)) == 4096;
  }, size - 4096);
  std::printf("  cache  p50 %7.1f us   p99 %7.1f us\n", ch.p50, ch.p99);
  std::printf("  pread  p50 %7.1f us   p99 %7.1f us\n", ph.p50, ph.p99);
  close(fd);
  auto stats = cache.Stats();
  if (stats.ok()) {
    std::printf("\ncache: %llu bytes in %llu chunks, %llu blob(s), %llu complete; "
                "this run hits %llu misses %llu\n",
                static_cast<unsigned long long>(stats->bytes),
                static_cast<unsigned long long>(stats->chunks),
                static_cast<unsigned long long>(stats->blobs),
                static_cast<unsigned long long>(stats->complete_blobs),
                static_cast<unsigned long long>(stats->hits),
                static_cast<unsigned long long>(stats->misses));
  }
  return 0;
}

}  // namespace
}  // namespace regfs

int main(int argc, char** argv) { return regfs::Main(argc, argv); }
