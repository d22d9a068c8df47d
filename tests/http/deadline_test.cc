// The retry budget bounds every request, each attempt included: a registry
// that drips an answer slowly enough to pass the low-speed check (2 KB/s)
// still cannot hold a manifest, token or blob request past the budget. Each
// test checks that the request failed, that it ended well within a bound a
// loaded machine keeps (never a tight timing), and (in the fixture) that its
// connections and fds were released.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/http/reader_fixture.h"

namespace regfs::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Far above the 3 s budget, far below what the drips below take without a
// deadline (48 s and more).
constexpr auto kBound = std::chrono::seconds(30);

class Deadline : public ReaderTest {
 protected:
  void SetUp() override {
    ReaderTest::SetUp();
    options_.retry.total_budget = std::chrono::milliseconds(3000);
    // curl's own stall detection (1 KB/s over 20 s) lets a 2 KB/s drip pass,
    // as a registry that drips would in the field.
    options_.low_speed_limit = 1024;
    options_.low_speed_time_s = 20;
  }
  void TearDown() override {
    if (client_) {
      // Nothing is lent out once the request returned.
      PoolStats pool = client_->http().PoolStatsFor(server_.url() + "/");
      EXPECT_EQ(pool.borrowed, 0);
    }
    ReaderTest::TearDown();
  }
  static Fault Drip(int bytes_per_s = 2048) {
    Fault f;
    f.kind = FaultKind::kDrip;
    f.drip_bytes_per_s = bytes_per_s;
    return f;
  }
};

TEST_F(Deadline, DrippedManifestEndsWithTheBudget) {
  const std::string path = std::string("/v2/") + kRepo + "/manifests/latest";
  server_.AddResource(path, std::string(128 * 1024, ' '));  // 64 s at 2 KB/s
  server_.AddFault(path, Drip(), 100);
  auto start = Clock::now();
  Result<FetchedManifest> m = client().GetManifest("latest");
  auto took = Clock::now() - start;
  EXPECT_FALSE(m.ok());
  EXPECT_LT(took, kBound) << m.status().ToString();
  EXPECT_EQ(m.status().code(), Code::kTransient) << m.status().ToString();
}

TEST_F(Deadline, DrippedRangedReadEndsWithTheBudget) {
  server_.AddFault(blob_path(), Drip(), 100);
  std::string got;
  auto start = Clock::now();
  Status st = Read(0, 96 * 1024, &got);  // 48 s at 2 KB/s
  auto took = Clock::now() - start;
  EXPECT_FALSE(st.ok());
  EXPECT_LT(took, kBound) << st.ToString();
  EXPECT_EQ(st.code(), Code::kTransient) << st.ToString();
}

TEST_F(Deadline, DrippedStreamEndsWithTheBudget) {
  server_.AddFault(blob_path(), Drip(), 100);
  uint64_t delivered = 0;
  auto start = Clock::now();
  Status st = client().ReadStream(blob_, 1000, 96 * 1024, [&](std::span<const uint8_t> b) {
    delivered += b.size();
    return Status::Ok();
  });
  auto took = Clock::now() - start;
  EXPECT_FALSE(st.ok());
  EXPECT_LT(took, kBound) << st.ToString();
  EXPECT_LT(delivered, 96u * 1024);
}

TEST_F(Deadline, DrippedTokenEndsWithTheBudget) {
  // A token answer is too small to pass curl's stall detection slowly: turn
  // it off, as a registry just above the limit would in effect.
  options_.low_speed_limit = 0;
  server_.RequireBearer(300, std::chrono::seconds(300));
  server_.AddFault("/token", Drip(1), 100);  // a 34-byte token answer at 1 byte/s
  std::string got;
  auto start = Clock::now();
  Status st = Read(0, 100, &got);
  auto took = Clock::now() - start;
  EXPECT_FALSE(st.ok());
  // Without a deadline the token alone takes over 30 s (32 s measured): a
  // tighter bound than kBound, still generous for a 3 s budget.
  EXPECT_LT(took, std::chrono::seconds(20)) << st.ToString();
  EXPECT_GE(server_.token_requests(), 1u);
}

TEST_F(Deadline, FastAnswersAreUntouched) {
  // The deadline is the budget, not a cap on a transfer that makes progress
  // within it.
  std::string got;
  ASSERT_OK(Read(0, 200 * 1024, &got));
  EXPECT_EQ(got, Expected(0, 200 * 1024));
}

}  // namespace
}  // namespace regfs::testing
