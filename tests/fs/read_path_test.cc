// The daemon's read path without a mount: one read-ahead policy (fs/'s, in
// the background), so a read-ahead that fails never fails the read that
// asked for less; and a failed read of file data is EIO whatever went wrong.
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "cache/cached_blob_source.h"
#include "cache/chunk_cache.h"
#include "fs/errno_map.h"
#include "fs/image_fs.h"
#include "fs/mount.h"
#include "tests/support/fake_blob_source.h"
#include "tests/support/fd_count.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

namespace tt = regfs::testing;

// Fails every request that reaches past `limit`: what a registry that breaks
// down mid-blob looks like to requests made ahead of the reader.
class FailsPast : public BlobSourceWrapper {
 public:
  FailsPast(BlobSource* target, uint64_t limit) : BlobSourceWrapper(target), limit_(limit) {}
  Status ReadAt(const BlobDescriptor& b, uint64_t off, std::span<uint8_t> out) override {
    if (off + out.size() > limit_) return Status::Transient("injected failure past the limit");
    return BlobSourceWrapper::ReadAt(b, off, out);
  }
  Status ReadStream(const BlobDescriptor& b, uint64_t off, uint64_t len,
                    const ByteSink& sink) override {
    if (off + len > limit_) return Status::Transient("injected failure past the limit");
    return target()->ReadStream(b, off, len, sink);
  }

 private:
  uint64_t limit_;
};

class ReadPathTest : public tt::FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    char tmpl[] = "/tmp/regfs-readpath-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    FdCheckedTest::TearDown();
  }
  std::string dir_;
};

TEST_F(ReadPathTest, AFailingReadAheadDoesNotFailTheSequentialReader) {
  std::string bytes(24 << 20, '\0');
  tt::FillDeterministic(3, 0, std::span(reinterpret_cast<uint8_t*>(bytes.data()), bytes.size()));
  tt::FakeBlobSource upstream;
  BlobDescriptor blob = upstream.AddBlob(bytes);
  const uint64_t limit = 6 << 20;  // the registry fails past 6 MiB
  FailsPast failing(&upstream, limit);
  CacheOptions co;
  co.dir = dir_ + "/cache";
  Result<std::unique_ptr<ChunkCache>> cache = ChunkCache::Open(co);
  ASSERT_OK(cache.status());
  std::string first_error;
  {
    CachedBlobSource cached(cache->get(), &failing, DaemonCacheOptions());
    ImageFsInput in;
    in.manifest_bytes = "{}";
    in.config_bytes = "{}";
    in.layers = {blob};
    ImageFsOptions fso;
    fso.layers = false;
    ImageFs fs(
        std::move(in), &cached, [] { return std::string("{}"); }, fso);
    Result<Ino> blobs = fs.tree().Lookup(kRootIno, "blobs");
    ASSERT_OK(blobs.status());
    Result<Ino> ino = fs.tree().Lookup(*blobs, blob.digest);
    ASSERT_OK(ino.status());
    Result<Node> node = fs.tree().Get(*ino);
    ASSERT_OK(node.status());
    // A sequential reader of the first 6 MiB, in the kernel's 128 KiB
    // pieces: its read-ahead reaches past 6 MiB and fails there, in the
    // background; none of its own reads may fail.
    std::string buf(128 << 10, '\0');
    for (uint64_t off = 0; off < limit; off += buf.size()) {
      Result<size_t> n =
          fs.Read(*node, off, std::span(reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
      if (!n.ok()) {
        first_error = "read at " + std::to_string(off) + ": " + n.status().ToString();
        break;
      }
      ASSERT_EQ(*n, buf.size());
      ASSERT_EQ(buf, bytes.substr(off, buf.size())) << "at " << off;
    }
  }
  EXPECT_EQ(first_error, "");
}

TEST(ReadFailureErrno, EveryFailedReadIsEio) {
  EXPECT_EQ(ReadFailureErrno(Status::Ok()), 0);
  for (const Status& s : {Status::NotFound("blob unknown"), Status::Unauthorized("denied"),
                          Status::InvalidArgument("bad"), Status::Unsupported("no"),
                          Status::Corrupt("digest"), Status::Transient("later")}) {
    EXPECT_EQ(ReadFailureErrno(s), EIO) << s.ToString();
  }
}

// With the daemon's own options (its cache does not read ahead: fs/ does), a
// small random read fetches only its bytes on a chunk's first touch. The
// daemon's options once turned this off unnoticed: every random 4 KiB read
// of a mount fetched a whole 1 MiB chunk (the WAN bench's random reads took
// a chunk's transfer time on top of the round trip).
TEST_F(ReadPathTest, ASmallRandomReadFetchesItsBytesWithTheDaemonsOptions) {
  std::string bytes(24 << 20, '\0');
  tt::FillDeterministic(5, 0, std::span(reinterpret_cast<uint8_t*>(bytes.data()), bytes.size()));
  tt::FakeBlobSource upstream;
  BlobDescriptor blob = upstream.AddBlob(bytes);
  CacheOptions co;
  co.dir = dir_ + "/cache";
  Result<std::unique_ptr<ChunkCache>> cache = ChunkCache::Open(co);
  ASSERT_OK(cache.status());
  CachedBlobSource cached(cache->get(), &upstream, DaemonCacheOptions());
  const uint64_t at = (7u << 20) + 4096;
  std::string got(4096, '\0');
  ASSERT_OK(cached.ReadAt(blob, at, std::span(reinterpret_cast<uint8_t*>(got.data()), got.size())));
  EXPECT_EQ(got, bytes.substr(at, 4096));
  std::vector<tt::FakeBlobSource::Request> log = upstream.request_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].offset, at);
  EXPECT_EQ(upstream.bytes_served(), 4096u);
}

}  // namespace
}  // namespace regfs
