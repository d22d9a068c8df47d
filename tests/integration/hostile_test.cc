// Hostile images end to end (issue 15): the real daemon (`regfs mount`)
// against the real test registry, fed layers built to hurt a parser, an index
// or a cache: a 20,000-component path, a 5,000-byte name, 1,000,000 entries in
// one directory, a 1 MiB global PAX record, a zstd bomb, a layer that does
// not match its DiffID, and a registry that serves bytes not matching the
// digest. The unit tests check each defence in isolation; these check that
// the daemon survives them, keeps serving the rest, keeps its memory and
// cache bounded, and reports EIO where the data is wrong.
//
// REGFS_BINARY_OVERRIDE (env) replaces the regfs binary under test, so the
// same suite can be run against an older build to see which cases it fails.
#include <errno.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "reader/base/digest.h"
#include "tests/integration/regfs_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"
#include "tests/support/test_registry.h"

namespace regfs {
namespace {

using namespace regfs::testing;  // NOLINT

constexpr char kOciManifest[] = "application/vnd.oci.image.manifest.v1+json";
constexpr char kOciConfig[] = "application/vnd.oci.image.config.v1+json";
constexpr char kTarGzip[] = "application/vnd.oci.image.layer.v1.tar+gzip";
constexpr char kTarZstd[] = "application/vnd.oci.image.layer.v1.tar+zstd";

std::string Binary() {
  const char* o = getenv("REGFS_BINARY_OVERRIDE");
  return o && *o ? o : REGFS_BINARY;
}

// One 512-byte ustar header with `name`, `typeflag` and `size`, checksum set.
std::string RawHeader(const std::string& name, char typeflag, uint64_t size) {
  std::string h(512, '\0');
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
  std::snprintf(h.data() + 100, 8, "%07o", 0644);
  std::snprintf(h.data() + 108, 8, "%07o", 0);
  std::snprintf(h.data() + 116, 8, "%07o", 0);
  std::snprintf(h.data() + 124, 12, "%011llo", static_cast<unsigned long long>(size));
  std::snprintf(h.data() + 136, 12, "%011o", 1700000000);
  h[156] = typeflag;
  std::memcpy(h.data() + 257, "ustar", 6);
  std::memcpy(h.data() + 263, "00", 2);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  std::snprintf(h.data() + 148, 8, "%06o", sum);
  h[155] = ' ';
  return h;
}

void PadTo512(std::string* s) { s->append((512 - s->size() % 512) % 512, '\0'); }

// A PAX record "<len> key=value\n" whose length counts itself.
std::string PaxRecord(const std::string& key, const std::string& value) {
  size_t body = 1 + key.size() + 1 + value.size() + 1;  // " key=value\n"
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) len = std::to_string(len).size() + body;
  return std::to_string(len) + " " + key + "=" + value + "\n";
}

class HostileTest : public RegfsFixture {
 protected:
  void SetUp() override {
    SetUpRegfs();
    if (IsSkipped() || HasFatalFailure()) return;
    pusher_ = std::make_unique<ImagePusher>(*registry_);
  }
  // From the mount table, not stat(): the mount of a daemon that died
  // answers ENOTCONN, which IsMountPoint() reads as "not a mount point".
  bool InMountTable() const {
    std::string mounts;
    ReadWholeFile("/proc/self/mounts", &mounts);
    return mounts.find(" " + mnt_ + " ") != std::string::npos;
  }
  void TearDown() override {
    if (set_up_ && InMountTable()) {
      RunCommand({Binary(), "umount", mnt_}, 60);
      if (InMountTable()) RunCommand({"fusermount3", "-u", "-z", mnt_}, 60);
      ADD_FAILURE() << "test left " << mnt_ << " mounted";
    }
    pusher_.reset();
    RegfsFixture::TearDown();
  }

  CommandResult MountRef(const std::string& ref) {
    return RunCommand({Binary(), "mount", "--tls-verify=false", "--cache-dir", cache_, "--log-file",
                       dir_->Sub("daemon.log"), ref, mnt_},
                      60);
  }
  void UmountNow() {
    CommandResult r = RunCommand({Binary(), "umount", mnt_}, 60);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_FALSE(InMountTable());
  }

