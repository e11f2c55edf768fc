#include "server/rendezvous_key.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "common/file_util.h"

namespace tern::server {
namespace {

class RendezvousKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-rendezvous-key-test-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path() const { return (dir_ / "ternd.db.rendezvous-key").string(); }

  std::filesystem::path dir_;
};

TEST_F(RendezvousKeysTest, TheSecretIsCreatedPrivateAndGivesTheSameKeysAfterARestart) {
  StatusOr<RendezvousKeys> first = RendezvousKeys::LoadOrCreate(Path());
  ASSERT_TRUE(first.ok()) << first.status();
  struct stat st;
  ASSERT_EQ(::stat(Path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  StatusOr<std::string> text = ReadFileToString(Path());
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->size(), 65u);  // 64 hex characters and a newline

  const std::string key = first->ForAttempt(7, 1, 1700000000000000);
  EXPECT_EQ(key.size(), 32u);
  EXPECT_EQ(key.find_first_not_of("0123456789abcdef"), std::string::npos);
  StatusOr<RendezvousKeys> again = RendezvousKeys::LoadOrCreate(Path());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ForAttempt(7, 1, 1700000000000000), key);

  // Every attempt of every job gets its own key.
  std::set<std::string> keys;
  for (int64_t job = 1; job <= 20; ++job) {
    for (int attempt = 1; attempt <= 5; ++attempt) {
      keys.insert(first->ForAttempt(job, attempt, 1700000000000000));
    }
  }
  keys.insert(first->ForAttempt(7, 1, 1700000000000001));  // a job id reused after a new db
  EXPECT_EQ(keys.size(), 101u);

  // Another ternd (another secret) derives other keys.
  std::filesystem::remove(Path());
  StatusOr<RendezvousKeys> other = RendezvousKeys::LoadOrCreate(Path());
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->ForAttempt(7, 1, 1700000000000000), key);
}

TEST_F(RendezvousKeysTest, AnExposedOrDamagedSecretIsRefused) {
  ASSERT_TRUE(RendezvousKeys::LoadOrCreate(Path()).ok());
  ASSERT_EQ(::chmod(Path().c_str(), 0640), 0);
  StatusOr<RendezvousKeys> exposed = RendezvousKeys::LoadOrCreate(Path());
  EXPECT_EQ(exposed.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(exposed.status().message().find("chmod 600"), std::string::npos)
      << exposed.status();

  for (const std::string& text : {std::string("abc\n"), std::string(64, 'g'),
                                  std::string(64, 'A') + "\n", std::string()}) {
    ASSERT_TRUE(WriteFileAtomically(Path(), text, 0600).ok());
    StatusOr<RendezvousKeys> damaged = RendezvousKeys::LoadOrCreate(Path());
    EXPECT_EQ(damaged.status().code(), StatusCode::kDataLoss) << text;
    EXPECT_NE(damaged.status().message().find("64 lowercase hex characters"), std::string::npos);
  }
}

}  // namespace
}  // namespace tern::server
