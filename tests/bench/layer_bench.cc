// Layer format benchmark on a realistic gzip layer built at run time from this
// machine's /usr (binaries, headers, libraries) plus one 100 MB file made of
// shared libraries. Prints:
//  - index build throughput vs `zcat | tar -t` of the same blob (ratio)
//  - index size per entry, per GB of blob and per GB of tar
//  - p50 / p99 latency of random 4 KiB reads inside large files (zlib, ISA-L)
//  - sequential read of the 100 MB file vs `tar -xzOf` of it
//  - raw inflate speed: zlib vs ISA-L igzip vs libdeflate (whole buffer)
// Usage: layer_bench [workdir]   (default /tmp/regfs-layer-bench; kept for reuse)
#include <dlfcn.h>
#if __has_include(<isa-l/igzip_lib.h>)
#include <isa-l/igzip_lib.h>
#define LAYER_BENCH_ISAL 1
#endif
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <fcntl.h>
#include <unistd.h>
#include <sstream>
#include <string>
#include <vector>

#include "reader/base/log.h"
#include "reader/layer/index_builder.h"
#include "reader/layer/layer_reader.h"
#include "tests/layer/layer_test_util.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double TimeShell(const std::string& cmd) {
  auto t0 = Clock::now();
  int rc = std::system(cmd.c_str());
  auto t1 = Clock::now();
  if (rc != 0) std::fprintf(stderr, "command failed (%d): %s\n", rc, cmd.c_str());
  return Seconds(t0, t1);
}