  // Pushes a one-layer OCI image by hand, so the config's DiffID can be any
  // value (and a huge tar need not be kept for BuildImage). Returns the ref.
  std::string PushOneLayer(const std::string& repo, const std::string& blob,
                           const std::string& media_type, const std::string& diff_id) {
    nlohmann::json config = {{"architecture", "amd64"},
                             {"os", "linux"},
                             {"config", {{"Cmd", {"/bin/sh"}}}},
                             {"rootfs", {{"type", "layers"}, {"diff_ids", {diff_id}}}}};
    std::string config_bytes = config.dump();
    layer_digest_ = Sha256Digest(blob);
    nlohmann::json manifest = {
        {"schemaVersion", 2},
        {"mediaType", kOciManifest},
        {"config",
         {{"mediaType", kOciConfig},
          {"digest", Sha256Digest(config_bytes)},
          {"size", config_bytes.size()}}},
        {"layers",
         {{{"mediaType", media_type}, {"digest", layer_digest_}, {"size", blob.size()}}}}};
    EXPECT_OK(pusher_->PushBlob(repo, blob));
    EXPECT_OK(pusher_->PushBlob(repo, config_bytes));
    EXPECT_OK(pusher_->PushManifest(repo, "v1", manifest.dump(), kOciManifest));
    return registry_->Ref(repo, "v1");
  }

  // Builds and pushes a one-layer image from an exact tar; returns the ref.
  std::string PushTar(const std::string& repo, const std::string& tar,
                      Compression c = Compression::kGzip) {
    std::string blob = c == Compression::kZstd ? ZstdCompress(tar) : GzipCompress(tar, 1);
    return PushOneLayer(repo, blob, c == Compression::kZstd ? kTarZstd : kTarGzip,
                        Sha256Digest(tar));
  }

  // The daemon still runs and still answers .regfs/status.json.
  void ExpectAlive(pid_t pid) {
    ASSERT_GT(pid, 0);
    EXPECT_EQ(kill(pid, 0), 0) << "daemon " << pid << " is gone\n" << DaemonLog();
    std::string s;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &s)) << DaemonLog();
  }

  static long RssKiB(pid_t pid) {
    std::string s;
    if (!ReadWholeFile("/proc/" + std::to_string(pid) + "/status", &s)) return -1;
    size_t at = s.find("VmRSS:");
    if (at == std::string::npos) return -1;
    return std::strtol(s.c_str() + at + 6, nullptr, 10);
  }

  std::unique_ptr<ImagePusher> pusher_;
  std::string layer_digest_;
};

TEST_F(HostileTest, PathOfTwentyThousandComponentsIsSkipped) {
  std::string deep;
  for (int i = 0; i < 20000; ++i) deep += i ? "/a" : "a";
  std::vector<TarEntry> entries = {TarEntry::File("before", "b\n"), TarEntry::File(deep, "deep\n"),
                                   TarEntry::File("after", "a\n")};
  std::string ref = PushTar("hostile/deep", BuildTar(entries));
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  for (const char* dir : {"layers/0", "rootfs"}) {
    SCOPED_TRACE(dir);
    CommandResult ls = RunCommand({"ls", mnt_ + "/" + dir}, 60);
    EXPECT_EQ(ls.exit_code, 0) << ls.output;
    EXPECT_NE(ls.output.find("before"), std::string::npos) << ls.output;
    EXPECT_NE(ls.output.find("after"), std::string::npos) << ls.output;
    std::string got;
    EXPECT_TRUE(ReadWholeFile(mnt_ + "/" + dir + "/after", &got));
    EXPECT_EQ(got, "a\n");
  }
  // Skipped, and said so: not silently dropped, not fatal to the layer.
  nlohmann::json status = StatusJson();
  nlohmann::json skipped =
      status.contains("layers") && status["layers"].is_array() && !status["layers"].empty()
          ? status["layers"][0].value("/index/skippedEntries"_json_pointer, nlohmann::json())
          : nlohmann::json();
  EXPECT_TRUE(skipped.is_number() && skipped.get<int>() >= 1) << status.dump();
  ExpectAlive(pid);
  UmountNow();
}

