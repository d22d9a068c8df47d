// Restarts of `regfs store` without breaking its readers (issue 17): the
// store's daemon is SIGKILLed three times while a process reads files of
// layers through it (open fds, its cwd in a layer, paths opened again each
// time, a blob, a layer's info), and, in a second test, while a container
// started through the store reads its files. Every read must return the
// right bytes (a delay is allowed, and printed); no ENOTCONN, no stale
// mount. The inode numbers the kernel holds must name the same files in
// the successor, also for images looked up after a kill and for numbers
// reused after an idle layer was released.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "reader/base/base64.h"
#include "reader/base/unique_fd.h"
#include "tests/integration/store_fixture.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/podman_env.h"
#include "tests/support/restart_reader.h"
#include "tests/support/run_command.h"
#include "tests/support/status_matchers.h"
#include "tests/support/test_registry.h"

namespace regfs::testing {
namespace {

class StoreRestartTest : public StoreFixture {
 protected:
  void SetUp() override { SetUpStore("regfs-store-restart"); }

  void TearDown() override {
    // Each test unmounts its store: one left mounted is a failure.
    if (set_up_ && IsMountPoint(mnt_)) ADD_FAILURE() << "test left " << mnt_ << " mounted";
    StoreFixture::TearDown();
  }

  // Pushes `name`:v1 with the given layers; returns its store directory.
  std::string Push(const std::string& name, std::vector<LayerSpec> layers, BuiltImage* out,
                   const std::vector<std::string>& cmd = {}) {
    ImageSpec spec;
    spec.layers = std::move(layers);
    spec.cmd = cmd;
    *out = BuildImage(spec);
    ImagePusher pusher(*registry_);
    EXPECT_OK(pusher.PushImage(name, "v1", *out));
    refs_[name] = registry_->Ref(name, "v1");
    return mnt_ + "/" + Base64Encode(refs_[name]);
  }

  nlohmann::json StoreStatus() {
    std::string s;
    if (!ReadWholeFile(mnt_ + "/.regfs/status.json", &s)) return nlohmann::json::object();
    auto j = nlohmann::json::parse(s, nullptr, false);
    return j.is_discarded() ? nlohmann::json::object() : j;
  }
  pid_t StorePid() { return StoreStatus().value("pid", -1); }

  // Kills the store's daemon (the pid status.json names) with SIGKILL, and
  // waits (bounded, 60 s) until `progress` has moved twice past its value
  // at the kill: then a successor serves. Returns the seconds from the kill
  // to then, or -1.
  double KillAndWait(const std::function<uint64_t()>& progress, const std::function<bool()>& failed,
                     int round) {
    pid_t old = StorePid();
    EXPECT_GT(old, 0) << StoreLog();
    if (old <= 0) return -1;
    pid_t holder = ParentOf(old);
    double gap = KillAndWaitForProgress(old, progress, failed);
    if (gap < 0 || failed()) return -1;
    pid_t successor = StorePid();
    EXPECT_NE(successor, old);
    EXPECT_EQ(ParentOf(successor), holder) << "the successor runs under the same holder";
    std::printf("restart %d: store daemon %d killed, successor %d, readers resumed after %.3f s\n",
                round, old, successor, gap);
    return gap;
  }

