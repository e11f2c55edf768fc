#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "common/atomic_file.h"

namespace tern {
namespace {

Status Errno(const std::string& what, const std::string& path) {
  const int err = errno;
  const std::string msg = what + " " + path + ": " + std::strerror(err);
  if (err == ENOENT) return NotFoundError(msg);
  if (err == EACCES || err == EPERM) {
    return Status(StatusCode::kPermissionDenied, msg);
  }
  return Status(StatusCode::kUnavailable, msg);
}

// Closes the descriptor on every path out.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

}  // namespace

StatusOr<std::string> ReadFileToString(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Errno("cannot open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Errno("cannot stat", path);
  if (S_ISDIR(st.st_mode)) {
    return InvalidArgumentError(path + " is a directory, not a file");
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

namespace {

// Unique per object, so that concurrent writers of one path never share it.
std::string TempPathFor(const std::string& path) {
  static std::atomic<uint64_t> files{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(files.fetch_add(1));
}

}  // namespace

AtomicFile::AtomicFile(std::string path, unsigned mode, Replace replace)
    : path_(std::move(path)), tmp_(TempPathFor(path_)), mode_(mode), replace_(replace) {}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);  // abandoned: its error does not matter
  if (!committed_) ::unlink(tmp_.c_str());
}

Status AtomicFile::Open() {
  ::unlink(tmp_.c_str());  // a leftover of a crash: its mode or an open descriptor could leak
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode_));
  if (fd_ < 0) return Errno("cannot create", tmp_);
  return OkStatus();
}

Status AtomicFile::Append(std::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", tmp_);
    }
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

Status AtomicFile::Commit() {
  if (::fsync(fd_) != 0) return Errno("cannot fsync", tmp_);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return Errno("cannot close", tmp_);
  if (replace_ == Replace::kYes) {
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      return Errno("cannot rename onto", path_);
    }
  } else if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) return AlreadyExistsError("cannot create " + path_ + ": it exists");
    return Errno("cannot rename onto", path_);
  }
  committed_ = true;
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  FileDescriptor dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0) return Errno("cannot open directory", dir);
  // EINVAL: a file system that cannot sync directories (nothing to wait for).
  if (::fsync(dfd.get()) != 0 && errno != EINVAL) return Errno("cannot fsync directory", dir);
  if (::close(dfd.release()) != 0) return Errno("cannot close directory", dir);
  return OkStatus();
}

Status WriteFileAtomically(const std::string& path, std::string_view content, unsigned mode) {
  AtomicFile file(path, mode);
  TERN_RETURN_IF_ERROR(file.Open());
  TERN_RETURN_IF_ERROR(file.Append(content));
  return file.Commit();
}

Status MakeDirectories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return UnavailableError("cannot create directory " + path + ": " +
                                  ec.message());
  return OkStatus();
}

std::string FileChangeStamp(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  return std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "/" +
         std::to_string(st.st_size) + "/" + std::to_string(st.st_ino);
}

}  // namespace tern
