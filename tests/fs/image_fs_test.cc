// Mounts an ImageFs for real over an in-memory blob source and reads it with
// ordinary system calls.
#include "fs/image_fs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "fs/fuse_daemon.h"
#include "reader/base/digest.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using testing::FuseUnavailableReason;
using testing::ReadWholeFile;
using testing::TempDir;

class MemorySource : public BlobSource {
 public:
  void Add(const std::string& bytes) { blobs_[Sha256Digest(bytes)] = bytes; }
  Status ReadAt(const BlobDescriptor& b, uint64_t off, std::span<uint8_t> out) override {
    reads_++;
    if (fail_) return Status::Transient("injected");
    auto it = blobs_.find(b.digest);
    if (it == blobs_.end()) return Status::NotFound(b.digest);
    if (off + out.size() > it->second.size()) return Status::RangeNotSatisfiable("past end");
    std::memcpy(out.data(), it->second.data() + off, out.size());
    return Status::Ok();
  }
  std::atomic<int> reads_{0};
  std::atomic<bool> fail_{false};

 private:
  std::map<std::string, std::string> blobs_;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class ImageFsMountTest : public testing::FdCheckedTest {
 protected:
  void SetUp() override {
    std::string why = FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    FdCheckedTest::SetUp();
    layer_a_ = RandomBytes(3 << 20, 1);
    layer_b_ = RandomBytes(12345, 2);
    source_.Add(layer_a_);
    source_.Add(layer_b_);
    ImageFsInput in;
    in.manifest_bytes = "{\"schemaVersion\":2}";
    in.config_bytes = "{\"architecture\":\"amd64\"}";
    in.layers = {{"application/vnd.oci.image.layer.v1.tar+gzip", Sha256Digest(layer_a_),
                  layer_a_.size()},
                 {"application/vnd.oci.image.layer.v1.tar+gzip", Sha256Digest(layer_b_),
                  layer_b_.size()}};
    fs_ = std::make_unique<ImageFs>(std::move(in), &source_,
                                    [this] { return "{\"n\":" + std::to_string(++gen_) + "}"; });
    dir_ = std::make_unique<TempDir>();
    mnt_ = dir_->Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    FuseOptions fo;
    fo.mountpoint = mnt_;
    daemon_ = std::make_unique<FuseDaemon>(&fs_->tree(), fs_.get(), fo);
    ASSERT_OK(daemon_->Mount());
    loop_ = std::thread([this] { loop_status_ = daemon_->Loop(false); });
  }
  void TearDown() override {
    if (!daemon_) return;  // skipped
    daemon_->Exit();
    loop_.join();
    EXPECT_OK(loop_status_);
    EXPECT_FALSE(testing::IsMountPoint(mnt_));
    daemon_.reset();
    fs_.reset();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  MemorySource source_;
  std::string layer_a_, layer_b_;
  std::atomic<int> gen_{0};
  std::unique_ptr<ImageFs> fs_;
  std::unique_ptr<TempDir> dir_;
  std::string mnt_;
  std::unique_ptr<FuseDaemon> daemon_;
  std::thread loop_;
  Status loop_status_;
};

TEST_F(ImageFsMountTest, TopLevelFilesHaveExactBytes) {
  std::string s;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/manifest.json", &s));
  EXPECT_EQ(s, "{\"schemaVersion\":2}");
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/config.json", &s));
  EXPECT_EQ(s, "{\"architecture\":\"amd64\"}");
  struct stat st;
  EXPECT_EQ(stat((mnt_ + "/index.json").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(ImageFsMountTest, BlobsReadBackToTheirDigests) {
  for (const std::string* layer : {&layer_a_, &layer_b_}) {
    std::string path = mnt_ + "/blobs/" + Sha256Digest(*layer);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(static_cast<size_t>(st.st_size), layer->size());
    EXPECT_EQ(st.st_mode, S_IFREG | 0444u);
    std::string got;
    ASSERT_TRUE(ReadWholeFile(path, &got));
    EXPECT_EQ(Sha256Digest(got), Sha256Digest(*layer));
  }
}

TEST_F(ImageFsMountTest, RandomReadsReturnTheRightBytes) {
  std::string path = mnt_ + "/blobs/" + Sha256Digest(layer_a_);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    size_t off = rng() % layer_a_.size();
    size_t len = std::min<size_t>(1 + rng() % 70000, layer_a_.size() - off);
    std::string buf(len, '\0');
    ASSERT_EQ(pread(fd, buf.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ASSERT_EQ(buf, layer_a_.substr(off, len)) << "at " << off;
  }
  close(fd);
}

TEST_F(ImageFsMountTest, ReadErrorIsEioAndDaemonStaysUp) {
  source_.fail_ = true;
  std::string got;
  std::string path = mnt_ + "/blobs/" + Sha256Digest(layer_b_);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char buf[100];
  EXPECT_EQ(read(fd, buf, sizeof buf), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  source_.fail_ = false;
  ASSERT_TRUE(ReadWholeFile(path, &got));
  EXPECT_EQ(got, layer_b_);
}

TEST_F(ImageFsMountTest, StatusJsonIsFreshAtEachOpen) {
  std::string a, b;
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &a));
  ASSERT_TRUE(ReadWholeFile(mnt_ + "/.regfs/status.json", &b));
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("{\"n\":", 0), 0u);
}

TEST_F(ImageFsMountTest, ReadOnlyAndStatfs) {
  int fd = open((mnt_ + "/manifest.json").c_str(), O_WRONLY);
  EXPECT_EQ(fd, -1);
  EXPECT_TRUE(errno == EROFS || errno == EACCES) << strerror(errno);
  EXPECT_EQ(mkdir((mnt_ + "/x").c_str(), 0755), -1);
  struct statvfs sv;
  ASSERT_EQ(statvfs(mnt_.c_str(), &sv), 0);
  EXPECT_TRUE(sv.f_flag & ST_RDONLY);
}

TEST_F(ImageFsMountTest, ManyOpenFilesHoldNoFds) {
  std::string path = mnt_ + "/blobs/" + Sha256Digest(layer_b_);
  int before = testing::CountOpenFds();
  std::vector<int> fds;
  for (int i = 0; i < 500; ++i) {
    int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  // Our own 500 fds, and nothing more: the daemon side holds none per handle.
  EXPECT_EQ(testing::CountOpenFds(), before + 500);
  for (int fd : fds) close(fd);
}

}  // namespace
}  // namespace regfs