  std::map<std::string, std::string> refs_;
};

// The reader: only system calls and memcmp after the fork (the test
// process has threads). Each iteration, with the page cache dropped:
//   1 pread of an fd opened before the kills (layer 0's diff/d/big0)
//   2 pread of a blob opened before the kills (layer 1's blob)
//   3 open + read of "big1" relative to the cwd (layer 1's diff/d)
//   4 open + read of an absolute path through the image's link (layer 2)
//   5 fstat of fd 1: the same inode number as before
//   6 read of layer 2's info through a handle opened before the kills
//   7 read of status.json through a handle opened before the kills
struct ReaderPlan {
  std::string cwd, big0, blob1, small2, info2, status;
  const std::string* want_big0;
  const std::string* want_big1;
  const std::string* want_blob1;
  const std::string* want_small2;
  std::string info_digest;  // what layer 2's info must name
};

[[noreturn]] void RunReader(const ReaderPlan& p, ReaderShared* sh) {
  if (chdir(p.cwd.c_str()) != 0) {
    sh->Fail(100, errno);
    _exit(1);
  }
  int fa = open(p.big0.c_str(), O_RDONLY | O_CLOEXEC);
  int fb = open(p.blob1.c_str(), O_RDONLY | O_CLOEXEC);
  int fi = open(p.info2.c_str(), O_RDONLY | O_CLOEXEC);
  int fs = open(p.status.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st0;
  if (fa < 0 || fb < 0 || fi < 0 || fs < 0 || fstat(fa, &st0) != 0) {
    sh->Fail(101, errno);
    _exit(1);
  }
  static char buf[256 << 10];
  RunIterations(sh, [&](uint64_t i) {
    CheckPreadAt(sh, 1, fa, *p.want_big0, i, buf);
    CheckPreadAt(sh, 2, fb, *p.want_blob1, i, buf);
    CheckOpenAndRead(sh, 3, "big1", *p.want_big1, buf, sizeof buf);
    CheckOpenAndRead(sh, 4, p.small2.c_str(), *p.want_small2, buf, sizeof buf);
    struct stat st;
    if (fstat(fa, &st) != 0) {
      sh->Fail(5, errno);
    } else if (st.st_ino != st0.st_ino) {
      sh->Fail(5, 0);
    }
    ssize_t n = pread(fi, buf, sizeof buf, 0);
    if (n <= 0 || std::string_view(buf, static_cast<size_t>(n)).find(p.info_digest) ==
                      std::string_view::npos) {
      sh->Fail(6, n < 0 ? errno : 0);
    }
    n = pread(fs, buf, sizeof buf, 0);
    if (n <= 0 || buf[0] != '{') sh->Fail(7, n < 0 ? errno : 0);
  });
  close(fa);
  close(fb);
  close(fi);
  close(fs);
  _exit(0);
}

// A file held open by the test itself across the kills: its bytes and its
// inode number must stay.
struct Held {
  std::string path, want;
  UniqueFd fd;
  ino_t ino = 0;
};

void Hold(Held* h, const std::string& path, const std::string& want) {
  h->path = path;
  h->want = want;
  h->fd = UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(h->fd.valid()) << path << ": " << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(fstat(h->fd.get(), &st), 0);
  h->ino = st.st_ino;
}

void ExpectHeld(const Held& h, const std::string& when) {
  std::string buf(h.want.size(), '\0');
  EXPECT_EQ(CheckPread(h.fd.get(), h.want, 0, h.want.size(), buf.data()), 0) << h.path << when;
  struct stat st;
  ASSERT_EQ(fstat(h.fd.get(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_ino, h.ino) << h.path << when;
  // The path, looked up again, names the same inode.
  struct stat again;
  ASSERT_EQ(stat(h.path.c_str(), &again), 0) << h.path << when << ": " << std::strerror(errno);
  EXPECT_EQ(again.st_ino, h.ino) << h.path << when;
}

TEST_F(StoreRestartTest, ReadersSeeADelayNotAnErrorAcrossThreeSigkills) {
  // The image the reader reads: three layers of a few MiB.
  std::vector<std::string> bigs, smalls;
  std::vector<LayerSpec> layers;
  for (int i = 0; i < 3; ++i) {
    bigs.push_back(DeterministicBytes(100 + i, (2u << 20) + 12345u * i));
    smalls.push_back("small file of layer " + std::to_string(i) + "\n");
    LayerSpec l;
    l.entries = {TarEntry::Dir("d"), TarEntry::File("d/big" + std::to_string(i), bigs[i]),
                 TarEntry::File("d/small", smalls[i])};
    l.compression = i == 1 ? Compression::kZstd : Compression::kGzip;
    layers.push_back(std::move(l));
  }
  BuiltImage main;
  const std::string main_dir = Push("test/main", std::move(layers), &main);
  // One-layer images: one released before the kills (its inode numbers are
  // reused), one looked up before the kills and one after the first.
  auto one_layer = [](const std::string& text) {
    LayerSpec l;
    l.entries = {TarEntry::Dir("o"), TarEntry::File("o/f", text)};
    return std::vector<LayerSpec>{l};
  };
  BuiltImage released, before, after;
  const std::string released_dir = Push("test/released", one_layer("released\n"), &released);
  const std::string before_dir = Push("test/before", one_layer("looked up before\n"), &before);
  const std::string after_dir = Push("test/after", one_layer("looked up after\n"), &after);
  auto diff = [](const std::string& image_dir, const BuiltImage& img, size_t i) {
    return image_dir + "/" + img.layers[i].descriptor.digest + "/diff";
  };

  StartStore({"--idle-timeout", "1"});
  pid_t daemon = StorePid();
  ASSERT_GT(daemon, 0) << StoreLog();
  pid_t holder = ParentOf(daemon);
  EXPECT_GT(holder, 1) << "the store's daemon runs under a holder";
  EXPECT_EQ(Comm(holder), "regfs-holder");

  // Looked at, closed, and released as idle (bounded wait: 60 s).
  std::string text;
  ASSERT_TRUE(ReadWholeFile(diff(released_dir, released, 0) + "/o/f", &text)) << StoreLog();
  EXPECT_EQ(text, "released\n");
  auto released_live = [&] {
    const nlohmann::json status = StoreStatus();
    for (const nlohmann::json& l : status["layers"]) {
      if (l["digest"] == released.layers[0].descriptor.digest) return l["live"].get<bool>();
    }
    return true;
  };
  for (int i = 0; i < 600 && released_live(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(released_live()) << StoreStatus().dump() << StoreLog();
  Held held_before;
  ASSERT_NO_FATAL_FAILURE(
      Hold(&held_before, diff(before_dir, before, 0) + "/o/f", "looked up before\n"));

  ReaderPlan plan;
  plan.cwd = diff(main_dir, main, 1) + "/d";
  plan.big0 = diff(main_dir, main, 0) + "/d/big0";
  plan.blob1 = main_dir + "/" + main.layers[1].descriptor.digest + "/blob";
  plan.small2 = diff(main_dir, main, 2) + "/d/small";
  plan.info2 = main_dir + "/" + main.layers[2].descriptor.digest + "/info";
  plan.status = mnt_ + "/.regfs/status.json";
  plan.want_big0 = &bigs[0];
  plan.want_big1 = &bigs[1];
  plan.want_blob1 = &main.layers[1].blob;
  plan.want_small2 = &smalls[2];
  plan.info_digest = main.layers[2].descriptor.digest;

  ReaderProcess reader;
  ASSERT_TRUE(reader.mapped());
  ReaderShared* sh = reader.shared();
  ASSERT_TRUE(reader.Start([&plan](ReaderShared* shared) { RunReader(plan, shared); }));
  EXPECT_TRUE(reader.WaitIterations(20, 60)) << "the reader does not progress";

  Held held_after;
  std::vector<double> gaps;
  for (int round = 1; round <= 3 && sh->errors.load() == 0; ++round) {
    double gap = KillAndWait([&] { return sh->iterations.load(); },
                             [&] { return sh->errors.load() != 0; }, round);
    ASSERT_GE(gap, 0) << "no right reads after kill " << round << ": " << reader.FirstFailure()
                      << "\n"
                      << StoreLog();
    gaps.push_back(gap);
    const std::string when = " after kill " + std::to_string(round);
    ExpectHeld(held_before, when);
    if (round == 1) {
      // A successor resolves what nobody looked up before.
      ASSERT_NO_FATAL_FAILURE(
          Hold(&held_after, diff(after_dir, after, 0) + "/o/f", "looked up after\n"));
    } else {
      ExpectHeld(held_after, when);
    }
    // The released layer comes back (from the cache) when looked up again.
    if (round == 2) {
      ASSERT_TRUE(ReadWholeFile(diff(released_dir, released, 0) + "/o/f", &text)) << StoreLog();
      EXPECT_EQ(text, "released\n");
    }
    EXPECT_TRUE(reader.WaitIterations(20, 60)) << when;
  }
  // Several idle periods later (--idle-timeout 1), what the kernel held
  // before the last kill is still there: that successor cannot tell which
  // of those inodes the kernel holds, so it does not release those layers.
  std::this_thread::sleep_for(std::chrono::seconds(4));
  ExpectHeld(held_before, " idle periods after the last kill");
  ExpectHeld(held_after, " idle periods after the last kill");
  int st = 0;
  ASSERT_TRUE(reader.Stop(&st));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  reader.PrintFigures();
  EXPECT_EQ(sh->errors.load(), 0u) << reader.FirstFailure() << "\n" << StoreLog();
  EXPECT_EQ(gaps.size(), 3u);
  held_before.fd.Reset();
  held_after.fd.Reset();

  // No stale mount: a name never looked up is answered, not ENOTCONN.
  struct stat s;
  EXPECT_EQ(stat((mnt_ + "/.layers/sha256:never-looked-up").c_str(), &s), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_TRUE(IsMountPoint(mnt_));
  pid_t last = StorePid();
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
  // The last daemon and the holder end with the mount (bounded wait).
  for (int i = 0; i < 400 && (kill(holder, 0) == 0 || kill(last, 0) == 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_NE(kill(holder, 0), 0) << "holder still running";
  EXPECT_NE(kill(last, 0), 0) << "daemon still running";
}

// The daemon killed before anything looked at the store: a stat() of the
// mountpoint is then a request only a daemon can answer, and the successor
// must not make it itself before it serves.
TEST_F(StoreRestartTest, ASuccessorTakesOverAStoreNobodyLookedAt) {
  StartStore({"-v"}, /*look=*/false);
  // The store is ready before the kernel's INIT is read: until the daemon
  // gave the holder the session (its log says so), a kill ends the mount.
  pid_t daemon = KillTheDaemonOnceHeld(mnt_, [this] { return StoreLog(); });
  ASSERT_GT(daemon, 0);
  std::atomic<int> err{0};
  bool answered = AnsweredWithin30s(mnt_, [&] {
    struct stat st;
    if (stat(mnt_.c_str(), &st) != 0) err = errno;
  });
  EXPECT_TRUE(answered) << "the mountpoint's stat() was not answered in 30 s\n" << StoreLog();
  EXPECT_EQ(err.load(), 0) << std::strerror(err.load());
  if (answered) {
    EXPECT_NE(StorePid(), daemon);
  }
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
}

// The store's daemon killed as soon as the store is ready, before it read
// the kernel's INIT request: the successor reads INIT itself.
TEST_F(StoreRestartTest, ADaemonKilledBeforeItReadTheKernelsInit) {
  setenv("REGFS_TEST_DIE_BEFORE_LOOP", "1", 1);
  StartStore({}, /*look=*/false);
  unsetenv("REGFS_TEST_DIE_BEFORE_LOOP");
  std::atomic<int> err{0};
  bool answered = AnsweredWithin30s(mnt_, [&] {
    struct stat st;
    if (stat((mnt_ + "/.regfs/status.json").c_str(), &st) != 0) err = errno;
  });
  EXPECT_TRUE(answered) << "not answered in 30 s\n" << StoreLog();
  EXPECT_EQ(err.load(), 0) << std::strerror(err.load()) << "\n" << StoreLog();
  EXPECT_NE(StoreLog().find("died of signal 9"), std::string::npos) << StoreLog();
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
}

// A successor needs no registry: it makes the tree from the journal and
// the layers' indexes and bytes from the cache.
TEST_F(StoreRestartTest, ASuccessorServesWhileTheRegistryIsDown) {
  const std::string text = DeterministicBytes(5, 300000);
  BuiltImage img;
  const std::string image_dir =
      Push("test/offline",
           {{{TarEntry::Dir("o"), TarEntry::File("o/f", text)}, Compression::kGzip}}, &img);
  StartStore({"--retry-timeout", "2"});
  const std::string path = image_dir + "/" + img.layers[0].descriptor.digest + "/diff/o/f";
  std::string got;
  ASSERT_TRUE(ReadWholeFile(path, &got)) << StoreLog();
  ASSERT_TRUE(got == text);
  Held held;
  ASSERT_NO_FATAL_FAILURE(Hold(&held, path, text));
  pid_t old = StorePid();
  ASSERT_GT(old, 0);
  registry_->Stop();
  ASSERT_EQ(kill(old, SIGKILL), 0);
  ExpectHeld(held, " after a kill with the registry down");
  got.clear();
  EXPECT_TRUE(ReadWholeFile(path, &got));
  EXPECT_TRUE(got == text) << StoreLog();
  EXPECT_NE(StorePid(), old);
  held.fd.Reset();
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
}

// A container started through the store (its layers are overlay lowerdirs
// on the store) reads two files of different layers in a loop into a FIFO
// the test reads and checks, while the store's daemon is killed three times.
TEST_F(StoreRestartTest, ContainerReadsAcrossThreeSigkills) {
  if (!HavePodman()) GTEST_SKIP() << "podman or /usr/sbin/runc missing (packaging/install-deps.sh)";
  const std::string a = DeterministicBytes(7, (1u << 20) + 333);
  const std::string b = DeterministicBytes(8, (1u << 20) + 777);
  std::vector<TarEntry> base = HostCatEntries();
  base.push_back(TarEntry::File("bin/sh", ReadHostFile("/bin/dash"), 0755));
  std::vector<LayerSpec> layers = {
      {base, Compression::kGzip},
      {{TarEntry::Dir("d"), TarEntry::File("d/a", a)}, Compression::kGzip},
      {{TarEntry::Dir("d"), TarEntry::File("d/b", b)}, Compression::kZstd}};
  BuiltImage img;
  const std::string image_dir = Push("test/container", std::move(layers), &img);
  const std::string ref = refs_["test/container"];
  StartStore();
  envs_["lazy"] = std::make_unique<PodmanEnv>(dir_->Sub("lazy"), mnt_);
  CommandResult pull = envs_["lazy"]->Run("pull --tls-verify=false " + ref, 180);
  ASSERT_EQ(pull.exit_code, 0) << pull.output << StoreLog();
  const std::string out = dir_->Sub("out");
  ASSERT_EQ(mkdir(out.c_str(), 0755), 0);
  ASSERT_EQ(mkfifo((out + "/fifo").c_str(), 0600), 0);
  // Opened before the container, so that its writers never wait for us
  // (O_RDWR: a FIFO opened so never blocks, and never sees EOF).
  UniqueFd fifo(open((out + "/fifo").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fifo.valid());
  CommandResult run = envs_["lazy"]->Run("run -d --runtime /usr/sbin/runc --network none -v " +
                                             out + ":/out " + ref +
                                             " /bin/sh -c 'cd /d && while cat a /d/b > /out/fifo; "
                                             "do :; done; echo failed > /out/failed'",
                                         180);
  ASSERT_EQ(run.exit_code, 0) << run.output << StoreLog();
  const std::string id = run.output.substr(0, run.output.find('\n'));
  // The store's files of the container's layers: dropping their page cache
  // makes the container's next reads reach the daemon.
  UniqueFd fa(open((image_dir + "/" + img.layers[1].descriptor.digest + "/diff/d/a").c_str(),
                   O_RDONLY | O_CLOEXEC));
  UniqueFd fb(open((image_dir + "/" + img.layers[2].descriptor.digest + "/diff/d/b").c_str(),
                   O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fa.valid() && fb.valid()) << StoreLog();

  // The reader of the FIFO: checks the stream against a, b, a, b, ...
  const std::string period = a + b;
  std::atomic<uint64_t> periods{0};
  std::atomic<bool> wrong{false}, stop{false};
  std::thread checker([&] {
    std::string buf(256 << 10, '\0');
    size_t pos = 0;
    while (!stop.load() && !wrong.load()) {
      pollfd p{fifo.get(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      ssize_t n = read(fifo.get(), buf.data(), std::min(buf.size(), period.size() - pos));
      if (n <= 0) continue;
      if (std::memcmp(buf.data(), period.data() + pos, static_cast<size_t>(n)) != 0) {
        wrong = true;
        break;
      }
      pos += static_cast<size_t>(n);
      if (pos == period.size()) {
        pos = 0;
        posix_fadvise(fa.get(), 0, 0, POSIX_FADV_DONTNEED);
        posix_fadvise(fb.get(), 0, 0, POSIX_FADV_DONTNEED);
        periods.fetch_add(1);
      }
    }
  });
  struct Join {
    std::thread* t;
    std::atomic<bool>* stop;
    ~Join() {
      *stop = true;
      if (t->joinable()) t->join();
    }
  } join{&checker, &stop};
  struct stat st;
  auto failed = [&] { return wrong.load() || stat((out + "/failed").c_str(), &st) == 0; };
  auto wait_periods = [&](uint64_t n) {
    uint64_t target = periods.load() + n;
    for (int i = 0; i < 6000 && periods.load() < target && !failed(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return periods.load() >= target;
  };
  ASSERT_TRUE(wait_periods(5)) << "the container does not progress\n" << StoreLog();
  for (int round = 1; round <= 3; ++round) {
    double gap = KillAndWait([&] { return periods.load(); }, failed, round);
    ASSERT_GE(gap, 0) << "the container read nothing after kill " << round << "\n" << StoreLog();
    ASSERT_TRUE(wait_periods(5)) << "after kill " << round << "\n" << StoreLog();
  }
  EXPECT_FALSE(wrong.load()) << "the container read wrong bytes";
  EXPECT_NE(stat((out + "/failed").c_str(), &st), 0) << "a read in the container failed";
  std::printf("container: %llu periods of %zu bytes read right\n",
              static_cast<unsigned long long>(periods.load()), period.size());
  stop = true;
  checker.join();
  CommandResult rm = envs_["lazy"]->Run("rm -f -t 0 " + id, 120);
  EXPECT_EQ(rm.exit_code, 0) << rm.output;
  fa.Reset();
  fb.Reset();
  envs_.clear();
  CommandResult um = RunCommand({REGFS_BINARY, "umount", mnt_});
  EXPECT_EQ(um.exit_code, 0) << um.output;
}

}  // namespace
}  // namespace regfs::testing
