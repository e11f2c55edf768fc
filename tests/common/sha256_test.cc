#include "common/sha256.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace tern {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 h;  // incremental == one shot
  h.Update("ab");
  h.Update("c");
  EXPECT_EQ(h.HexDigest(), Sha256Hex("abc"));
}

TEST(Sha256Test, LowerHex) {
  EXPECT_EQ(LowerHex(std::string("\x00\x0f\xa5\xff", 4)), "000fa5ff");
  EXPECT_EQ(LowerHex(""), "");
}

TEST(Sha256Test, DigestFileReadsSizeAndDigest) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("tern-sha256-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string content(3 << 20, 'x');  // more than one 1 MiB block
  const std::string path = (dir / "artifact.tern").string();
  std::ofstream(path, std::ios::binary) << content;
  StatusOr<FileDigest> digest = DigestFile(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(digest->size_bytes, static_cast<int64_t>(content.size()));
  EXPECT_EQ(digest->sha256, Sha256Hex(content));

  EXPECT_EQ(DigestFile((dir / "missing").string()).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(DigestFile(dir.string()).status().code(), StatusCode::kNotFound);  // a directory
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern
