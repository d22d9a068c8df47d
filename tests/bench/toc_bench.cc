// Issue 16's figures: a cold, never-indexed eStargz image (converted by
// `ctr-remote image convert --estargz --oci` from a gzip image; see
// tests/support/toc_images.h), first read and first container start:
//   - `regfs mount` + `cat rootfs/etc/os-release` (empty cache) against
//     `skopeo copy` + `umoci unpack` + cat, and against `podman pull`, of the
//     same image in the same run (target: <= 0.1x the full pull, and <= 5% of
//     the image's bytes fetched);
//   - `podman pull` + `podman run ... cat /etc/os-release` through
//     `regfs store` (empty cache) against a normal pull + run (target <= 0.2x).
// Bytes fetched: from the registry's access log (the blob bytes it sent),
// or with --link-stats from the WAN proxy's counters.
//
//   toc_bench [bulk_mib=256] [runs=3]   (runs=0: build, convert and push only)
//
// Options as store_bench's (for tests/bench/wan/wan_bench.sh):
//   --registry URL      push to this running registry instead of starting one
//                       (bytes then come from --link-stats only)
//   --pull HOST:PORT    regfs, skopeo and podman pull from here (the proxy)
//   --profile NAME      the name printed before each figure
//   --link-stats FILE   the proxy's counters ("time down up conns")
//   --work-dir DIR      where the temp dir goes (keep it short, see store_bench)
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/bench_util.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"
#include "tests/support/toc_images.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT

