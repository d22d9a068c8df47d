// Ranged reads through RegistryClient against the fault server: validation,
// resumption, retries and their bounds.
#include <gtest/gtest.h>

#include <map>

#include <chrono>

#include "tests/http/reader_fixture.h"

namespace regfs::testing {
namespace {

using RangeRead = ReaderTest;
using Retry = ReaderTest;

TEST_F(RangeRead, ReturnsExactBytes) {
  std::string got;
  for (auto [off, len] : std::vector<std::pair<uint64_t, size_t>>{
           {0, 1}, {0, 4096}, {1000, 12345}, {blob_.size - 1, 1}, {0, blob_.size}}) {
    ASSERT_OK(Read(off, len, &got));
    EXPECT_EQ(got, Expected(off, len)) << off << "+" << len;
  }
  auto log = server_.requests();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back().Header("range"), "bytes=0-" + std::to_string(blob_.size - 1));
  EXPECT_EQ(log.back().Header("accept-encoding"), "identity");
  EXPECT_EQ(log.back().Header("authorization"), "");
}

TEST_F(RangeRead, OutOfBoundsIsRejectedWithoutARequest) {
  std::string got;
  uint64_t before = server_.total_requests();
  EXPECT_EQ(Read(blob_.size, 1, &got).code(), Code::kRangeNotSatisfiable);
  EXPECT_EQ(Read(blob_.size - 10, 11, &got).code(), Code::kRangeNotSatisfiable);
  EXPECT_OK(Read(5, 0, &got));
  EXPECT_EQ(server_.total_requests(), before);
}

TEST_F(RangeRead, ResetMidBodyResumes) {
  server_.AddFault(blob_path(), Fault{FaultKind::kResetMidBody});
  std::string got;
  ASSERT_OK(Read(1000, 64 * 1024, &got));
  EXPECT_EQ(got, Expected(1000, 64 * 1024));
  EXPECT_GE(client().Counters().resumes, 1u);
  auto log = server_.requests();
  ASSERT_GE(log.size(), 2u);
  // The second request starts where the first body stopped.
  EXPECT_EQ(log.back().Header("range"), "bytes=" + std::to_string(1000 + 32 * 1024) + "-" +
                                            std::to_string(1000 + 64 * 1024 - 1));
}

TEST_F(RangeRead, TruncatedBodyResumes) {
  server_.AddFault(blob_path(), Fault{FaultKind::kTruncate}, 2);
  std::string got;
  ASSERT_OK(Read(0, 100000, &got));
  EXPECT_EQ(got, Expected(0, 100000));
  EXPECT_GE(client().Counters().resumes, 2u);
}

// The streaming form: the sink sees each byte of the range once, in order,
// also across resumed attempts (the fixture checks fds and connections).
TEST_F(RangeRead, StreamDeliversEachByteOnceAcrossResumes) {
  server_.AddFault(blob_path(), Fault{FaultKind::kResetMidBody});
  server_.AddFault(blob_path(), Fault{FaultKind::kTruncate}, 2);
  std::string got;
  size_t calls = 0;
  ASSERT_OK(client().ReadStream(blob_, 1000, 100000, [&](std::span<const uint8_t> b) {
    got.append(reinterpret_cast<const char*>(b.data()), b.size());
    ++calls;
    return Status::Ok();
  }));
  EXPECT_EQ(got, Expected(1000, 100000));
  EXPECT_GT(calls, 1u);
  EXPECT_GE(client().Counters().resumes, 1u);
}

// A sink that refuses stops the read at once, with its status, and without
// a retry, even when that status would otherwise be retried.
TEST_F(RangeRead, StreamSinkErrorStopsWithoutRetry) {
  uint64_t before = server_.total_requests();
  Status st = client().ReadStream(blob_, 0, blob_.size, [](std::span<const uint8_t>) {
    return Status::Transient("refused by the sink");
  });
  EXPECT_EQ(st.code(), Code::kTransient) << st.ToString();
  EXPECT_EQ(server_.total_requests(), before + 1);
  EXPECT_EQ(client().ReadStream(blob_, blob_.size, 1, [](std::span<const uint8_t>) {
    return Status::Ok();
  }).code(), Code::kRangeNotSatisfiable);
}

TEST_F(RangeRead, StallEndsByLowSpeedLimitAndResumes) {
  server_.AddFault(blob_path(), Fault{FaultKind::kStall});
  std::string got;
  ASSERT_OK(Read(100, 8192, &got));
  EXPECT_EQ(got, Expected(100, 8192));
  EXPECT_EQ(server_.RequestCount(blob_path()), 2);
}

TEST_F(RangeRead, IgnoredRangeTakesTheWindowAndStops) {
  // A pull-through cache filling answers a Range request with 200 and the
  // whole blob (distribution's proxy mode does). The client takes its range
  // out of the body and ends the transfer after the range's last byte,
  // instead of failing or streaming the whole 32 MiB blob.
  SetBlob(RandomBytes(32 << 20, 11));
  server_.AddFault(blob_path(), Fault{FaultKind::kIgnoreRange});
  std::string got;
  ASSERT_OK(Read(1000, 100, &got));
  EXPECT_EQ(got, Expected(1000, 100));
  EXPECT_EQ(server_.RequestCount(blob_path()), 1);
  EXPECT_LT(server_.body_bytes_sent(), blob_.size);
  // Also through the streaming path, and further in.
  server_.AddFault(blob_path(), Fault{FaultKind::kIgnoreRange});
  std::string streamed;
  ASSERT_OK(client().ReadStream(blob_, 5 << 20, 3 << 20, [&](std::span<const uint8_t> b) {
    streamed.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  }));
  EXPECT_EQ(streamed, Expected(5 << 20, 3 << 20));
}

TEST_F(RangeRead, IgnoredRangeHandsTheBytesBeforeItAsWholeChunks) {
  SetBlob(RandomBytes(8 << 20, 12));
  std::map<uint64_t, std::string> spare;
  client().SetSpareChunkHandler(
      1 << 20, [&](const BlobDescriptor& b, uint64_t off, std::span<const uint8_t> bytes) {
        EXPECT_EQ(b.digest, blob_.digest);
        spare[off].assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      });
  server_.AddFault(blob_path(), Fault{FaultKind::kIgnoreRange});
  std::string got;
  ASSERT_OK(Read((5 << 20) + 100, 4096, &got));
  EXPECT_EQ(got, Expected((5 << 20) + 100, 4096));
  // Chunks 0-4 came before the range, whole; chunk 5 only in part.
  ASSERT_EQ(spare.size(), 5u);
  for (uint64_t c = 0; c < 5; ++c) {
    ASSERT_TRUE(spare.count(c << 20)) << c;
    EXPECT_TRUE(spare[c << 20] == Expected(c << 20, 1 << 20)) << c;
  }
  // A 206 hands nothing.
  spare.clear();
  ASSERT_OK(Read(3 << 20, 4096, &got));
  EXPECT_TRUE(spare.empty());
}

TEST_F(RangeRead, IgnoredRangeWithAnotherLengthIsProtocolError) {
  // A 200 whose Content-Length is not the blob's is not the blob.
  server_.AddResource(blob_path(), blob_data_.substr(0, blob_.size - 1));
  server_.AddFault(blob_path(), Fault{FaultKind::kIgnoreRange});
  std::string got;
  Status st = Read(10, 100, &got);
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_NE(st.message().find("ignored Range"), std::string::npos) << st.message();
}

TEST_F(RangeRead, FullBodyAcceptedWhenTheRangeIsTheWholeBlob) {
  server_.AddFault(blob_path(), Fault{FaultKind::kIgnoreRange});
  std::string got;
  ASSERT_OK(Read(0, blob_.size, &got));
  EXPECT_EQ(got, blob_data_);
}

TEST_F(RangeRead, WrongContentRangeIsProtocolError) {
  server_.AddFault(blob_path(), Fault{FaultKind::kWrongContentRange});
  std::string got;
  Status st = Read(10, 100, &got);
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_NE(st.message().find("does not match"), std::string::npos) << st.message();
}

// A chunked 206 whose first chunk claims 4 GiB: curl takes the chunk
// framing that follows as body bytes. Nothing of such an answer may reach
// the sink (a cache would keep it), whatever its Content-Range says.
TEST_F(RangeRead, LyingChunkSizeNeverReachesTheSink) {
  SetBlob(RandomBytes(512 * 1024, 13));
  server_.SetLiar([](const RecordedRequest&, LieResponse& a) {
    if (a.status != 206) return;
    a.chunked = true;
    a.first_chunk_size = "ffffffff";
    a.close = true;
  });
  std::string got;
  Status st = client().ReadStream(blob_, 1000, 300000, [&](std::span<const uint8_t> b) {
    got.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  });
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_TRUE(got == Expected(1000, got.size()))
      << got.size() << " bytes reached the sink, not the blob's";
  EXPECT_EQ(got.size(), 0u);
}

// A ranged answer must state its length: chunked or delimited by the close
// of the connection, its end (and so its bytes) cannot be checked before
// they are handed on.
TEST_F(RangeRead, RangedAnswerWithoutContentLengthIsRefused) {
  for (bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "close-delimited");
    server_.SetLiar([chunked](const RecordedRequest&, LieResponse& a) {
      if (a.status != 206) return;
      a.chunked = chunked;
      a.close_delimited = !chunked;
    });
    std::string got;
    Status st = Read(10, 100, &got);
    EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
    EXPECT_NE(st.message().find("length"), std::string::npos) << st.message();
  }
}

