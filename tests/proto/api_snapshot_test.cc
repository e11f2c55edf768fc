// The tern.v1 API keeps every field, enum value and method of the committed
// snapshot (proto/tern/v1/api.snapshot): numbers never change meaning.
#include "proto/snapshot/api_snapshot.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace tern::api_snapshot {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool Contains(const std::vector<std::string>& lines, const std::string& line) {
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

TEST(ApiSnapshotTest, TheCompiledApiKeepsEveryLineOfTheCommittedSnapshot) {
  const std::string text = ReadFile(TERN_API_SNAPSHOT_PATH);
  const std::vector<std::string> snapshot = ParseSnapshot(text);
  ASSERT_GT(snapshot.size(), 100u) << TERN_API_SNAPSHOT_PATH << " is missing or nearly empty";
  const std::vector<std::string> problems = Incompatibilities(snapshot, Describe(TernV1Files()));
  std::string report;
  for (const std::string& p : problems) report += "  " + p + "\n";
  EXPECT_TRUE(problems.empty())
      << "The tern.v1 API changed the meaning of fields, enum values or methods that clients "
         "rely on:\n"
      << report
      << "Restore them (a removed field's number must be `reserved`, never reused). Additions "
         "are fine.";
}

TEST(ApiSnapshotTest, TheCommittedSnapshotListsEveryItemOfTheCompiledApi) {
  const std::vector<std::string> snapshot = ParseSnapshot(ReadFile(TERN_API_SNAPSHOT_PATH));
  std::string missing;
  for (const std::string& line : Describe(TernV1Files())) {
    if (!Contains(snapshot, line)) missing += "  " + line + "\n";
  }
  EXPECT_TRUE(missing.empty()) << "New API items are not in " << TERN_API_SNAPSHOT_PATH << ":\n"
                               << missing
                               << "Run scripts/update-api-snapshot.sh and commit the snapshot.";
}

TEST(ApiSnapshotTest, DescribeWritesFieldsValuesAndMethods) {
  const std::vector<std::string> lines = Describe(TernV1Files());
  EXPECT_TRUE(Contains(lines, "field tern.v1.Job id = 1 string optional"));
  EXPECT_TRUE(Contains(lines, "field tern.v1.JobSpec labels = 3 map<string, string> repeated"));
  EXPECT_TRUE(Contains(lines, "field tern.v1.JobSpec max_restarts = 5 int32 proto3_optional"));
  EXPECT_TRUE(
      Contains(lines, "field tern.v1.JobEvent progress = 11 tern.v1.Progress optional oneof kind"));
  EXPECT_TRUE(Contains(lines, "value tern.v1.JobState JOB_STATE_QUEUED = 1"));
  EXPECT_TRUE(Contains(
      lines,
      "method tern.v1.JobService.WatchJob tern.v1.WatchJobRequest -> stream tern.v1.JobEvent"));
  EXPECT_TRUE(std::is_sorted(lines.begin(), lines.end()));
  for (const std::string& line : lines) {
    EXPECT_EQ(line.find("LabelsEntry"), std::string::npos) << line;  // map entries inline
  }
}

// The comparison itself, on tampered snapshots.
TEST(ApiSnapshotTest, RemovedRenumberedRetypedAndRenamedItemsAreReported) {
  const std::vector<std::string> before = {
      "field tern.v1.Job id = 1 string optional",
      "field tern.v1.Job spec = 2 tern.v1.JobSpec optional",
      "field tern.v1.Job restarts = 10 int32 optional",
      "value tern.v1.JobState JOB_STATE_QUEUED = 1",
      "method tern.v1.JobService.GetJob tern.v1.GetJobRequest -> tern.v1.Job",
  };
  EXPECT_TRUE(Incompatibilities(before, before).empty());

  std::vector<std::string> added = before;
  added.push_back("field tern.v1.Job name = 17 string optional");
  added.push_back("value tern.v1.JobState JOB_STATE_CANCELLING = 8");
  EXPECT_TRUE(Incompatibilities(before, added).empty()) << "additions are compatible";

  std::vector<std::string> after = {
      "field tern.v1.Job id = 3 string optional",        // renumbered
      "field tern.v1.Job spec = 2 string optional",      // retyped
      "field tern.v1.Job attempts = 10 int32 optional",  // renamed
      "value tern.v1.JobState JOB_STATE_QUEUED = 2",     // renumbered
                                                         // GetJob removed
  };
  const std::vector<std::string> problems = Incompatibilities(before, after);
  ASSERT_EQ(problems.size(), 5u);
  EXPECT_EQ(problems[0],
            "\"field tern.v1.Job id = 1 string optional\" changed; now: \"field tern.v1.Job id = "
            "3 string optional\"");
  EXPECT_NE(problems[1].find("now: \"field tern.v1.Job spec = 2 string optional\""),
            std::string::npos)
      << problems[1];
  EXPECT_NE(problems[2].find("now: \"field tern.v1.Job attempts = 10 int32 optional\""),
            std::string::npos)
      << problems[2];
  EXPECT_NE(problems[3].find("JOB_STATE_QUEUED = 2"), std::string::npos) << problems[3];
  EXPECT_EQ(problems[4],
            "\"method tern.v1.JobService.GetJob tern.v1.GetJobRequest -> tern.v1.Job\" was "
            "removed");

  // A label change (repeated -> singular) is a change too.
  EXPECT_EQ(Incompatibilities({"field tern.v1.X a = 1 int32 repeated"},
                              {"field tern.v1.X a = 1 int32 optional"})
                .size(),
            1u);
}

TEST(ApiSnapshotTest, TheCommittedSnapshotWithATamperedLineFails) {
  std::vector<std::string> snapshot = ParseSnapshot(ReadFile(TERN_API_SNAPSHOT_PATH));
  ASSERT_TRUE(Contains(snapshot, "field tern.v1.Job id = 1 string optional"));
  std::replace(snapshot.begin(), snapshot.end(),
               std::string("field tern.v1.Job id = 1 string optional"),
               std::string("field tern.v1.Job id = 1 int64 optional"));
  EXPECT_EQ(Incompatibilities(snapshot, Describe(TernV1Files())).size(), 1u);
}

TEST(ApiSnapshotTest, ParseSnapshotSkipsCommentsAndBlankLines) {
  EXPECT_EQ(ParseSnapshot("# header\n\nfield a b = 1 int32 optional\r\n  \n"),
            std::vector<std::string>{"field a b = 1 int32 optional"});
}

}  // namespace
}  // namespace tern::api_snapshot
