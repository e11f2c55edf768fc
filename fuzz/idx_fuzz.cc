// Fuzz target: the IDX reader's parsers (trainer::GunzipIdx and
// trainer::ParseIdx, the path of every Fashion-MNIST / MNIST file). The first
// byte picks images (3 dimensions) or labels (1); the rest is the file, which
// is gunzipped first when it starts with the gzip magic, as ReadIdx does.
// Properties: nothing crashes or reads out of bounds; an accepted array's
// dimensions multiply to exactly the bytes after its header, which ends
// where its data starts.
#include <cstdint>
#include <string>
#include <vector>

#include <zlib.h>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "tests/common/gzip.h"
#include "worker/trainer/idx_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int want_dims = (data[0] & 1) != 0 ? 3 : 1;
  std::string bytes(tern::fuzz::AsText(data + 1, size - 1));
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x1f &&
      static_cast<uint8_t>(bytes[1]) == 0x8b) {
    tern::StatusOr<std::string> inflated = tern::trainer::GunzipIdx(bytes, "fuzz.gz");
    if (!inflated.ok()) return 0;
    bytes = *std::move(inflated);
  }
  tern::StatusOr<tern::trainer::IdxArray> array =
      tern::trainer::ParseIdx(bytes, "fuzz", want_dims, want_dims == 3 ? "images" : "labels");
  if (!array.ok()) return 0;
  TERN_CHECK(static_cast<int>(array->dims.size()) == want_dims);
  uint64_t count = 1;
  for (const int64_t d : array->dims) count *= static_cast<uint64_t>(d);
  const size_t header = 4 + 4 * array->dims.size();
  TERN_CHECK(array->data == bytes.data() + header);
  TERN_CHECK(count == bytes.size() - header) << count << " vs " << bytes.size() - header;
  return 0;
}

using tern::testing_util::Gzip;

std::vector<std::string> TernFuzzSeeds() {
  // 3 images of 2 x 4 and their 3 labels, plain and gzipped; a labels file
  // of two concatenated gzip members.
  std::string images("\x00\x00\x08\x03\x00\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00\x04", 16);
  for (int i = 0; i < 24; ++i) images += static_cast<char>(i * 11);
  const std::string labels("\x00\x00\x08\x01\x00\x00\x00\x03\x07\x01\x09", 11);
  return {std::string(1, '\x01') + images,
          std::string(1, '\x00') + labels,
          std::string(1, '\x01') + Gzip(images),
          std::string(1, '\x00') + Gzip(labels.substr(0, 6)) + Gzip(labels.substr(6))};
}
