// layers/<N> and rootfs/ of a real mount while the registry fails and comes
// back: a failed index build is tried again by a later look (after the
// backoff), with no remount. Before the layer lifecycle was shared, the
// mount kept the failure until it was remounted.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "fs/fuse_daemon.h"
#include "fs/image_fs.h"
#include "reader/base/digest.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"
#include "tests/support/tar_writer.h"

namespace regfs {
namespace {

namespace tt = regfs::testing;
using std::chrono::milliseconds;

class ImageFsLifecycleTest : public tt::FdCheckedTest {
 protected:
  void SetUp() override {
    std::string why = tt::FuseUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    FdCheckedTest::SetUp();
  }

  void MountImage(ImageFsInput in, ImageFsOptions fso) {
    fs_ = std::make_unique<ImageFs>(std::move(in), &src_, [] { return std::string("{}"); },
                                    std::move(fso));
    dir_ = std::make_unique<tt::TempDir>();
    mnt_ = dir_->Sub("mnt");
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    FuseOptions fo;
    fo.mountpoint = mnt_;
    daemon_ = std::make_unique<FuseDaemon>(&fs_->tree(), fs_.get(), fo);
    ASSERT_OK(daemon_->Mount());
    loop_ = std::thread([this] { loop_status_ = daemon_->Loop(false); });
  }

  void TearDown() override {
    if (daemon_) {
      daemon_->Exit();
      loop_.join();
      EXPECT_OK(loop_status_);
      daemon_.reset();
    }
    fs_.reset();
    dir_.reset();
    if (!IsSkipped()) FdCheckedTest::TearDown();
  }

  tt::FakeBlobSource src_;
  std::unique_ptr<ImageFs> fs_;
  std::unique_ptr<tt::TempDir> dir_;
  std::string mnt_;
  std::unique_ptr<FuseDaemon> daemon_;
  std::thread loop_;
  Status loop_status_;
};

TEST_F(ImageFsLifecycleTest, LayerAndRootfsWorkAgainAfterTheRegistryComesBack) {
  std::string tar0 = tt::BuildTar({tt::TarEntry::Dir("etc"),
                                   tt::TarEntry::File("etc/os-release", "ID=zero\n")});
  std::string tar1 = tt::BuildTar({tt::TarEntry::File("etc/motd", "hello\n")});
  ImageFsInput in;
  in.manifest_bytes = "{}";
  in.config_bytes = "{}";
  for (const std::string* tar : {&tar0, &tar1}) {
    in.layers.push_back(
        src_.AddBlob(tt::GzipCompress(*tar), "application/vnd.oci.image.layer.v1.tar+gzip"));
    in.diff_ids.push_back(Sha256Digest(*tar));
  }
  ImageFsOptions fso;
  fso.readahead_threads = 0;
  fso.layer_set.backoff_min = milliseconds(50);
  fso.layer_set.backoff_max = milliseconds(50);
  src_.FailNext(1'000'000, Status::Transient("registry down"));
  MountImage(std::move(in), fso);

  struct stat st;
  // The registry is down: the layer cannot be indexed. EIO, not ENOENT.
  EXPECT_EQ(stat((mnt_ + "/layers/1/etc/motd").c_str(), &st), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(stat((mnt_ + "/rootfs/etc/os-release").c_str(), &st), -1);
  EXPECT_EQ(errno, EIO);

  src_.FailNext(0, Status::Ok());  // the registry is back
  std::this_thread::sleep_for(milliseconds(120));  // past the backoff
  std::string s;
  ASSERT_TRUE(tt::ReadWholeFile(mnt_ + "/layers/1/etc/motd", &s));
  EXPECT_EQ(s, "hello\n");
  ASSERT_TRUE(tt::ReadWholeFile(mnt_ + "/rootfs/etc/os-release", &s));
  EXPECT_EQ(s, "ID=zero\n");
  ASSERT_TRUE(tt::ReadWholeFile(mnt_ + "/rootfs/etc/motd", &s));
  EXPECT_EQ(s, "hello\n");
}

TEST_F(ImageFsLifecycleTest, ALayerWhoseTarDoesNotMatchItsDiffIdIsEio) {
  std::string tar = tt::BuildTar({tt::TarEntry::File("f", "bytes\n")});
  ImageFsInput in;
  in.manifest_bytes = "{}";
  in.config_bytes = "{}";
  in.layers.push_back(
      src_.AddBlob(tt::GzipCompress(tar), "application/vnd.oci.image.layer.v1.tar+gzip"));
  in.diff_ids.push_back(Sha256Digest("some other tar"));
  ImageFsOptions fso;
  fso.readahead_threads = 0;
  MountImage(std::move(in), fso);
  struct stat st;
  EXPECT_EQ(stat((mnt_ + "/layers/0/f").c_str(), &st), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(stat((mnt_ + "/rootfs/f").c_str(), &st), -1);
  EXPECT_EQ(errno, EIO);
}

}  // namespace
}  // namespace regfs
