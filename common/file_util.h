// Whole-file reads and crash-safe writes.
//
// WriteFileAtomically writes "<path>.tmp.<pid>", fsyncs it, renames it over
// `path` and fsyncs the directory: after a crash at any moment, `path` holds
// either the old content or the new one, never a mix. Thread-safe for
// distinct paths.
#ifndef TERN_COMMON_FILE_UTIL_H_
#define TERN_COMMON_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "common/status.h"

namespace tern {

StatusOr<std::string> ReadFileToString(const std::string& path);
// Writes a temporary file (created with `mode`, e.g. 0600 for a secret, so
// that it is never readable by more), fsyncs it and renames it onto `path`.
Status WriteFileAtomically(const std::string& path, std::string_view content,
                           unsigned mode = 0644);
// Creates `path` and missing parents (like mkdir -p).
Status MakeDirectories(const std::string& path);
// What changes when a file is replaced or rewritten (its mtime, size and
// inode), "" when it cannot be examined: how files that are re-read on change
// (tokens, certificates) are followed.
std::string FileChangeStamp(const std::string& path);

}  // namespace tern

#endif  // TERN_COMMON_FILE_UTIL_H_
