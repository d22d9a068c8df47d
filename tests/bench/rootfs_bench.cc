// Issue 6's figures, in one run, on a two-layer gzip image built from this
// machine's own Debian files (or from directories given on the command line):
//  - time from `regfs mount` to the first `cat rootfs/etc/os-release` with no
//    index and an empty cache, as a ratio to `skopeo copy` + `umoci unpack` +
//    the same cat (target <= 0.5);
//  - the same with the layer indexes present and the chunk cache empty
//    (target <= 0.05), and the bytes fetched for it as a share of the image
//    (target <= 5%);
//  - `find rootfs | wc -l` and `du -s rootfs` as ratios to the same on the
//    umoci-unpacked tree (target <= 2);
//  - the daemon's memory per rootfs entry on an image with >= 100,000 entries.
//
//   rootfs_bench [LAYER0_PATHS LAYER1_PATHS]   (paths relative to /, comma-separated)
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/bench_util.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT

namespace {

std::string TarOf(const std::string& paths_csv) {
  std::vector<std::string> argv = {"tar", "-C", "/", "--ignore-failed-read", "--xattrs",
                                   "--format=pax", "-cf", "-"};
  std::stringstream ss(paths_csv);
  std::string p;
  while (std::getline(ss, p, ',')) argv.push_back(p);
  CommandResult r = RunCommand(argv, 600);
  return r.output;  // stdout and stderr share a pipe: keep stderr quiet
}

long RssKiB(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

nlohmann::json ReadStatusJson(const std::string& mnt) {
  std::string s;
  ReadWholeFile(mnt + "/.regfs/status.json", &s);
  auto j = nlohmann::json::parse(s, nullptr, false);
  return j.is_discarded() ? nlohmann::json::object() : j;
}

}  // namespace

int main(int argc, char** argv) {
  std::string l0 = argc > 2 ? argv[1] : "etc,usr/bin,usr/lib/os-release";
  std::string l1 = argc > 2 ? argv[2] : "usr/lib/python3";
  std::string why = FuseUnavailableReason();
  if (!why.empty()) {
    std::fprintf(stderr, "rootfs_bench needs FUSE: %s\n", why.c_str());
    return 1;
  }
  TestRegistry registry;
  if (Status s = registry.Start(); !s.ok()) {
    std::fprintf(stderr, "registry: %s\n", s.ToString().c_str());
    return 1;
  }
  TempDir tmp("regfs-rootfs-bench");
  const std::string regfs = RegfsBinary();

  // The image: two gzip layers of real files.
  ImageSpec spec;
  for (const std::string& paths : {l0, l1}) {
    LayerSpec ls;
    ls.compression = Compression::kGzip;
    ls.raw_tar = TarOf(paths);
    if (ls.raw_tar.size() < 1024 || ls.raw_tar.compare(257, 5, "ustar") != 0) {
      std::fprintf(stderr, "tar of %s failed\n", paths.c_str());
      return 1;
    }
    spec.layers.push_back(std::move(ls));
  }
  BuiltImage image = BuildImage(spec);
  ImagePusher pusher(registry);
  if (Status s = pusher.PushImage("bench/rootfs", "v1", image); !s.ok()) {
    std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
    return 1;
  }
  uint64_t image_bytes = 0;
  for (const auto& l : image.layers) image_bytes += l.descriptor.size;
  std::string ref = registry.Ref("bench/rootfs", "v1");
  std::printf("rootfs_bench: %zu layers, %.1f MB gzip (%.1f MB tar), registry %s\n",
              image.layers.size(), image_bytes / 1e6,
              (image.layers[0].tar.size() + image.layers[1].tar.size()) / 1e6,
              registry.HostPort().c_str());

  // Peer: skopeo copy + umoci unpack + cat.
  std::string layout = tmp.Sub("oci"), bundle = tmp.Sub("bundle");
  double peer = TimeIt([&] {
    RunCommand({"skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://" + ref,
                "oci:" + layout + ":v1"}, 900);
    RunCommand({"umoci", "unpack", "--image", layout + ":v1", bundle}, 900);
    RunCommand({"cat", bundle + "/rootfs/etc/os-release"});
  });

  // regfs, cold: no index, empty cache.
  std::string cache = tmp.Sub("cache"), mnt = tmp.Sub("mnt");
  mkdir(mnt.c_str(), 0755);
  std::string first_cat;
  auto mount = [&] {
    CommandResult m = RunCommand({regfs, "mount", "--tls-verify=false", "--cache-dir", cache,
                                  ref, mnt});
    if (m.exit_code != 0) std::fprintf(stderr, "mount: %s\n", m.output.c_str());
    return m.exit_code == 0;
  };
  bool ok = true;
  double cold = TimeIt([&] {
    ok = mount();
    if (ok) first_cat = RunCommand({"cat", mnt + "/rootfs/etc/os-release"}).output;
  });
  if (!ok) return 1;
  if (first_cat.find("NAME=") == std::string::npos) {
    std::fprintf(stderr, "cat rootfs/etc/os-release gave: %s\n", first_cat.c_str());
    return 1;
  }
  // find / du, metadata from memory (indexes are in), vs the unpacked tree;
  // timed once the background digest check of the freshly cached layers is
  // over, since it hashes them on the same CPUs (up to 0.5 s here).
  double verify_wait = WaitForLayersVerified(mnt, static_cast<int>(image.layers.size()));
  if (verify_wait < 0) {
    std::fprintf(stderr, "the layers were not verified within 30 s\n");
    return 1;
  }
  auto find_wc = [](const std::string& dir) {
    return RunShell("find '" + dir + "' | wc -l").output;
  };
  std::string n_regfs, n_umoci;
  double find_regfs = TimeIt([&] { n_regfs = find_wc(mnt + "/rootfs"); });
  double find_umoci = TimeIt([&] { n_umoci = find_wc(bundle + "/rootfs"); });
  std::string du_regfs, du_umoci;
  double dut_regfs =
      TimeIt([&] { du_regfs = RunShell("du -s '" + mnt + "/rootfs' | cut -f1").output; });
  double dut_umoci =
      TimeIt([&] { du_umoci = RunShell("du -s '" + bundle + "/rootfs' | cut -f1").output; });
  RunCommand({regfs, "umount", mnt});

  // Index present, chunk cache empty.
  CommandResult pr = RunCommand({regfs, "cache", "prune", "--chunks-only", "--max-size", "0", "--cache-dir", cache});
  if (pr.exit_code != 0) std::fprintf(stderr, "prune: %s\n", pr.output.c_str());
  double warm_index = TimeIt([&] {
    ok = mount();
    if (ok) first_cat = RunCommand({"cat", mnt + "/rootfs/etc/os-release"}).output;
  });
  if (!ok) return 1;
  nlohmann::json st = ReadStatusJson(mnt);
  uint64_t fetched = 0;
  for (const auto& l : st["layers"]) fetched += l.value("fetchedBytes", 0ull);
  RunCommand({regfs, "umount", mnt});

  Report("rootfs", "skopeo copy + umoci unpack + cat", peer, "s");
  Report("rootfs", "regfs mount + cat, no index, empty cache", cold, "s");
  Report("rootfs", "ratio cold / peer", cold / peer, "x", "target <= 0.5");
  Report("rootfs", "regfs mount + cat, index present, chunks empty", warm_index, "s");
  Report("rootfs", "ratio index-present / peer", warm_index / peer, "x", "target <= 0.05");
  Report("rootfs", "bytes fetched for it", static_cast<double>(fetched), "B");
  Report("rootfs", "share of the image fetched", 100.0 * fetched / image_bytes, "%",
         "target <= 5%");
  std::printf("  find | wc -l: regfs %s  umoci %s", n_regfs.c_str(), n_umoci.c_str());
  std::printf("  du -s (KiB):  regfs %s  umoci %s", du_regfs.c_str(), du_umoci.c_str());
  Report("rootfs", "background digest check after mount + cat", verify_wait * 1000, "ms",
         "waited for before find and du");
  Report("rootfs", "find rootfs | wc -l, regfs", find_regfs, "s");
  Report("rootfs", "find rootfs | wc -l, umoci tree", find_umoci, "s");
  Report("rootfs", "ratio find regfs / umoci", find_regfs / find_umoci, "x", "target <= 2");
  Report("rootfs", "du -s rootfs, regfs", dut_regfs, "s");
  Report("rootfs", "du -s rootfs, umoci tree", dut_umoci, "s");
  Report("rootfs", "ratio du regfs / umoci", dut_regfs / dut_umoci, "x", "target <= 2");

  // Memory: a 120,000-entry image against a 10-entry one.
  uint64_t tree_bytes = 0;
  auto rss_after_rootfs = [&](const std::string& repo, const BuiltImage& img, uint64_t* entries) {
    if (Status ps = pusher.PushImage(repo, "v1", img); !ps.ok()) {
      std::fprintf(stderr, "push %s: %s\n", repo.c_str(), ps.ToString().c_str());
      return -1L;
    }
    std::string c = tmp.Sub("cache-" + repo.substr(6)), m = tmp.Sub("mnt-" + repo.substr(6));
    mkdir(m.c_str(), 0755);
    RunCommand({regfs, "mount", "--tls-verify=false", "--cache-dir", c, registry.Ref(repo, "v1"),
                m});
    RunCommand({"ls", m + "/rootfs"});  // waits for the merge
    nlohmann::json s = ReadStatusJson(m);
    *entries = s["rootfs"].value("entries", 0ull);
    tree_bytes = s.value("treeBytes", 0ull);
    long rss = RssKiB(s.value("pid", 0));
    RunCommand({regfs, "umount", m});
    return rss;
  };
  std::vector<TarEntry> many;
  for (int d = 0; d < 400; ++d) {
    std::string dir = "d" + std::to_string(d);
    many.push_back(TarEntry::Dir(dir));
    for (int f = 0; f < 300; ++f) {
      many.push_back(TarEntry::File(dir + "/file-" + std::to_string(f), "x"));
    }
  }
  ImageSpec big_spec, small_spec;
  big_spec.layers.push_back({many, Compression::kGzip});
  small_spec.layers.push_back({SampleEntries("small"), Compression::kGzip});
  uint64_t big_entries = 0, small_entries = 0;
  long rss_big = rss_after_rootfs("bench/many", BuildImage(big_spec), &big_entries);
  uint64_t big_tree_bytes = tree_bytes;
  long rss_small = rss_after_rootfs("bench/few", BuildImage(small_spec), &small_entries);
  Report("rootfs", "entries in the large image's rootfs", static_cast<double>(big_entries), "");
  Report("rootfs", "daemon RSS, large image (layers/ + rootfs/)", rss_big / 1024.0, "MiB");
  Report("rootfs", "daemon RSS, 10-entry image", rss_small / 1024.0, "MiB");
  Report("rootfs", "memory per entry (RSS difference / entries)",
         (rss_big - rss_small) * 1024.0 / static_cast<double>(big_entries), "B",
         "RSS-based; covers layers/0 and rootfs/ together");
  Report("rootfs", "inode table bytes per rootfs entry (names included)",
         static_cast<double>(big_tree_bytes) / static_cast<double>(big_entries), "B",
         "target < 200 + names; layers/0 and rootfs/ together");
  return 0;
}