std::string ReadAll(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void MakeBigFile(const fs::path& p, size_t size) {
  std::ofstream out(p, std::ios::binary);
  size_t done = 0;
  std::vector<fs::path> libs;
  for (auto& e : fs::directory_iterator("/usr/lib/x86_64-linux-gnu")) {
    if (e.is_regular_file() && e.path().string().find(".so") != std::string::npos) {
      libs.push_back(e.path());
    }
  }
  std::sort(libs.begin(), libs.end());
  for (size_t i = 0; done < size && !libs.empty(); i = (i + 1) % libs.size()) {
    std::string d = ReadAll(libs[i]);
    d.resize(std::min(d.size(), size - done));
    out.write(d.data(), static_cast<std::streamsize>(d.size()));
    done += d.size();
  }
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  regfs::SetLogLevel(regfs::LogLevel::kError);
  const fs::path work = argc > 1 ? argv[1] : "/tmp/regfs-layer-bench";
  fs::create_directories(work / "extra");
  const fs::path tar = work / "layer.tar", gz = work / "layer.tar.gz";
  const std::string big_name = "extra/big.bin";
  if (!fs::exists(gz)) {
    std::printf("building the layer from /usr (once; kept in %s)...\n", work.c_str());
    MakeBigFile(work / big_name, 100 << 20);
    TimeShell("tar -cf " + tar.string() +
              " -C / usr/bin usr/include usr/lib/gcc usr/lib/python3.11 -C " + work.string() +
              " extra 2>/dev/null");
    TimeShell("gzip -n -6 -c " + tar.string() + " > " + gz.string());
  }
  std::string blob = ReadAll(gz);
  const uint64_t tar_size = fs::file_size(tar);
  std::printf("layer: %.1f MB gzip (%.1f MB tar)%s\n", blob.size() / 1e6, tar_size / 1e6,
              blob.size() < 200e6 ? "  WARNING: below 200 MB" : "");

  regfs::testing::MemBlobSource src(std::move(blob));
  const regfs::BlobDescriptor desc = src.Descriptor();

  // 1. Index build vs zcat | tar -t (best of 2 each; the blob is in memory /
  // page cache for both).
  double zcat_t = 1e9, build_t = 1e9;
  std::shared_ptr<regfs::LayerIndex> index;
  for (int i = 0; i < 2; ++i) {
    zcat_t = std::min(zcat_t, TimeShell("zcat " + gz.string() + " | tar -t > /dev/null"));
    auto t0 = Clock::now();
    auto built = regfs::BuildLayerIndex(&src, desc, regfs::LayerCompression::kGzip);
    auto t1 = Clock::now();
    if (!built.ok()) {
      std::fprintf(stderr, "index build failed: %s\n", built.status().ToString().c_str());
      return 1;
    }
    build_t = std::min(build_t, Seconds(t0, t1));
    index = std::make_shared<regfs::LayerIndex>(std::move(built).value());
  }
  std::printf("index build: %.2f s (%.0f MB/s of tar, digest verified)  zcat|tar -t: %.2f s  "
              "ratio (throughput vs zcat|tar -t): %.2f  [target >= 0.8]\n",
              build_t, tar_size / 1e6 / build_t, zcat_t, zcat_t / build_t);

  // 2. Index size.
  const std::string ser = index->Serialize();
  std::printf("index: %zu entries, %zu checkpoints, %zu bytes serialised = %.1f B/entry, "
              "%.2f MB per GB of blob, %.2f MB per GB of tar (checkpoint windows %.2f MB/GB tar)\n",
              index->entries.size(), index->checkpoints.size(), ser.size(),
              static_cast<double>(ser.size()) / static_cast<double>(index->entries.size()),
              ser.size() / 1e6 / (desc.size / 1e9), ser.size() / 1e6 / (tar_size / 1e9),
              [&] {
                double w = 0;
                for (auto& c : index->checkpoints) w += static_cast<double>(c.window_deflate.size());
                return w / 1e6 / (tar_size / 1e9);
              }());

  // 3. Random 4 KiB reads inside large files.
  std::vector<const regfs::TarEntry*> large;
  const regfs::TarEntry* big = nullptr;
  for (const auto& e : index->entries) {
    if (e.type == regfs::EntryType::kRegular && e.size >= (8 << 20)) large.push_back(&e);
    if (e.path == big_name) big = &e;
  }
  for (regfs::InflateEngine engine : {regfs::InflateEngine::kZlib, regfs::InflateEngine::kIsal}) {
    regfs::LayerReaderOptions ro;
    ro.engine = engine;
    regfs::LayerReader reader(&src, desc, index, ro);
    std::mt19937_64 rng(1);
    std::vector<double> lat;
    std::vector<uint8_t> buf(4096);
    for (int i = 0; i < 1000 && !large.empty(); ++i) {
      const regfs::TarEntry* e = large[rng() % large.size()];
      uint64_t off = rng() % (e->size - 4096);
      auto t0 = Clock::now();
      auto n = reader.Read(*e, off, buf);
      auto t1 = Clock::now();
      if (!n.ok()) {
        std::fprintf(stderr, "read failed: %s\n", n.status().ToString().c_str());
        return 1;
      }
      lat.push_back(Seconds(t0, t1) * 1e3);
    }
    std::printf("random 4 KiB reads in %zu files >= 8 MB (%s): p50 %.2f ms  p99 %.2f ms  (n=%zu)\n",
                large.size(), engine == regfs::InflateEngine::kZlib ? "zlib" : "isa-l",
                Percentile(lat, 0.5), Percentile(lat, 0.99), lat.size());
  }

  // 3b. The same kind of reads through archivemount on a local copy of the
  // blob. libarchive has no random access into gzip, so each read may
  // decompress from the start: bounded to 20 reads or 120 s.
  {
    const fs::path mnt = work / "archivemount";
    fs::create_directories(mnt);
    double mount_t = TimeShell("archivemount -o readonly " + gz.string() + " " + mnt.string());
    std::mt19937_64 rng(1);
    std::vector<double> lat;
    std::vector<char> buf(4096);
    auto deadline = Clock::now() + std::chrono::seconds(120);
    for (int i = 0; i < 20 && !large.empty() && Clock::now() < deadline; ++i) {
      const regfs::TarEntry* e = large[rng() % large.size()];
      uint64_t off = rng() % (e->size - 4096);
      int fd = open((mnt / e->path).c_str(), O_RDONLY);
      if (fd < 0) break;
      auto t0 = Clock::now();
      ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      auto t1 = Clock::now();
      close(fd);
      if (n != 4096) break;
      lat.push_back(Seconds(t0, t1) * 1e3);
    }
    TimeShell("fusermount3 -u " + mnt.string());
    if (lat.empty()) {
      std::printf("archivemount: no reads completed (is archivemount installed?)\n");
    } else {
      std::printf("archivemount (local copy; mount took %.1f s): random 4 KiB reads p50 %.2f ms  "
                  "p99 %.2f ms  (n=%zu)\n",
                  mount_t, Percentile(lat, 0.5), Percentile(lat, 0.99), lat.size());
    }
  }

  // 4. Sequential read of the 100 MB file vs tar -xzO.
  if (big != nullptr) {
    for (regfs::InflateEngine engine : {regfs::InflateEngine::kZlib, regfs::InflateEngine::kIsal}) {
      regfs::LayerReaderOptions ro;
      ro.engine = engine;
      regfs::LayerReader reader(&src, desc, index, ro);
      std::vector<uint8_t> buf(128 << 10);
      auto t0 = Clock::now();
      for (uint64_t off = 0; off < big->size; off += buf.size()) {
        auto n = reader.Read(*big, off, buf);
        if (!n.ok()) return 1;
      }
      double t = Seconds(t0, Clock::now());
      double tx = TimeShell("tar -xzOf " + gz.string() + " " + big_name + " > /dev/null");
      std::printf("sequential read of %s (%.0f MB, 128 KiB reads, %s): %.2f s  tar -xzO: %.2f s  "
                  "ratio (speed vs tar -xO): %.2f  [decoders created %llu, reused %llu]\n",
                  big_name.c_str(), big->size / 1e6,
                  engine == regfs::InflateEngine::kZlib ? "zlib" : "isa-l", t, tx, tx / t,
                  static_cast<unsigned long long>(reader.stats().decoders_created),
                  static_cast<unsigned long long>(reader.stats().decoders_reused));
    }
  }

  // 5. Raw inflate of the whole blob.
  const std::string& b = src.data();
  std::vector<uint8_t> out(tar_size + 1024);
  {
    auto t0 = Clock::now();
    z_stream s{};
    inflateInit2(&s, 31);
    s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(b.data()));
    s.avail_in = static_cast<uInt>(b.size());
    s.next_out = out.data();
    s.avail_out = static_cast<uInt>(out.size());
    int ret = inflate(&s, Z_FINISH);
    inflateEnd(&s);
    std::printf("inflate zlib:       %.0f MB/s (ret %d)\n",
                tar_size / 1e6 / Seconds(t0, Clock::now()), ret);
  }
#ifdef LAYER_BENCH_ISAL
  {
    auto st = std::make_unique<inflate_state>();
    auto t0 = Clock::now();
    isal_inflate_init(st.get());
    st->crc_flag = ISAL_GZIP;
    st->next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(b.data()));
    st->avail_in = static_cast<uint32_t>(b.size());
    st->next_out = out.data();
    st->avail_out = static_cast<uint32_t>(out.size());
    int ret = isal_inflate(st.get());
    std::printf("inflate isa-l:      %.0f MB/s (ret %d, out %u)\n",
                tar_size / 1e6 / Seconds(t0, Clock::now()), ret, st->total_out);
  }
#endif
  if (void* lib = dlopen("libdeflate.so.0", RTLD_NOW)) {
    using Alloc = void* (*)();
    using Gz = int (*)(void*, const void*, size_t, void*, size_t, size_t*);
    using Free = void (*)(void*);
    auto alloc = reinterpret_cast<Alloc>(dlsym(lib, "libdeflate_alloc_decompressor"));
    auto gzd = reinterpret_cast<Gz>(dlsym(lib, "libdeflate_gzip_decompress"));
    auto fr = reinterpret_cast<Free>(dlsym(lib, "libdeflate_free_decompressor"));
    if (alloc && gzd && fr) {
      void* d = alloc();
      size_t got = 0;
      auto t0 = Clock::now();
      int ret = gzd(d, b.data(), b.size(), out.data(), out.size(), &got);
      std::printf("inflate libdeflate: %.0f MB/s (ret %d; whole-buffer only: no dictionary, no "
                  "bit offset, so unusable for checkpoint restarts)\n",
                  tar_size / 1e6 / Seconds(t0, Clock::now()), ret);
      fr(d);
    }
    dlclose(lib);
  }
  return 0;
}
