// Fuzz target: the CIFAR binary reader (trainer::ReadCifar), which reads
// whole files from a directory. The first byte picks CIFAR-10 or CIFAR-100
// (bit 0), whether the file lies in the archive's sub-folder (bit 1) and
// how the rest makes the test split's file (test_batch.bin / test.bin),
// written to a directory of this process: as is (bit 2 clear), or (bit 2
// set) as the label bytes of whole records whose pixels are filled in here,
// so that mutations reach the labels instead of 3072 pixel bytes.
// Properties: nothing crashes or reads out of bounds; an accepted file has
// a positive whole number of records and every image and label is the bytes
// of its record (labels within the classes, CIFAR-100's coarse labels below
// 20); a refused one is DATA_LOSS naming the file.
// ReadCifar returns tensors, so this target links LibTorch and is not built
// by scripts/sanitize.sh (a LibTorch-free build); ctest runs it in the
// normal build. A torch-free record parser, as idx_format.h is for IDX,
// would put it under the sanitizers.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/file_util.h"
#include "fuzz/fuzz_target.h"
#include "worker/trainer/data.h"

namespace {

namespace fs = std::filesystem;

// A directory of this process, removed at exit.
const std::string& WorkDir() {
  struct Dir {
    Dir() : path((fs::temp_directory_path() / ("cifar_fuzz_" + std::to_string(::getpid())))
                     .string()) {}
    ~Dir() {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    }
    std::string path;
  };
  static const Dir dir;
  return dir.path;
}

std::string Records(int n, bool cifar100) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (cifar100) out += static_cast<char>(i % 20);
    out += static_cast<char>(cifar100 ? 99 - i % 100 : 9 - i % 10);
    for (int k = 0; k < 3072; ++k) out += static_cast<char>((i * 7 + k) % 253);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool cifar100 = (data[0] & 1) != 0;
  const bool sub_folder = (data[0] & 2) != 0;
  const bool labels_only = (data[0] & 4) != 0;
  const size_t label_bytes = cifar100 ? 2 : 1;
  const size_t record = label_bytes + 3072;
  std::string bytes(tern::fuzz::AsText(data + 1, size - 1));
  if (labels_only) {
    const std::string labels = bytes;
    bytes.clear();
    for (size_t i = 0; i + label_bytes <= labels.size() && i < 64 * label_bytes;
         i += label_bytes) {
      bytes += labels.substr(i, label_bytes);
      for (int k = 0; k < 3072; ++k) bytes += static_cast<char>((i + static_cast<size_t>(k)) % 251);
    }
  }
  const std::string dir = WorkDir();
  fs::remove_all(dir);
  const std::string folder =
      sub_folder ? dir + (cifar100 ? "/cifar-100-binary" : "/cifar-10-batches-bin") : dir;
  TERN_CHECK(tern::MakeDirectories(folder).ok());
  const std::string path = folder + (cifar100 ? "/test.bin" : "/test_batch.bin");
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    TERN_CHECK(out.good()) << path;
  }

  const tern::StatusOr<tern::trainer::ImageDataset> read =
      tern::trainer::ReadCifar(dir, cifar100, /*train=*/false);
  if (!read.ok()) {
    TERN_CHECK(read.status().code() == tern::StatusCode::kDataLoss) << read.status();
    TERN_CHECK(read.status().message().rfind(path, 0) == 0) << read.status();
    return 0;
  }
  TERN_CHECK(!bytes.empty() && bytes.size() % record == 0) << bytes.size();
  const int64_t n = static_cast<int64_t>(bytes.size() / record);
  TERN_CHECK(read->images.sizes() == (std::vector<int64_t>{n, 3, 32, 32}))
      << read->images.sizes();
  TERN_CHECK(read->images.scalar_type() == at::kByte);
  TERN_CHECK(read->labels.sizes() == (std::vector<int64_t>{n}));
  TERN_CHECK(read->num_classes == (cifar100 ? 100 : 10));
  const at::Tensor images = read->images.contiguous();
  const at::Tensor labels = read->labels.contiguous();
  for (int64_t i = 0; i < n; ++i) {
    const char* rec = bytes.data() + static_cast<size_t>(i) * record;
    const int64_t label = labels[i].item<int64_t>();
    TERN_CHECK(label == static_cast<unsigned char>(rec[label_bytes - 1])) << "record " << i;
    TERN_CHECK(label >= 0 && label < read->num_classes) << label;
    if (cifar100) TERN_CHECK(static_cast<unsigned char>(rec[0]) < 20) << "record " << i;
    TERN_CHECK(std::memcmp(images.data_ptr<uint8_t>() + i * 3072, rec + label_bytes, 3072) == 0)
        << "record " << i;
  }
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {std::string(1, '\x00') + Records(2, false), std::string(1, '\x01') + Records(2, true),
          std::string(1, '\x02') + Records(1, false), std::string(1, '\x03') + Records(3, true),
          std::string("\x04\x00\x09\x05", 4),                // CIFAR-10 labels 0, 9, 5
          std::string("\x07\x13\x63\x00\x00\x0a\x32", 7)};  // CIFAR-100 (coarse, fine) pairs
}
