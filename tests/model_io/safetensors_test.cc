#include "model_io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

namespace tern::model_io {
namespace {

SafetensorsFile Sample() {
  SafetensorsFile file;
  file.metadata["format"] = "pt";
  file.tensors.push_back(FloatTensor("conv1.weight", {2, 1, 1, 3}, {1, -2, 3, 0.5f, 0, -1}));
  file.tensors.push_back(Int8Tensor("codes", {5}, {-1, 0, 1, 1, -1}));
  SafetensorsTensor counter{"bn1.num_batches_tracked", Dtype::kI64, {}, std::string(8, '\0')};
  counter.data[0] = 7;
  file.tensors.push_back(counter);
  return file;
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  const std::string bytes = SerializeSafetensors(Sample());
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  EXPECT_EQ(header % 8, 0u);  // the data starts 8-byte aligned
  EXPECT_EQ(bytes[8], '{');
  EXPECT_TRUE(LooksLikeSafetensors(bytes));
  StatusOr<SafetensorsFile> back = ParseSafetensors(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->metadata.at("format"), "pt");
  ASSERT_EQ(back->tensors.size(), 3u);
  const SafetensorsFile want = Sample();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back->tensors[i].name, want.tensors[i].name);
    EXPECT_EQ(back->tensors[i].dtype, want.tensors[i].dtype);
    EXPECT_EQ(back->tensors[i].shape, want.tensors[i].shape);
    EXPECT_EQ(back->tensors[i].data, want.tensors[i].data);
  }
  EXPECT_EQ(back->tensors[2].numel(), 1);  // a scalar
}

TEST(SafetensorsTest, EveryTruncationIsAClearError) {
  const std::string bytes = SerializeSafetensors(Sample());
  for (size_t n = 0; n < bytes.size(); ++n) {
    StatusOr<SafetensorsFile> parsed = ParseSafetensors(bytes.substr(0, n));
    ASSERT_FALSE(parsed.ok()) << n;
    EXPECT_EQ(parsed.status().code(), StatusCode::kDataLoss) << n;
  }
}

// A file with `header` as its JSON and `data_bytes` zero bytes of data.
std::string WithHeader(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

TEST(SafetensorsTest, RejectsMalformedHeadersNamingTheProblem) {
  const struct {
    std::string header;
    std::string message;
  } cases[] = {
      {R"({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}})", "unsupported dtype"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "4 bytes for 2"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 40]}})", "outside"},
      {R"({"a": {"dtype": "F32", "shape": [1]}})", "data_offsets"},
      {R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "bad dimension"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})",
       "overlaps"},
      {R"({"__metadata__": {"k": 1}})", "not a string"},
      {R"([1, 2])", "not a JSON object"},
  };
  for (const auto& c : cases) {
    StatusOr<SafetensorsFile> parsed = ParseSafetensors(WithHeader(c.header, 8));
    ASSERT_FALSE(parsed.ok()) << c.header;
    EXPECT_EQ(parsed.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(parsed.status().message().find(c.message), std::string::npos)
        << parsed.status().message();
  }
  EXPECT_FALSE(LooksLikeSafetensors("PK\3\4 a zip archive"));
  EXPECT_FALSE(LooksLikeSafetensors("TERN...................."));
}

}  // namespace
}  // namespace tern::model_io