TEST_F(HostileTest, FiveThousandByteNameLeavesSiblingsListable) {
  std::vector<TarEntry> entries = {TarEntry::Dir("d"), TarEntry::File("d/sib1", "1\n"),
                                   TarEntry::File("d/" + std::string(5000, 'n'), "long\n"),
                                   TarEntry::File("d/sib2", "2\n")};
  std::string ref = PushTar("hostile/longname", BuildTar(entries));
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  for (const char* dir : {"layers/0/d", "rootfs/d"}) {
    SCOPED_TRACE(dir);
    CommandResult ls = RunCommand({"ls", "-la", mnt_ + "/" + dir}, 60);
    EXPECT_EQ(ls.exit_code, 0) << ls.output;
    EXPECT_NE(ls.output.find("sib1"), std::string::npos) << ls.output;
    EXPECT_NE(ls.output.find("sib2"), std::string::npos) << ls.output;
    EXPECT_EQ(ls.output.find("Input/output error"), std::string::npos) << ls.output;
  }
  ExpectAlive(pid);
  UmountNow();
}

// Issue 15 item 4: 1,000,000 entries in one directory, in reverse order, were
// not indexed after 120 s of CPU (insertion into a sorted vector); that is
// this case's bound for each listing. (400,000 took 32 s with that code, well
// inside any bound, so the case needs the full million to tell.)
TEST_F(HostileTest, MillionEntriesInOneDirectoryInReverseOrder) {
  constexpr int kEntries = 1000000;
  constexpr int kBoundS = 120;
  std::string tar;
  tar.reserve(static_cast<size_t>(kEntries + 4) * 512);
  AppendTarEntry(&tar, TarEntry::Dir("d"));
  char name[32];
  for (int i = kEntries - 1; i >= 0; --i) {  // reverse order: worst case for sorted inserts
    std::snprintf(name, sizeof name, "d/f%07d", i);
    AppendTarEntry(&tar, TarEntry::File(name, ""));
  }
  FinishTar(&tar);
  std::string ref = PushTar("hostile/wide", tar);
  tar.clear();
  tar.shrink_to_fit();
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  for (const char* dir : {"layers/0/d", "rootfs/d"}) {
    SCOPED_TRACE(dir);
    auto start = std::chrono::steady_clock::now();
    CommandResult ls = RunShell("ls '" + mnt_ + "/" + dir + "' | wc -l", kBoundS);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ timing ] ls %s of %d entries (the first includes indexing): %.1f s, bound %d s\n",
                dir, kEntries, s, kBoundS);
    ASSERT_FALSE(ls.timed_out) << "not listed within " << kBoundS << " s";
    EXPECT_EQ(ls.exit_code, 0) << ls.output;
    EXPECT_EQ(std::atoi(ls.output.c_str()), kEntries) << ls.output;
  }
  struct stat st;
  EXPECT_EQ(stat((mnt_ + "/layers/0/d/f0000000").c_str(), &st), 0) << strerror(errno);
  EXPECT_EQ(stat((mnt_ + "/rootfs/d/f0999999").c_str(), &st), 0) << strerror(errno);
  ExpectAlive(pid);
  UmountNow();
}

