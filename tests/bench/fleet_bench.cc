// A fleet on one machine (issue 18): N nodes start the same image through
// one pull-through cache (docker-registry in proxy mode) in front of the
// upstream registry, all reading the same registries.conf.
//
//  - regfs: N `regfs mount`s of the image, cold, each with its own chunk
//    cache, started together; each reads every blob in full (what a node
//    whose containers touch everything would fetch). Measured: the wall time
//    until every mount has read everything, and the bytes the upstream
//    served (its access log; target: the image once).
//  - full pulls: N `skopeo copy` of the image (to dir:) through a fresh
//    proxy of the same kind, started together, as N nodes pulling it.
//    Same measurements.
//
//   fleet_bench [n=8] [layer_mib=48] [mtu]
//
// With `mtu`, everything runs in a network namespace of its own whose
// loopback has that MTU (1500: as nodes reach a mirror over Ethernet). On
// the default loopback (MTU 64 KiB) each TCP connection starts with a send
// buffer of megabytes, so a server streaming an answer its client dropped
// at the headers has sent megabytes before it notices: the cost of each
// answer a filling pull-through cache streams (see MirrorSet) is inflated.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "reader/base/digest.h"
#include "tests/support/bench_util.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT

namespace {

// Bytes and requests the registry answered for GETs of the repository's
// blobs, from its access log ("GET /v2/... HTTP/1.1" STATUS BYTES ...), in
// all and per blob and status.
struct Served {
  uint64_t bytes = 0;
  uint64_t requests = 0;
  // digest -> status -> {requests, bytes, largest}
  struct Answers {
    uint64_t requests = 0, bytes = 0, largest = 0;
  };
  std::map<std::string, std::map<int, Answers>> by_blob;
};
Served BlobBytesServed(const TestRegistry& r, const std::string& repo) {
  Served s;
  std::ifstream in(r.access_log_path());
  std::string line;
  const std::string want = "\"GET /v2/" + repo + "/blobs/";
  while (std::getline(in, line)) {
    size_t at = line.find(want);
    if (at == std::string::npos) continue;
    size_t q2 = line.find('"', at + 1);
    if (q2 == std::string::npos) continue;
    const std::string path =
        line.substr(at + want.size(), line.find(' ', at + want.size()) - (at + want.size()));
    std::istringstream rest(line.substr(q2 + 1));
    int status = 0;
    std::string bytes;
    if (!(rest >> status >> bytes)) continue;
    ++s.requests;
    const uint64_t n = bytes == "-" ? 0 : std::strtoull(bytes.c_str(), nullptr, 10);
    s.bytes += n;
    Served::Answers& a = s.by_blob[path][status];
    ++a.requests;
    a.bytes += n;
    a.largest = std::max(a.largest, n);
  }
  return s;
}

// Per blob: what the upstream served (the mirror's fetches) and what the
// mirror answered (200: streamed from the upstream while filling; 206: from
// its storage).
void PrintBreakdown(const char* what, const std::vector<BlobDescriptor>& blobs, const Served& up,
                    const Served& mirror) {
  const double mib = 1024.0 * 1024.0;
  std::printf("  %s, per blob:\n", what);
  for (size_t i = 0; i < blobs.size(); ++i) {
    const BlobDescriptor& b = blobs[i];
    std::string line;
    auto add = [&](const char* who, const Served& s) {
      auto it = s.by_blob.find(b.digest);
      if (it == s.by_blob.end()) return;
      for (const auto& [status, a] : it->second) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "  %s %d: %llu GETs %.1f MiB (largest %.1f)", who, status,
                      (unsigned long long)a.requests, a.bytes / mib, a.largest / mib);
        line += buf;
      }
    };
    add("upstream", up);
    add("mirror", mirror);
    std::printf("    layer %zu (%.1f MiB):%s\n", i, b.size / mib, line.c_str());
  }
}

