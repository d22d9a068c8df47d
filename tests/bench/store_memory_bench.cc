// Issue 14's memory figure: the resident memory of a `regfs store` daemon
// after resolving N images (default 50) that share one base layer, each with
// a small layer of its own, and looking into every layer (as podman does
// before a container starts). A layer shared by many images is one Layer,
// one tree and one reader in the store, so the daemon should grow by the
// small layers only; the figures printed are RSS after the first image and
// after all of them, the growth per image, and the tree's node count against
// what a tree per image would hold. The store runs with --idle-timeout
// (default 2 s here): once every image is looked up, the bench waits for the
// store to release them all and prints RSS, tree nodes, live layer handles
// and registry clients again.
//
//   store_memory_bench [images=50] [base_files=20000] [idle_timeout_s=2]
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "reader/base/base64.h"
#include "tests/support/bench_util.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_registry.h"

using namespace regfs;           // NOLINT
using namespace regfs::testing;  // NOLINT
using TE = regfs::testing::TarEntry;

namespace {

double RssMiB(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return -1;
}

nlohmann::json StoreStatus(const std::string& mnt) {
  std::string s;
  if (!ReadWholeFile(mnt + "/.regfs/status.json", &s)) return {};
  return nlohmann::json::parse(s, nullptr, false);
}

}  // namespace

