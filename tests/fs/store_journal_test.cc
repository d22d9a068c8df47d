#include "fs/store_journal.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "tests/support/fd_count.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

using StoreJournalTest = testing::FdCheckedTest;

// A daemon killed inside a write leaves a torn line: the successor sees the
// records before it, and its own records start on a line of their own.
TEST_F(StoreJournalTest, ATornLastLineIsDroppedAndWrittenOver) {
  Result<std::unique_ptr<StoreJournal>> j = StoreJournal::Create();
  ASSERT_OK(j.status());
  StoreJournal& first = **j;
  ASSERT_OK(first.Append({{"op", "image"}, {"name", "a"}}));
  ASSERT_OK(first.Append({{"op", "layer"}, {"digest", "sha256:1"}}));
  const std::string torn = "{\"op\":\"image\",\"na";
  ASSERT_EQ(pwrite(first.fd(), torn.data(), torn.size(), static_cast<off_t>(first.Bytes())),
            static_cast<ssize_t>(torn.size()));

  StoreJournal successor(UniqueFd(dup(first.fd())));
  Result<std::vector<nlohmann::json>> records = successor.ReadAll();
  ASSERT_OK(records.status());
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0]["name"], "a");
  EXPECT_EQ((*records)[1]["digest"], "sha256:1");
  ASSERT_OK(successor.Append({{"op", "image"}, {"name", "b"}}));

  StoreJournal next(UniqueFd(dup(first.fd())));
  records = next.ReadAll();
  ASSERT_OK(records.status());
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ((*records)[2]["name"], "b");
  EXPECT_EQ(next.Bytes(), successor.Bytes());
}

TEST_F(StoreJournalTest, ARecordThatIsNotJsonIsAnError) {
  Result<std::unique_ptr<StoreJournal>> j = StoreJournal::Create();
  ASSERT_OK(j.status());
  ASSERT_EQ(pwrite((*j)->fd(), "nonsense\n", 9, 0), 9);
  StoreJournal successor(UniqueFd(dup((*j)->fd())));
  EXPECT_FALSE(successor.ReadAll().ok());
}

}  // namespace
}  // namespace regfs
