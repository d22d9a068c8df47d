// Issue 8's figure: time to a container's first command
// (`podman pull` + `podman run --runtime /usr/sbin/runc --network none IMAGE
// cat /etc/os-release`) through `regfs store`, cold (empty cache, no index)
// and with the layer indexes present (the cache pruned of its chunks), as
// ratios to a normal `podman pull` + `run` of the same image in the same run
// (target with the index present: <= 0.3x). Every podman run uses a private
// storage.conf/containers.conf in a temp dir.
//
//   store_bench [data_mib=384] [runs=3] [rtt_ms=0]   (runs=0: push only)
//
// The image: a small base layer (cat, its libraries, /etc/os-release) and two
// gzip layers sharing data_mib MiB of files the command never reads. The
// default is sized like the images people pull (debian- or ubuntu-based
// application images such as postgres or python: a few hundred MiB
// uncompressed in a handful of layers, 100-400 MiB compressed): at 64 MiB
// podman's fixed cost per run (about 0.25 s) hid what the store saves. The
// files are 4 KiB to 1 MiB (about 1700 of them by default, a realistic
// index size) and compress to about 40% (published layers compress 2.5-3x),
// so ~150 MiB go over the wire for a normal pull.
//
// rtt_ms > 0 puts tests/bench/wan/delay_proxy.py (half the RTT each way, no
// rate limit) between the clients and the registry.
//
// Over an emulated wide-area link (tests/bench/wan/wan_bench.sh runs it in its
// network namespace, with tc shaping the proxy's port):
//   --registry URL      push to this running registry instead of starting one
//   --pull HOST:PORT    podman and the store pull from here (the proxy)
//   --profile NAME      the name printed before each figure
//   --link-stats FILE   the proxy's counters ("time down up conns"): also
//                       report the bytes each case moved towards the clients
//   --work-dir DIR      where the temp dir (podman storages, store mounts,
//                       caches) goes instead of $TMPDIR or /tmp. Keep DIR
//                       short (<= 25 characters): with a podman storage
//                       directory longer than about 46 characters, every
//                       `podman run` of podman 4.3.1 took 20 s more.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/support/bench_util.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