TEST_F(HostileTest, OneMebibyteGlobalPaxRecordKeepsMemoryBounded) {
  constexpr int kFiles = 60;
  // The daemon starts near 15 MiB. Copying the 1 MiB record into each of
  // the 60 entries (as the code before the 64 KiB cap on global records
  // did, ~77 MiB) would cross this bound; anything per-layer would not.
  constexpr long kRssBoundKiB = 48 * 1024;
  std::string record = PaxRecord("SCHILY.xattr.user.big", std::string(1 << 20, 'x'));
  std::string tar = RawHeader("pax_global_header", 'g', record.size()) + record;
  PadTo512(&tar);
  std::vector<std::string> contents;
  for (int i = 0; i < kFiles; ++i) {
    contents.push_back("file " + std::to_string(i) + "\n");
    AppendTarEntry(&tar, TarEntry::File("f" + std::to_string(i), contents.back()));
  }
  FinishTar(&tar);
  std::string ref = PushTar("hostile/globalpax", tar);
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  ASSERT_GT(pid, 0);
  long rss_before = RssKiB(pid);
  for (const char* dir : {"layers/0", "rootfs"}) {
    SCOPED_TRACE(dir);
    CommandResult ls = RunCommand({"ls", "-la", mnt_ + "/" + dir}, 60);
    EXPECT_EQ(ls.exit_code, 0) << ls.output;
    // getfattr lists (and reads) every xattr of every file, so whatever the
    // daemon keeps per entry is touched.
    RunCommand({"getfattr", "-R", "-d", "--absolute-names", mnt_ + "/" + dir}, 120);
    for (int i = 0; i < kFiles; ++i) {
      std::string got;
      EXPECT_TRUE(ReadWholeFile(mnt_ + "/" + dir + "/f" + std::to_string(i), &got)) << i;
      EXPECT_EQ(got, contents[i]);
    }
  }
  long rss_after = RssKiB(pid);
  std::printf("[ memory ] daemon VmRSS %ld KiB after mount, %ld KiB after reading\n", rss_before,
              rss_after);
  EXPECT_GT(rss_after, 0);
  EXPECT_LT(rss_after, kRssBoundKiB);
  ExpectAlive(pid);
  UmountNow();
}

TEST_F(HostileTest, ZstdBombIsNotKeptDecompressedInTheCache) {
  constexpr uint64_t kBig = 512ull << 20;
  constexpr long kCacheBoundKiB = 64 * 1024;  // 64 MiB
  // Streamed into one zstd frame (and the DiffID hashed on the way), so the
  // test itself never holds the 512 MiB.
  std::string blob;
  Sha256 diff_id;
  {
    std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    ASSERT_TRUE(cctx);
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);
    std::string zeros(1 << 20, '\0');
    std::string out(ZSTD_CStreamOutSize(), '\0');
    auto feed = [&](std::string_view in, ZSTD_EndDirective mode) {
      diff_id.Update(in);
      ZSTD_inBuffer ib{in.data(), in.size(), 0};
      size_t left;
      do {
        ZSTD_outBuffer ob{out.data(), out.size(), 0};
        left = ZSTD_compressStream2(cctx.get(), &ob, &ib, mode);
        ASSERT_FALSE(ZSTD_isError(left)) << ZSTD_getErrorName(left);
        blob.append(out.data(), ob.pos);
      } while (mode == ZSTD_e_end ? left != 0 : ib.pos < ib.size);
    };
    feed(RawHeader("big", '0', kBig), ZSTD_e_continue);
    for (uint64_t done = 0; done < kBig; done += zeros.size()) feed(zeros, ZSTD_e_continue);
    feed(std::string(1024, '\0'), ZSTD_e_end);  // the end-of-archive blocks
  }
  std::printf("[ bomb ] %zu bytes of zstd -> %llu bytes of tar\n", blob.size(),
              static_cast<unsigned long long>(kBig + 1536));
  ASSERT_LT(blob.size(), 1u << 20);
  std::string ref = PushOneLayer("hostile/bomb", blob, kTarZstd, diff_id.FinishDigest());
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  CommandResult ls = RunCommand({"ls", "-l", mnt_ + "/layers/0", mnt_ + "/rootfs"}, 120);
  EXPECT_EQ(ls.exit_code, 0) << ls.output;
  EXPECT_NE(ls.output.find(std::to_string(kBig)), std::string::npos) << ls.output;
  for (const char* dir : {"layers/0", "rootfs"}) {
    CommandResult head =
        RunShell("head -c 4096 '" + mnt_ + "/" + dir + "/big' | od -An -tx1 | sort -u", 120);
    EXPECT_EQ(head.exit_code, 0) << head.output;
    EXPECT_EQ(head.output, " 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00\n*\n")
        << dir << ": " << head.output;
  }
  // What the daemon writes in the background after the layer is ready (a
  // decompressed copy would be filled then): the cache's size is sampled for
  // a while, and its largest size must stay under the bound.
  long cache_kib = 0;
  for (int i = 0; i < 40; ++i) {
    CommandResult du = RunCommand({"du", "-sk", cache_}, 60);
    ASSERT_EQ(du.exit_code, 0) << du.output;
    cache_kib = std::max(cache_kib, std::atol(du.output.c_str()));
    if (cache_kib >= kCacheBoundKiB) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  std::printf("[ bomb ] cache dir held at most %ld KiB over 20 s\n", cache_kib);
  EXPECT_LT(cache_kib, kCacheBoundKiB) << RunCommand({"du", "-ak", cache_}).output;
  ExpectAlive(pid);
  UmountNow();
}

