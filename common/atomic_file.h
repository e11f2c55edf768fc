// AtomicFile: a file written in pieces that appears at `path`, complete, only
// on Commit; the one crash-safe write in tern (WriteFileAtomically in
// file_util.h is AtomicFile for content in one piece, and both live in
// file_util.cc).
//
// Usage: AtomicFile f(path); f.Open(); f.Append(a); f.Append(b); f.Commit();
// It writes "<path>.tmp.<pid>.<n>" (created with `mode`), fsyncs it, renames
// it onto `path` and fsyncs the directory: after a crash at any moment,
// `path` holds the old content or the new one, never a mix. Dropped before
// Commit, it removes its temporary file. Every system call's result is
// checked. Not thread-safe: one object per file, on one thread.
#ifndef TERN_COMMON_ATOMIC_FILE_H_
#define TERN_COMMON_ATOMIC_FILE_H_

#include <string>
#include <string_view>

#include "common/status.h"

namespace tern {

class AtomicFile {
 public:
  enum class Replace {
    kYes,  // Commit replaces an existing `path`
    kNo,   // Commit fails with ALREADY_EXISTS when `path` exists
  };
  // `mode`: e.g. 0600 for a secret, so that it is never readable by more.
  explicit AtomicFile(std::string path, unsigned mode = 0644, Replace replace = Replace::kYes);
  ~AtomicFile();  // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Creates the temporary file. Errors name the file: NOT_FOUND (no such
  // directory), PERMISSION_DENIED, UNAVAILABLE (anything else).
  Status Open();
  Status Append(std::string_view data);
  // Syncs and closes the temporary file, renames it onto `path` and syncs
  // the directory. Errors as Open(); after an error `path` is as it was
  // (unless only the directory's sync failed).
  Status Commit();

 private:
  const std::string path_;
  const std::string tmp_;
  const unsigned mode_;
  const Replace replace_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace tern

#endif  // TERN_COMMON_ATOMIC_FILE_H_
