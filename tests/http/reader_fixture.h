// Shared fixture for the reader tests: a FaultServer serving one blob as a
// registry would, and a RegistryClient pointed at it with short retry delays.
// TearDown destroys the client, checks that the server's open connections
// return to zero and never exceeded the pool, stops the server, then checks fds.
#ifndef REGFS_TESTS_HTTP_READER_FIXTURE_H_
#define REGFS_TESTS_HTTP_READER_FIXTURE_H_

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "reader/base/digest.h"
#include "reader/http/registry_client.h"
#include "tests/support/fault_server.h"
#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs::testing {

inline std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

inline constexpr const char* kRepo = "test/repo";

class ReaderTest : public FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    ASSERT_OK(server_.Start());
    SetBlob(RandomBytes(256 * 1024, 7));
  }

  void TearDown() override {
    client_.reset();
    // Closing the client closes its connections; the server notices.
    int open = -1;
    for (int i = 0; i < 200 && (open = server_.open_connections()) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(open, 0) << "connections still open after the client was destroyed";
    EXPECT_LE(server_.peak_connections(), options_.pool_size + peak_slack_)
        << "server saw more concurrent connections than the pool size";
    server_.Stop();
    FdCheckedTest::TearDown();
  }

  // Registers `data` as blob kRepo@digest on the server.
  void SetBlob(std::string data) {
    blob_data_ = std::move(data);
    blob_.digest = Sha256Digest(blob_data_);
    blob_.size = blob_data_.size();
    blob_.media_type = "application/octet-stream";
    server_.AddResource(BlobPath(blob_.digest), blob_data_);
  }

  static std::string BlobPath(const std::string& digest) {
    return std::string("/v2/") + kRepo + "/blobs/" + digest;
  }
  std::string blob_path() const { return BlobPath(blob_.digest); }

  Reference Ref() const {
    Reference r;
    r.registry = server_.host_port();
    r.repository = kRepo;
    r.tag = "latest";
    return r;
  }

  static RegistryClientOptions FastOptions() {
    RegistryClientOptions o;
    o.tls_verify = false;
    o.pool_size = 4;
    o.retry.max_attempts = 5;
    o.retry.initial_backoff = std::chrono::milliseconds(1);
    o.retry.max_backoff = std::chrono::milliseconds(20);
    o.retry.total_budget = std::chrono::milliseconds(10000);
    o.low_speed_limit = 64 * 1024;  // curl averages over ~5 s: a high bar ends stalls in ~1 s
    o.low_speed_time_s = 1;
    o.connect_timeout_ms = 5000;
    o.credentials.use_env = false;
    return o;
  }

  RegistryClient& client() {
    if (!client_) {
      auto c = RegistryClient::Create(Ref(), options_);
      EXPECT_OK(c);
      if (c.ok()) client_ = std::move(c).value();
    }
    return *client_;
  }

  // Reads [offset, offset+len) and returns the status; bytes into *out.
  Status Read(uint64_t offset, size_t len, std::string* out) {
    out->assign(len, '\0');
    return client().ReadAt(blob_, offset,
                           std::span<uint8_t>(reinterpret_cast<uint8_t*>(out->data()), len));
  }
  std::string Expected(uint64_t offset, size_t len) const { return blob_data_.substr(offset, len); }

  FaultServer server_;
  RegistryClientOptions options_ = FastOptions();
  // Connections the server may count above the pool size: it learns that the
  // client closed one only when the close reaches it, which under load can be
  // after the client's next connect has been accepted.
  int peak_slack_ = 0;
  std::unique_ptr<RegistryClient> client_;
  std::string blob_data_;
  BlobDescriptor blob_;
};

}  // namespace regfs::testing

#endif  // REGFS_TESTS_HTTP_READER_FIXTURE_H_
