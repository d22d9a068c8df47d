// Issue 2's throughput check: a >=100 MB blob from a local docker-registry
// read through regfs's ranged HTTP reader (RegistryClient::ReadAt), as a
// ratio to `curl -o /dev/null` of the same blob in the same run.
//
//   reader_bench [size_mib=128] [runs=3]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "reader/http/registry_client.h"
#include "reader/image/reference.h"
#include "tests/support/bench_util.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT

int main(int argc, char** argv) {
  uint64_t size = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 128) << 20;
  int runs = argc > 2 ? std::atoi(argv[2]) : 3;
  TestRegistry registry;
  if (Status s = registry.Start(); !s.ok()) {
    std::fprintf(stderr, "registry: %s\n", s.ToString().c_str());
    return 1;
  }
  ImagePusher pusher(registry);
  Result<BlobDescriptor> blob = pusher.PushRandomBlob("bench/big", size, 7, "v1");
  if (!blob.ok()) {
    std::fprintf(stderr, "push: %s\n", blob.status().ToString().c_str());
    return 1;
  }
  std::string url = registry.Url() + "/v2/bench/big/blobs/" + blob->digest;
  std::printf("reader_bench: %llu MiB blob from docker-registry on %s, %d runs each\n",
              (unsigned long long)(size >> 20), registry.HostPort().c_str(), runs);

  std::vector<double> curl_s, reader_s, reader4_s, reader16_s;
  Reference ref = *ParseReference(registry.Ref("bench/big", "v1"));
  RegistryClientOptions opts;
  opts.tls_verify = false;
  auto client = RegistryClient::Create(ref, opts);
  if (!client.ok()) {
    std::fprintf(stderr, "client: %s\n", client.status().ToString().c_str());
    return 1;
  }
  const uint64_t piece = 8 << 20;
  for (int r = 0; r < runs; ++r) {
    curl_s.push_back(TimeIt([&] {
      CommandResult c = RunCommand({"curl", "-sf", "-o", "/dev/null", url});
      if (c.exit_code != 0) std::fprintf(stderr, "curl failed: %s\n", c.output.c_str());
    }));
    std::vector<uint8_t> buf(piece);
    bool ok = true;
    reader_s.push_back(TimeIt([&] {
      for (uint64_t off = 0; off < size && ok; off += piece) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(piece, size - off));
        Status s = (*client)->ReadAt(*blob, off, std::span(buf.data(), n));
        if (!s.ok()) {
          std::fprintf(stderr, "read: %s\n", s.ToString().c_str());
          ok = false;
        }
      }
    }));
    // 16 MiB ranges: the largest request the chunk cache coalesces misses into.
    std::vector<uint8_t> big(16 << 20);
    reader16_s.push_back(TimeIt([&] {
      for (uint64_t off = 0; off < size && ok; off += big.size()) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(big.size(), size - off));
        if (!(*client)->ReadAt(*blob, off, std::span(big.data(), n)).ok()) ok = false;
      }
    }));
    // Four readers on interleaved pieces, as read-ahead does.
    reader4_s.push_back(TimeIt([&] {
      std::vector<std::thread> ts;
      for (int t = 0; t < 4; ++t) {
        ts.emplace_back([&, t] {
          std::vector<uint8_t> b(piece);
          for (uint64_t off = t * piece; off < size; off += 4 * piece) {
            size_t n = static_cast<size_t>(std::min<uint64_t>(piece, size - off));
            if (!(*client)->ReadAt(*blob, off, std::span(b.data(), n)).ok()) ok = false;
          }
        });
      }
      for (auto& t : ts) t.join();
    }));
    if (!ok) return 1;
  }
  double mib = static_cast<double>(size) / (1 << 20);
  double curl_tp = mib / Median(curl_s), rd_tp = mib / Median(reader_s),
         rd4_tp = mib / Median(reader4_s), rd16_tp = mib / Median(reader16_s);
  Report("reader", "curl -o /dev/null throughput", curl_tp, "MiB/s");
  Report("reader", "regfs reader, 8 MiB ranges, 1 thread", rd_tp, "MiB/s");
  Report("reader", "regfs reader, 8 MiB ranges, 4 threads", rd4_tp, "MiB/s");
  Report("reader", "regfs reader, 16 MiB ranges, 1 thread", rd16_tp, "MiB/s");
  Report("reader", "ratio reader(1 thread) / curl", rd_tp / curl_tp, "x", "target >= 0.8");
  Report("reader", "ratio reader(4 threads) / curl", rd4_tp / curl_tp, "x");
  Report("reader", "ratio reader(16 MiB ranges) / curl", rd16_tp / curl_tp, "x");
  return 0;
}
