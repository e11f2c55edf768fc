// The torch-free IDX and gzip parsing (worker/trainer/idx_format.h); the
// reader built on it is tested with real files in data_test.cc.
#include "worker/trainer/idx_format.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <string>

#include "tests/common/gzip.h"

namespace tern::trainer {
namespace {

using testing_util::Gzip;

// A labels file header (magic 0x00000801) declaring `count` labels.
std::string LabelsHeader(uint32_t count) {
  std::string h = {0, 0, 8, 1};
  for (int shift = 24; shift >= 0; shift -= 8) h += static_cast<char>((count >> shift) & 0xff);
  return h;
}

TEST(IdxFormatTest, GunzipIdxInflatesNoMoreThanTheHeaderDeclares) {
  const std::string ok = LabelsHeader(10) + std::string(10, '\x03');
  const StatusOr<std::string> inflated = GunzipIdx(Gzip(ok), "labels.gz");
  ASSERT_TRUE(inflated.ok()) << inflated.status();
  EXPECT_EQ(*inflated, ok);

  // 64 MiB of zeros behind a header that owns up to 10 bytes: a ~64 KiB
  // file. Inflation stops at the declared 18 bytes instead of allocating it all.
  const std::string bomb = Gzip(LabelsHeader(10) + std::string(64 << 20, '\0'));
  EXPECT_LT(bomb.size(), 100u << 10);
  const Status refused = GunzipIdx(bomb, "labels.gz").status();
  EXPECT_EQ(refused.code(), StatusCode::kDataLoss);
  EXPECT_EQ(refused.message(),
            "labels.gz: inflates to more than 18 bytes (the size its IDX header declares)");

  // A header that claims more than follows inflates what there is; ParseIdx
  // then names the shortfall.
  const StatusOr<std::string> short_data =
      GunzipIdx(Gzip(LabelsHeader(1000) + std::string(10, '\x01')), "labels.gz");
  ASSERT_TRUE(short_data.ok()) << short_data.status();
  EXPECT_EQ(ParseIdx(*short_data, "labels.gz", 1, "labels").status().code(),
            StatusCode::kDataLoss);
  // Not IDX at all: no bound, ParseIdx says what is wrong.
  EXPECT_TRUE(GunzipIdx(Gzip("ab"), "x.gz").ok());
}

TEST(IdxFormatTest, GunzipStopsAtItsLimit) {
  const std::string gz = Gzip(std::string(100000, 'x'));
  EXPECT_EQ(Gunzip(gz, "x.gz")->size(), 100000u);
  EXPECT_EQ(Gunzip(gz, "x.gz", 100000)->size(), 100000u);
  EXPECT_EQ(Gunzip(gz, "x.gz", 99999).status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace tern::trainer