TEST_F(RangeRead, MissingContentRangeIsProtocolError) {
  server_.AddFault(blob_path(), Fault{FaultKind::kMissingContentRange});
  std::string got;
  EXPECT_EQ(Read(10, 100, &got).code(), Code::kProtocol);
}

TEST_F(RangeRead, TotalMustEqualDescriptorSize) {
  BlobDescriptor wrong = blob_;
  wrong.size = blob_.size + 100;  // the server says the blob is smaller
  std::vector<uint8_t> buf(10);
  EXPECT_EQ(client().ReadAt(wrong, 0, buf).code(), Code::kProtocol);
}

TEST_F(RangeRead, Server416IsTyped) {
  server_.AddFault(blob_path(), Fault{FaultKind::kRangeNotSatisfiable});
  std::string got;
  EXPECT_EQ(Read(0, 10, &got).code(), Code::kRangeNotSatisfiable);
}

TEST_F(RangeRead, UnknownBlobIsNotFoundWithRegistryMessage) {
  BlobDescriptor missing = blob_;
  missing.digest = Sha256Digest("nothing");
  std::vector<uint8_t> buf(10);
  Status st = client().ReadAt(missing, 0, buf);
  EXPECT_EQ(st.code(), Code::kNotFound);
  EXPECT_NE(st.message().find("BLOB_UNKNOWN"), std::string::npos) << st.message();
  EXPECT_EQ(server_.RequestCount(BlobPath(missing.digest)), 1);  // not retried
}

TEST_F(RangeRead, MalformedDigestIsRejected) {
  BlobDescriptor bad = blob_;
  bad.digest = "sha256:../../etc";
  std::vector<uint8_t> buf(10);
  EXPECT_EQ(client().ReadAt(bad, 0, buf).code(), Code::kInvalidArgument);
}

TEST_F(Retry, ServerErrorsAreRetried) {
  server_.AddFault(blob_path(), Fault{FaultKind::kServiceUnavailable});
  server_.AddFault(blob_path(), Fault{FaultKind::kInternalError});
  server_.AddFault(blob_path(), Fault{FaultKind::kTooManyRequests});
  std::string got;
  ASSERT_OK(Read(0, 1000, &got));
  EXPECT_EQ(got, Expected(0, 1000));
  EXPECT_EQ(client().Counters().retries, 3u);
  EXPECT_EQ(server_.RequestCount(blob_path()), 4);
}

TEST_F(Retry, HonoursRetryAfter) {
  server_.AddFault(blob_path(), Fault{FaultKind::kTooManyRequests, /*retry_after_s=*/1});
  std::string got;
  auto start = std::chrono::steady_clock::now();
  ASSERT_OK(Read(0, 1000, &got));
  // A lower bound only: the client must have waited at least Retry-After.
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000));
}

TEST_F(Retry, HonoursRetryAfterAsAnHttpDate) {
  Fault f{FaultKind::kServiceUnavailable, /*retry_after_s=*/2};
  f.retry_after_as_date = true;
  server_.AddFault(blob_path(), f);
  std::string got;
  auto start = std::chrono::steady_clock::now();
  ASSERT_OK(Read(0, 1000, &got));
  EXPECT_EQ(got, Expected(0, 1000));
  // A lower bound only: the date is 2 s ahead at whole-second resolution.
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000));
  EXPECT_EQ(server_.RequestCount(blob_path()), 2);
}

TEST_F(Retry, RetryAfterDateBeyondBudgetFailsWithoutWaiting) {
  Fault f{FaultKind::kTooManyRequests, /*retry_after_s=*/3600};
  f.retry_after_as_date = true;
  server_.AddFault(blob_path(), f);
  std::string got;
  Status st = Read(0, 1000, &got);
  EXPECT_EQ(st.code(), Code::kTransient);
  EXPECT_NE(st.message().find("budget"), std::string::npos) << st.message();
  EXPECT_EQ(server_.RequestCount(blob_path()), 1);
}

TEST_F(Retry, RetryAfterBeyondBudgetFailsWithoutWaiting) {
  server_.AddFault(blob_path(), Fault{FaultKind::kServiceUnavailable, /*retry_after_s=*/3600});
  std::string got;
  Status st = Read(0, 1000, &got);
  EXPECT_EQ(st.code(), Code::kTransient);
  EXPECT_NE(st.message().find("budget"), std::string::npos) << st.message();
  EXPECT_EQ(server_.RequestCount(blob_path()), 1);
}

TEST_F(Retry, AttemptsAreBounded) {
  server_.AddFault(blob_path(), Fault{FaultKind::kInternalError}, 1000);
  std::string got;
  Status st = Read(0, 1000, &got);
  EXPECT_EQ(st.code(), Code::kTransient);
  EXPECT_EQ(server_.RequestCount(blob_path()), options_.retry.max_attempts);
}

TEST_F(Retry, TimeBudgetBoundsResumes) {
  // Every response resets after half its body: progress each time, so the
  // attempt count never runs out; the time budget must still end it.
  options_.retry.total_budget = std::chrono::milliseconds(300);
  options_.retry.max_attempts = 1000;
  server_.AddFault(blob_path(), Fault{FaultKind::kStall, -1, "", std::chrono::milliseconds(200)},
                   1000);
  std::string got;
  Status st = Read(0, 64 * 1024, &got);
  EXPECT_EQ(st.code(), Code::kTransient) << st.ToString();
}

}  // namespace
}  // namespace regfs::testing