int main(int argc, char** argv) {
  int images = argc > 1 ? std::atoi(argv[1]) : 50;
  int base_files = argc > 2 ? std::atoi(argv[2]) : 20000;
  std::string idle = argc > 3 ? argv[3] : "2";
  if (images < 1 || base_files < 1 || std::atof(idle.c_str()) <= 0) {
    std::fprintf(stderr,
                 "usage: store_memory_bench [images=50] [base_files=20000] [idle_timeout_s=2]\n");
    return 2;
  }
  std::string why = FuseUnavailableReason();
  if (!why.empty()) {
    std::fprintf(stderr, "store_memory_bench: FUSE unavailable: %s\n", why.c_str());
    return 1;
  }
  TestRegistry registry;
  if (regfs::Status s = registry.Start(); !s.ok()) {
    std::fprintf(stderr, "registry: %s\n", s.ToString().c_str());
    return 1;
  }
  ImagePusher pusher(registry);
  std::vector<TE> base;
  for (int d = 0; d * 100 < base_files; ++d) {
    std::string dir = "usr/lib/d" + std::to_string(d);
    base.push_back(TE::Dir(dir));
    for (int i = d * 100; i < std::min(base_files, (d + 1) * 100); ++i) {
      base.push_back(TE::File(dir + "/file-with-a-longish-name-" + std::to_string(i), "x"));
    }
  }
  std::vector<std::string> refs;
  std::vector<std::vector<std::string>> digests;  // each image's layers
  for (int i = 0; i < images; ++i) {
    ImageSpec spec;
    spec.layers.push_back({base, Compression::kGzip});
    std::vector<TE> own;
    for (int k = 0; k < 10; ++k) {
      own.push_back(TE::File("app/f" + std::to_string(k), "image " + std::to_string(i)));
    }
    spec.layers.push_back({own, Compression::kGzip});
    BuiltImage img = BuildImage(spec);
    std::string repo = "bench/img" + std::to_string(i);
    if (regfs::Status s = pusher.PushImage(repo, "v1", img); !s.ok()) {
      std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
      return 1;
    }
    refs.push_back(registry.Ref(repo, "v1"));
    digests.emplace_back();
    for (const BuiltLayer& l : img.layers) digests.back().push_back(l.descriptor.digest);
  }

  TempDir dir("regfs-membench");
  std::string mnt = dir.Sub("store");
  mkdir(mnt.c_str(), 0755);
  CommandResult r = RunCommand({RegfsBinary(), "store", "--tls-verify=false", "--cache-dir",
                                dir.Sub("cache"), "--idle-timeout", idle, mnt});
  if (r.exit_code != 0) {
    std::fprintf(stderr, "regfs store: %s\n", r.output.c_str());
    return 1;
  }
  int pid = StoreStatus(mnt).value("pid", 0);
  double rss_empty = RssMiB(pid), rss_first = 0;
  bool ok = true;
  for (int i = 0; i < images && ok; ++i) {
    std::string image_dir = mnt + "/" + Base64Encode(refs[i]);
    // Every layer directory the image has, and its diff/ filled (podman
    // stats diff, info and blob; the container then looks into diff/).
    DIR* d = opendir(image_dir.c_str());
    if (!d) {
      std::fprintf(stderr, "cannot open %s\n", image_dir.c_str());
      ok = false;
      break;
    }
    closedir(d);
    for (const std::string& digest : digests[i]) {
      std::string diff = image_dir + "/" + digest + "/diff";
      DIR* dd = opendir(diff.c_str());
      if (!dd || !readdir(dd)) {
        std::fprintf(stderr, "cannot list %s\n", diff.c_str());
        ok = false;
      }
      if (dd) closedir(dd);
    }
    if (i == 0) rss_first = RssMiB(pid);
  }
  nlohmann::json st = StoreStatus(mnt);
  double rss_all = RssMiB(pid);
  // Nothing holds the images now: the store releases them once idle
  // (bounded wait: 300 s). A store without idle release never gets there.
  nlohmann::json released;
  bool all_released = false;
  for (int i = 0; ok && i < 3000 && !all_released; ++i) {
    released = StoreStatus(mnt);
    // (The handles and clients go a moment after the layers leave the
    // tree: wait for those too.)
    all_released = released.value("liveLayers", -1) == 0 &&
                   released.value("liveLayerHandles", -1) == 0 &&
                   released.value("registryClients", -1) == 0;
    if (!all_released) usleep(100 * 1000);
  }
  double rss_released = RssMiB(pid);
  RunCommand({RegfsBinary(), "umount", mnt});
  if (!ok) return 1;
  uint64_t nodes = st.value("treeNodes", 0ull);
  uint64_t per_image_nodes = static_cast<uint64_t>(base_files) + base_files / 100 + 14;
  Report("store_memory_bench", "daemon RSS, no image", rss_empty, "MiB");
  Report("store_memory_bench", "daemon RSS after 1 image", rss_first, "MiB");
  Report("store_memory_bench",
         "daemon RSS after " + std::to_string(images) + " images sharing the base layer", rss_all,
         "MiB");
  Report("store_memory_bench", "RSS growth per further image",
         images > 1 ? (rss_all - rss_first) / (images - 1) : 0, "MiB");
  Report("store_memory_bench", "layer directories (store's status.json)",
         static_cast<double>(st["layers"].size()), "");
  if (st.contains("liveLayerHandles")) {
    Report("store_memory_bench", "live layer handles", st.value("liveLayerHandles", 0), "");
  }
  Report("store_memory_bench", "tree nodes", static_cast<double>(nodes), "",
         "a tree per image would hold about " + std::to_string(per_image_nodes * images));
  if (st.contains("treeBytes")) {
    Report("store_memory_bench", "tree bytes", st.value("treeBytes", 0.0) / (1 << 20), "MiB");
  }
  if (!all_released) {
    std::fprintf(stderr, "store_memory_bench: the images were not released: %s\n",
                 released.dump().c_str());
    return 1;
  }
  Report("store_memory_bench", "daemon RSS after the images went idle and were released",
         rss_released, "MiB", "--idle-timeout " + idle);
  Report("store_memory_bench", "tree nodes after release",
         static_cast<double>(released.value("treeNodes", 0ull)), "");
  Report("store_memory_bench", "live layer handles after release",
         released.value("liveLayerHandles", 0), "");
  Report("store_memory_bench", "registry clients after release",
         released.value("registryClients", 0), "", "before: " +
         std::to_string(st.value("registryClients", 0)));
  return 0;
}
