// IDX arrays (the MNIST / Fashion-MNIST file format) and gzip, for the IDX
// reader in data.cc; plain C++, no LibTorch, so the sanitizer build and
// fuzz/idx_fuzz cover them. Bad bytes are a DATA_LOSS or INVALID_ARGUMENT
// status naming the file, never a crash.
#ifndef TERN_WORKER_TRAINER_IDX_FORMAT_H_
#define TERN_WORKER_TRAINER_IDX_FORMAT_H_

#include <cstdint>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

// Inflates every member of the gzip stream `raw` (concatenated .gz files are
// one stream; bytes after the last member are ignored, as gzip -d does).
// DATA_LOSS naming `source` when the stream is corrupt or ends early, or
// inflates to more than `max_output` bytes (it stops there).
StatusOr<std::string> Gunzip(std::string_view raw, const std::string& source,
                             size_t max_output = SIZE_MAX);

// Gunzip for an IDX file: the output may not grow past the size that the IDX
// header at its start declares (header and data), so a small crafted .gz
// cannot make the reader allocate more than its header owns up to.
StatusOr<std::string> GunzipIdx(std::string_view raw, const std::string& source);

// The bytes of `path`, GunzipIdx-ed when they start with the gzip magic.
StatusOr<std::string> ReadMaybeGzip(const std::string& path);

struct IdxArray {
  std::vector<int64_t> dims;
  const char* data = nullptr;  // points into the bytes given to ParseIdx
};

// Checks the header of an unsigned-byte IDX array with `want_dims`
// dimensions (1: labels, 3: images, never 0 high or wide) and that exactly
// the data it describes follows. `what` ("images", "labels") words the
// errors, which name `path`.
StatusOr<IdxArray> ParseIdx(std::string_view bytes, const std::string& path, int want_dims,
                            const char* what);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_IDX_FORMAT_H_