namespace {

ImageSpec Spec(uint64_t data_mib) {
  std::vector<TE> base = HostCatEntries();
  base.push_back(TE::File("etc/os-release", "ID=regfs-bench\n"));
  uint64_t half = (data_mib << 20) / 2;
  ImageSpec spec;
  spec.layers.push_back({base, Compression::kGzip});
  spec.layers.push_back({DeterministicDataEntries(100, half), Compression::kGzip});
  // Seeds far from the first layer's: distinct files and directories.
  spec.layers.push_back(
      {DeterministicDataEntries(1000000, (data_mib << 20) - half), Compression::kGzip});
  spec.cmd = {"/bin/cat", "/etc/os-release"};
  return spec;
}

// pull + run; seconds, or -1 on failure (printed).
double FirstCommand(const PodmanEnv& env, const std::string& ref) {
  bool ok = true;
  double t = TimeIt([&] {
    CommandResult p = env.Run("pull -q --tls-verify=false " + ref, 600);
    CommandResult r = p.exit_code == 0
                          ? env.Run("run --rm --runtime /usr/sbin/runc --network none " + ref +
                                        " cat /etc/os-release",
                                    600)
                          : p;
    ok = r.exit_code == 0 && r.output == "ID=regfs-bench\n";
    if (!ok) std::fprintf(stderr, "%s: %s\n", env.dir().c_str(), r.output.c_str());
  });
  return ok ? t : -1;
}

struct Store {
  std::string mnt;
  bool ok = false;
  Store(const std::string& m, const std::string& cache) : mnt(m) {
    mkdir(mnt.c_str(), 0755);
    CommandResult r =
        RunCommand({RegfsBinary(), "store", "--tls-verify=false", "--cache-dir", cache, mnt});
    ok = r.exit_code == 0;
    if (!ok) std::fprintf(stderr, "regfs store: %s\n", r.output.c_str());
  }
  ~Store() {
    if (ok) RunCommand({RegfsBinary(), "umount", mnt});
  }
};

// The delaying proxy, killed on scope exit.
struct Proxy {
  pid_t pid = -1;
  ~Proxy() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
};

// The proxy's bytes sent towards the clients so far, after its counters
// (written every 100 ms) have settled; 0 without a stats file.
uint64_t LinkDownBytes(const std::string& stats) {
  if (stats.empty()) return 0;
  usleep(250000);
  std::string line = ReadHostFile(stats);
  double when = 0, down = 0;
  if (std::sscanf(line.c_str(), "%lf %lf", &when, &down) != 2) return 0;
  return static_cast<uint64_t>(down);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  std::string registry_url, pull, profile, link_stats, work_dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string* opt = a == "--registry"     ? &registry_url
                       : a == "--pull"       ? &pull
                       : a == "--profile"    ? &profile
                       : a == "--link-stats" ? &link_stats
                       : a == "--work-dir"   ? &work_dir
                                             : nullptr;
    if (opt && i + 1 < argc) {
      *opt = argv[++i];
    } else if (!a.empty() && a[0] != '-') {
      pos.push_back(a);
    } else {
      std::fprintf(stderr,
                   "usage: store_bench [data_mib=384] [runs=3] [rtt_ms=0] [--registry URL] "
                   "[--pull HOST:PORT] [--profile NAME] [--link-stats FILE] [--work-dir DIR]\n");
      return 2;
    }
  }
  uint64_t data_mib = pos.size() > 0 ? std::strtoull(pos[0].c_str(), nullptr, 10) : 384;
  int runs = pos.size() > 1 ? std::atoi(pos[1].c_str()) : 3;
  int rtt_ms = pos.size() > 2 ? std::atoi(pos[2].c_str()) : 0;
  std::string why = FuseUnavailableReason();
  if (!why.empty()) {
    std::fprintf(stderr, "store_bench needs FUSE: %s\n", why.c_str());
    return 1;
  }
  if (!HavePodman()) {
    std::fprintf(stderr, "store_bench needs podman and /usr/sbin/runc\n");
    return 1;
  }
  TestRegistry registry;
  if (registry_url.empty()) {
    if (Status s = registry.Start(); !s.ok()) {
      std::fprintf(stderr, "registry: %s\n", s.ToString().c_str());
      return 1;
    }
    registry_url = "http://127.0.0.1:" + std::to_string(registry.port());
  }
  if (pull.empty()) pull = registry_url.substr(registry_url.find("://") + 3);
  ImagePusher pusher(registry_url);
  BuiltImage image = BuildImage(Spec(data_mib));
  uint64_t blob_bytes = 0;
  for (const BuiltLayer& l : image.layers) blob_bytes += l.blob.size();
  if (Status s = pusher.PushImage("bench/app", "v1", image); !s.ok()) {
    std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
    return 1;
  }
  std::string ref = pull + "/bench/app:v1";
  Proxy proxy;
  if (rtt_ms > 0) {
    int target = std::atoi(pull.substr(pull.rfind(':') + 1).c_str());
    int port = target + 1;  // best effort: a free port next to the registry's
    std::string here = __FILE__;
    std::string script = here.substr(0, here.rfind('/')) + "/wan/delay_proxy.py";
    proxy.pid = fork();
    if (proxy.pid == 0) {
      std::string listen = std::to_string(port), target_s = std::to_string(target),
                  delay = std::to_string(rtt_ms / 2);
      execlp("python3", "python3", script.c_str(), "--listen", listen.c_str(), "--target",
             target_s.c_str(), "--delay-ms", delay.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    sleep(1);
    ref = "127.0.0.1:" + std::to_string(port) + "/bench/app:v1";
    if (profile.empty()) profile = "rtt" + std::to_string(rtt_ms) + "ms";
  }
  if (profile.empty()) profile = "loopback";
  // TempDir's parent; a short name (see --work-dir).
  if (!work_dir.empty()) setenv("TMPDIR", work_dir.c_str(), 1);
  TempDir tmp("rsb");
  unsetenv("TMPDIR");
  std::printf(
      "store_bench: %llu MiB of data in a %zu-layer image (%.1f MiB compressed), %s, median of "
      "%d runs\n",
      (unsigned long long)data_mib, image.layers.size(), blob_bytes / 1048576.0, profile.c_str(),
      runs);
  image = BuiltImage();  // free the in-memory copy before podman runs
  if (runs < 1) return 0;
  std::vector<double> normal, cold, indexed;
  std::vector<double> normal_link, cold_link, indexed_link;  // bytes over the link
  // pull + run of `ref` with `env`: seconds into `times`, link bytes into `link`.
  auto measure = [&](const PodmanEnv& env, std::vector<double>& times, std::vector<double>& link) {
    uint64_t b0 = LinkDownBytes(link_stats);
    double t = FirstCommand(env, ref);
    if (t < 0) return false;
    times.push_back(t);
    link.push_back(static_cast<double>(LinkDownBytes(link_stats) - b0));
    return true;
  };
  for (int r = 0; r < runs; ++r) {
    std::string n = std::to_string(r);
    if (!measure(PodmanEnv(tmp.Sub("n" + n), ""), normal, normal_link)) return 1;
    std::string cache = tmp.Sub("cache" + n);
    {
      Store store(tmp.Sub("store-cold" + n), cache);
      if (!store.ok) return 1;
      if (!measure(PodmanEnv(tmp.Sub("c" + n), store.mnt), cold, cold_link)) return 1;
    }
    // The indexes stay in the cache; the chunks go.
    RunCommand({RegfsBinary(), "cache", "prune", "--chunks-only", "--cache-dir", cache,
                "--max-size", "0"});
    {
      Store store(tmp.Sub("store-idx" + n), cache);
      if (!store.ok) return 1;
      if (!measure(PodmanEnv(tmp.Sub("i" + n), store.mnt), indexed, indexed_link)) return 1;
    }
    std::printf("  run %d: normal %.3f s, store cold %.3f s, store with index %.3f s\n", r,
                normal.back(), cold.back(), indexed.back());
    if (!link_stats.empty()) {
      std::printf(
          "  run %d: over the link: normal %.1f MiB, store cold %.1f MiB, "
          "store with index %.1f MiB\n",
          r, normal_link.back() / 1048576, cold_link.back() / 1048576,
          indexed_link.back() / 1048576);
    }
    std::fflush(stdout);
  }
  double base = Median(normal);
  Report("store_bench", profile + " normal pull+run", base, "s");
  Report("store_bench", profile + " store cold pull+run", Median(cold), "s");
  Report("store_bench", profile + " store with index pull+run", Median(indexed), "s");
  Report("store_bench", profile + " cold / normal", Median(cold) / base, "x");
  Report("store_bench", profile + " with index / normal (target <= 0.3)", Median(indexed) / base,
         "x");
  if (!link_stats.empty()) {
    Report("store_bench", profile + " normal: bytes over the link", Median(normal_link), "B");
    Report("store_bench", profile + " store cold: bytes over the link", Median(cold_link), "B");
    Report("store_bench", profile + " store with index: bytes over the link", Median(indexed_link),
           "B");
  }
  return 0;
}