bool ReadAll(const std::string& path, uint64_t expect) {
  std::string bytes;
  if (!ReadWholeFile(path, &bytes)) return false;
  return bytes.size() == expect;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 8;
  const int layer_mib = argc > 2 ? std::atoi(argv[2]) : 48;
  if (argc > 3 && !getenv("REGFS_FLEET_BENCH_NETNS")) {
    // Again, in a network namespace whose loopback has the MTU asked for.
    setenv("REGFS_FLEET_BENCH_NETNS", argv[3], 1);
    const std::string mtu = std::to_string(std::atoi(argv[3]));
    const std::string script =
        "ip link set lo up && ip link set lo mtu " + mtu + " && exec \"$0\" \"$1\" \"$2\" \"$3\"";
    execlp("unshare", "unshare", "--net", "sh", "-c", script.c_str(), argv[0], argv[1], argv[2],
           argv[3], static_cast<char*>(nullptr));
    std::perror("fleet_bench: unshare");
    return 1;
  }
  if (getenv("REGFS_FLEET_BENCH_NETNS")) {
    std::printf("fleet_bench: in a network namespace, loopback MTU %s\n",
                getenv("REGFS_FLEET_BENCH_NETNS"));
  }
  if (!FuseUnavailableReason().empty() || geteuid() != 0) {
    std::fprintf(stderr, "fleet_bench: needs root and FUSE (%s)\n",
                 FuseUnavailableReason().c_str());
    return 1;
  }
  TempDir dir("regfs-fleet");
  TestRegistry upstream;
  if (Status s = upstream.Start(); !s.ok()) {
    std::fprintf(stderr, "upstream: %s\n", s.ToString().c_str());
    return 1;
  }
  // An image of three layers, uncompressed random data (so the bytes moved
  // are the image's size, and no CPU goes to compression).
  ImageSpec spec;
  for (int i = 0; i < 3; ++i) {
    const size_t size = static_cast<size_t>(layer_mib) << 20;
    spec.layers.push_back({{TarEntry::File("data/" + std::to_string(i),
                                           DeterministicBytes(10 + i, i == 0 ? size : size / 4))},
                           Compression::kNone});
  }
  BuiltImage image = BuildImage(spec);
  ImagePusher pusher(upstream);
  if (Status s = pusher.PushImage("fleet/app", "v1", image); !s.ok()) {
    std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<BlobDescriptor> blobs;  // the layers; the config is read at mount
  uint64_t image_bytes = image.config_descriptor.size;
  for (const BuiltLayer& l : image.layers) {
    blobs.push_back(l.descriptor);
    image_bytes += l.descriptor.size;
  }
  const std::string ref = upstream.Ref("fleet/app", "v1");
  const Served pushed = BlobBytesServed(upstream, "fleet/app");  // HEADs only: zero GETs

  auto make_mirror = [&](const std::string& name) {
    TestRegistryOptions o;
    o.proxy_remote_url = upstream.Url();
    auto m = std::make_unique<TestRegistry>(o);
    if (Status s = m->Start(); !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), s.ToString().c_str());
      return std::unique_ptr<TestRegistry>();
    }
    const std::string conf = dir.Sub(name + ".conf");
    std::ofstream(conf) << "[[registry]]\nlocation = \"" << upstream.HostPort()
                        << "\"\ninsecure = true\n[[registry.mirror]]\nlocation = \""
                        << m->HostPort() << "\"\ninsecure = true\n";
    return m;
  };

  // regfs: N mounts, each its own cache, started together.
  std::unique_ptr<TestRegistry> mirror = make_mirror("regfs-mirror");
  if (!mirror) return 1;
  const std::string conf = dir.Sub("regfs-mirror.conf");
  std::vector<std::string> mnts;
  for (int i = 0; i < n; ++i) {
    mnts.push_back(dir.Sub("mnt" + std::to_string(i)));
    mkdir(mnts.back().c_str(), 0755);
  }
  std::vector<int> ok(n, 0);
  const double regfs_s = TimeIt([&] {
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        CommandResult m =
            RunCommand({RegfsBinary(), "mount", "--registries-conf", conf, "--cache-dir",
                        dir.Sub("cache" + std::to_string(i)), "--log-file",
                        dir.Sub("log" + std::to_string(i)), ref, mnts[i]});
        if (m.exit_code != 0) {
          std::fprintf(stderr, "mount %d: %s\n", i, m.output.c_str());
          return;
        }
        bool all = true;
        for (const BlobDescriptor& b : blobs) {
          all = ReadAll(mnts[i] + "/blobs/" + b.digest, b.size) && all;
        }
        ok[i] = all;
      });
    }
    for (auto& t : threads) t.join();
  });
  for (int i = 0; i < n; ++i) RunCommand({RegfsBinary(), "umount", mnts[i]});
  int mounts_ok = 0;
  for (int v : ok) mounts_ok += v;
  const Served regfs_up = BlobBytesServed(upstream, "fleet/app");
  const Served regfs_mirror = BlobBytesServed(*mirror, "fleet/app");
  mirror.reset();

  // N full pulls through a fresh mirror of the same kind.
  std::unique_ptr<TestRegistry> mirror2 = make_mirror("pull-mirror");
  if (!mirror2) return 1;
  const std::string conf2 = dir.Sub("pull-mirror.conf");
  std::vector<int> pulled(n, 0);
  const double pull_s = TimeIt([&] {
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        CommandResult c = RunCommand({"skopeo", "--registries-conf", conf2, "copy", "-q",
                                      "--src-tls-verify=false", "docker://" + ref,
                                      "dir:" + dir.Sub("pull" + std::to_string(i))});
        if (c.exit_code != 0) {
          std::fprintf(stderr, "skopeo %d: %s\n", i, c.output.c_str());
          return;
        }
        pulled[i] = 1;
      });
    }
    for (auto& t : threads) t.join();
  });
  int pulls_ok = 0;
  for (int v : pulled) pulls_ok += v;
  const Served total_up = BlobBytesServed(upstream, "fleet/app");
  Served pull_up{total_up.bytes - regfs_up.bytes, total_up.requests - regfs_up.requests, {}};
  for (const auto& [digest, statuses] : total_up.by_blob) {
    for (const auto& [status, a] : statuses) {
      Served::Answers before;
      auto it = regfs_up.by_blob.find(digest);
      if (it != regfs_up.by_blob.end() && it->second.count(status)) before = it->second.at(status);
      if (a.requests > before.requests) {
        pull_up.by_blob[digest][status] = {a.requests - before.requests, a.bytes - before.bytes,
                                           a.largest};
      }
    }
  }
  const Served pull_mirror = BlobBytesServed(*mirror2, "fleet/app");

  const double mib = 1024.0 * 1024.0;
  std::printf(
      "fleet_bench: N=%d, image %.1f MiB (%zu layers), %d/%d mounts and %d/%d pulls "
      "complete; upstream GETs before: %llu\n",
      n, image_bytes / mib, blobs.size(), mounts_ok, n, pulls_ok, n,
      (unsigned long long)pushed.requests);
  Report("fleet", "regfs N mounts: upstream bytes / image size", 1.0 * regfs_up.bytes / image_bytes,
         "x",
         std::to_string(regfs_up.requests) + " upstream blob GETs, " +
             std::to_string(regfs_mirror.requests) + " at the mirror");
  Report("fleet", "regfs N mounts: mirror bytes served / (N x image)",
         1.0 * regfs_mirror.bytes / (1.0 * n * image_bytes), "x");
  Report("fleet", "regfs N mounts, cold, all blobs read: wall time", regfs_s, "s");
  Report("fleet", "N skopeo pulls: upstream bytes / image size", 1.0 * pull_up.bytes / image_bytes,
         "x",
         std::to_string(pull_up.requests) + " upstream blob GETs, " +
             std::to_string(pull_mirror.requests) + " at the mirror");
  Report("fleet", "N skopeo pulls, cold: wall time", pull_s, "s");
  Report("fleet", "regfs / skopeo wall time", regfs_s / pull_s, "x");
  PrintBreakdown("regfs N mounts", blobs, regfs_up, regfs_mirror);
  PrintBreakdown("N skopeo pulls", blobs, pull_up, pull_mirror);
  return mounts_ok == n && pulls_ok == n ? 0 : 1;
}