namespace {

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

struct Case {
  std::string name;
  std::vector<double> seconds, bytes;
};

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
                   "usage: toc_bench [bulk_mib=256] [runs=3] [--registry URL] [--pull HOST:PORT] "
                   "[--profile NAME] [--link-stats FILE] [--work-dir DIR]\n");
      return 2;
    }
  }
  const uint64_t bulk_mib = pos.size() > 0 ? std::strtoull(pos[0].c_str(), nullptr, 10) : 256;
  const int runs = pos.size() > 1 ? std::atoi(pos[1].c_str()) : 3;
  if (profile.empty()) profile = "loopback";
  std::string why = FuseUnavailableReason();
  if (!why.empty()) {
    std::fprintf(stderr, "toc_bench needs FUSE: %s\n", why.c_str());
    return 1;
  }
  if (std::string missing = TocToolsMissing(); !missing.empty() || !HavePodman()) {
    std::fprintf(stderr, "toc_bench needs %s podman, runc and umoci\n", missing.c_str());
    return 1;
  }
  // The image is converted in this registry; --registry only moves the
  // benchmark's own pulls (the converted image is copied there).
  TestRegistry registry;
  if (Status s = registry.Start(); !s.ok()) {
    std::fprintf(stderr, "registry: %s\n", s.ToString().c_str());
    return 1;
  }
  BuiltImage original = BuildImage(TocBaseImageSpec(bulk_mib));
  {
    ImagePusher pusher(registry);
    if (Status s = pusher.PushImage("bench/toc", "gzip", original); !s.ok()) {
      std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  original = BuiltImage();  // free the in-memory copy
  if (!work_dir.empty()) setenv("TMPDIR", work_dir.c_str(), 1);
  TempDir tmp("rtb");
  unsetenv("TMPDIR");
  Result<TocImage> converted = [&] {
    PrivateContainerd ctd;
    Status s = ctd.Start();
    if (!s.ok()) return Result<TocImage>(s);
    return ConvertImage(TocTool::kEstargz, registry, &ctd, tmp.path(), "bench/toc", "gzip",
                        "bench/toc", "esgz");
  }();
  if (!converted.ok()) {
    std::fprintf(stderr, "convert: %s\n", converted.status().ToString().c_str());
    return 1;
  }
  const TocImage& image = *converted;
  const bool own_registry = registry_url.empty();
  if (!own_registry) {
    // The converted image, copied as it is (blobs and manifest) to the
    // registry the benchmark pulls from.
    ImagePusher there(registry_url);
    for (const TocLayer& l : image.layers) {
      if (Status s = there.PushBlob("bench/toc", l.blob); !s.ok()) {
        std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    Status s = there.PushBlob("bench/toc", image.config);
    if (s.ok()) {
      s = there.PushManifest("bench/toc", "esgz", image.manifest,
                             "application/vnd.oci.image.manifest.v1+json");
    }
    if (!s.ok()) {
      std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (pull.empty()) {
    pull = own_registry ? registry.HostPort() : registry_url.substr(registry_url.find("://") + 3);
  }
  const std::string ref = pull + "/bench/toc:esgz";
  const uint64_t image_bytes = image.BlobBytes();
  std::printf(
      "toc_bench: %llu MiB of data in a %zu-layer eStargz image (%.1f MiB compressed), %s, "
      "median of %d runs\n",
      (unsigned long long)bulk_mib, image.layers.size(), image_bytes / 1048576.0, profile.c_str(),
      runs);
  if (runs < 1) return 0;

  // Bytes sent towards the clients so far (the access log, or the link).
  auto bytes_now = [&]() -> uint64_t {
    if (!link_stats.empty()) return LinkDownBytes(link_stats);
    return own_registry ? BlobBytesServed(registry) : 0;
  };
  const std::string want = TocBaseOsRelease();
  Case mount{"regfs mount + cat"}, skopeo{"skopeo copy + umoci unpack + cat"},
      podman_pull{"podman pull"}, normal{"normal pull + run"}, store{"store cold pull + run"};
  // Times `step` (false = failed) and counts the bytes it moved into `c`.
  auto measure = [&](Case& c, const std::function<bool()>& step) {
    uint64_t b0 = bytes_now();
    bool ok = true;
    double t = TimeIt([&] { ok = step(); });
    if (!ok) {
      std::fprintf(stderr, "%s failed\n", c.name.c_str());
      return false;
    }
    c.seconds.push_back(t);
    c.bytes.push_back(static_cast<double>(bytes_now() - b0));
    return true;
  };
  auto check = [&](const std::string& what, const CommandResult& r, bool want_os = false) {
    bool ok = r.exit_code == 0 && (!want_os || r.output == want);
    if (!ok) std::fprintf(stderr, "%s: %s\n", what.c_str(), r.output.c_str());
    return ok;
  };
  bool store_failed = false;
  for (int r = 0; r < runs; ++r) {
    const std::string n = std::to_string(r);
    // regfs mount, empty cache, then the first read.
    const std::string mnt = tmp.Sub("m" + n);
    mkdir(mnt.c_str(), 0755);
    bool ok = measure(mount, [&] {
      CommandResult m = RunCommand({RegfsBinary(), "mount", "--tls-verify=false", "--cache-dir",
                                    tmp.Sub("mc" + n), ref, mnt});
      if (!check("regfs mount", m)) return false;
      return ReadHostFile(mnt + "/rootfs/etc/os-release") == want;
    });
    RunCommand({RegfsBinary(), "umount", mnt});
    if (!ok) return 1;
    // skopeo + umoci: the whole image, then the file.
    const std::string layout = tmp.Sub("oci" + n), bundle = tmp.Sub("b" + n);
    ok = measure(skopeo, [&] {
      return check("skopeo", RunCommand({"skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                         "docker://" + ref, "oci:" + layout + ":v1"},
                                        900)) &&
             check("umoci",
                   RunCommand({"umoci", "unpack", "--image", layout + ":v1", bundle}, 900)) &&
             ReadHostFile(bundle + "/rootfs/etc/os-release") == want;
    });
    RunShell("rm -rf " + ShellQuote(layout) + " " + ShellQuote(bundle));
    if (!ok) return 1;
    // A normal podman pull (the mount's peer), then run: pull + run is the
    // store's peer.
    {
      PodmanEnv env(tmp.Sub("n" + n), "");
      Case run_only{"podman run"};
      ok = measure(podman_pull,
                   [&] {
                     return check("podman pull", env.Run("pull -q --tls-verify=false " + ref, 900));
                   }) &&
           measure(run_only, [&] {
             return check("podman run",
                          env.Run("run --rm --runtime /usr/sbin/runc --network none " + ref +
                                      " cat /etc/os-release",
                                  900),
                          true);
           });
      if (!ok) return 1;
      normal.seconds.push_back(podman_pull.seconds.back() + run_only.seconds.back());
      normal.bytes.push_back(podman_pull.bytes.back() + run_only.bytes.back());
    }
    // podman through regfs store, empty cache.
    {
      const std::string smnt = tmp.Sub("s" + n);
      mkdir(smnt.c_str(), 0755);
      CommandResult s = RunCommand(
          {RegfsBinary(), "store", "--tls-verify=false", "--cache-dir", tmp.Sub("sc" + n), smnt});
      if (!check("regfs store", s)) return 1;
      {
        PodmanEnv env(tmp.Sub("l" + n), smnt);
        ok = measure(store, [&] {
          return check("podman pull (store)", env.Run("pull -q --tls-verify=false " + ref, 900)) &&
                 check("podman run (store)",
                       env.Run("run --rm --runtime /usr/sbin/runc --network none " + ref +
                                   " cat /etc/os-release",
                               900),
                       true);
        });
      }
      RunCommand({RegfsBinary(), "umount", smnt});
      // The other figures still count: reported, and the exit status says.
      if (!ok) store_failed = true;
    }
    std::printf(
        "  run %d: mount+cat %.3f s (%.2f MiB), skopeo+umoci %.3f s (%.2f MiB), podman pull "
        "%.3f s (%.2f MiB); pull+run: normal %.3f s (%.2f MiB)",
        r, mount.seconds.back(), mount.bytes.back() / 1048576, skopeo.seconds.back(),
        skopeo.bytes.back() / 1048576, podman_pull.seconds.back(),
        podman_pull.bytes.back() / 1048576, normal.seconds.back(), normal.bytes.back() / 1048576);
    if (store.seconds.size() == static_cast<size_t>(r) + 1) {
      std::printf(", store cold %.3f s (%.2f MiB)", store.seconds.back(),
                  store.bytes.back() / 1048576);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  const std::string b = "toc_bench";
  std::vector<Case*> cases = {&mount, &skopeo, &podman_pull, &normal};
  if (!store_failed) cases.push_back(&store);
  for (Case* c : cases) Report(b, profile + " " + c->name, Median(c->seconds), "s");
  Report(b, profile + " mount+cat / skopeo+umoci", Median(mount.seconds) / Median(skopeo.seconds),
         "x");
  Report(b, profile + " mount+cat / podman pull (target <= 0.1)",
         Median(mount.seconds) / Median(podman_pull.seconds), "x");
  if (!store_failed) {
    Report(b, profile + " store cold / normal pull+run (target <= 0.2)",
           Median(store.seconds) / Median(normal.seconds), "x");
  }
  if (own_registry || !link_stats.empty()) {
    for (Case* c : cases) {
      Report(b, profile + " " + c->name + ": bytes fetched", Median(c->bytes), "B");
    }
    Report(b, profile + " mount+cat: share of the image's bytes (target <= 5%)",
           100.0 * Median(mount.bytes) / static_cast<double>(image_bytes), "%");
    if (!store_failed) {
      Report(b, profile + " store cold pull+run: share of the image's bytes",
             100.0 * Median(store.bytes) / static_cast<double>(image_bytes), "%");
    }
  }
  if (store_failed) std::fprintf(stderr, "toc_bench: the store's pull + run failed\n");
  return store_failed ? 1 : 0;
}