TEST_F(HostileTest, LayerNotMatchingItsDiffIdIsEio) {
  std::string tar = BuildTar({TarEntry::File("etc/hostname", "h\n"), TarEntry::File("x", "x\n")});
  std::string blob = GzipCompress(tar);
  std::string ref =
      PushOneLayer("hostile/diffid", blob, kTarGzip, Sha256Digest("not the layer's tar"));
  CommandResult m = MountRef(ref);
  ASSERT_EQ(m.exit_code, 0) << m.output;
  pid_t pid = DaemonPid();
  CommandResult ls = RunCommand({"ls", mnt_ + "/layers/0"}, 60);
  EXPECT_NE(ls.exit_code, 0) << ls.output;
  EXPECT_NE(ls.output.find("Input/output error"), std::string::npos) << ls.output;
  struct stat st;
  errno = 0;
  EXPECT_NE(stat((mnt_ + "/rootfs/etc/hostname").c_str(), &st), 0);
  EXPECT_EQ(errno, EIO) << strerror(errno);
  CommandResult sum = RunCommand({"sha256sum", mnt_ + "/blobs/" + layer_digest_}, 60);
  EXPECT_EQ(sum.exit_code, 0) << sum.output;
  EXPECT_EQ(sum.output.substr(0, 64), layer_digest_.substr(7)) << sum.output;
  ExpectAlive(pid);
  UmountNow();
}

TEST_F(HostileTest, BlobNotMatchingItsDigestIsEioAlsoAfterRemount) {
  // Incompressible-ish content so the blob is more than a few blocks.
  std::string payload(256 << 10, '\0');
  FillDeterministic(7, 0, std::span(reinterpret_cast<uint8_t*>(payload.data()), payload.size()));
  std::string tar = BuildTar({TarEntry::File("data", payload)});
  std::string blob = GzipCompress(tar);
  std::string ref = PushOneLayer("hostile/liar", blob, kTarGzip, Sha256Digest(tar));
  // The registry serves blobs from its storage as they are: replace the
  // bytes (same length) behind its back.
  std::string hex = layer_digest_.substr(7);
  std::string data_path = registry_->storage_dir() + "/docker/registry/v2/blobs/sha256/" +
                          hex.substr(0, 2) + "/" + hex + "/data";
  struct stat st;
  ASSERT_EQ(stat(data_path.c_str(), &st), 0) << data_path;
  ASSERT_EQ(static_cast<size_t>(st.st_size), blob.size());
  std::string lie = blob;
  for (size_t i = lie.size() / 2; i < lie.size() / 2 + 64; ++i) lie[i] ^= 0x5a;
  {
    std::ofstream out(data_path, std::ios::binary | std::ios::trunc);
    out << lie;
  }
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round ? "after remount, same cache" : "first mount");
    CommandResult m = MountRef(ref);
    ASSERT_EQ(m.exit_code, 0) << m.output;
    pid_t pid = DaemonPid();
    for (const char* tool : {"sha256sum", "cat"}) {
      CommandResult r = RunShell(
          std::string(tool) + " '" + mnt_ + "/blobs/" + layer_digest_ + "' >/dev/null", 60);
      EXPECT_NE(r.exit_code, 0) << tool << ": " << r.output;
      EXPECT_NE(r.output.find("Input/output error"), std::string::npos) << tool << ": " << r.output;
    }
    ExpectAlive(pid);
    UmountNow();
  }
}

}  // namespace
}  // namespace regfs
