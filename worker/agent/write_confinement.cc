#include "worker/agent/write_confinement.h"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

namespace tern::agent {
namespace {

// Rights by the ABI version that introduced them (linux/landlock.h).
constexpr uint64_t kWriteRightsV1 =
    LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |
    LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR |
    LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |
    LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM;
constexpr uint64_t kReferV2 = 1ULL << 13;    // LANDLOCK_ACCESS_FS_REFER
constexpr uint64_t kTruncateV3 = 1ULL << 14;  // LANDLOCK_ACCESS_FS_TRUNCATE

uint64_t WriteRights(int abi) {
  uint64_t rights = kWriteRightsV1;
  if (abi >= 2) rights |= kReferV2;
  if (abi >= 3) rights |= kTruncateV3;
  return rights;
}

Status SyscallError(const char* what) {
  return InternalError(std::string(what) + ": " + std::strerror(errno));
}

}  // namespace

int WriteConfinement::AbiVersion() {
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0,
                             LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

StatusOr<WriteConfinement> WriteConfinement::Create(
    const std::vector<std::string>& writable_dirs) {
  const int abi = AbiVersion();
  if (abi == 0) {
    return UnavailableError("this kernel offers no Landlock (Linux 5.13+, lsm=landlock)");
  }
  const uint64_t rights = WriteRights(abi);
  struct landlock_ruleset_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.handled_access_fs = rights;
  // Only the first field: older kernels reject a larger struct with fields set.
  const long fd = ::syscall(SYS_landlock_create_ruleset, &attr,
                            sizeof(attr.handled_access_fs), 0);
  if (fd < 0) return SyscallError("landlock_create_ruleset");
  WriteConfinement confinement(static_cast<int>(fd));
  for (const std::string& dir : writable_dirs) {
    const int dir_fd = ::open(dir.c_str(), O_PATH | O_CLOEXEC | O_DIRECTORY);
    if (dir_fd < 0) {
      if (errno == ENOENT || errno == ENOTDIR) continue;
      return SyscallError(("open " + dir).c_str());
    }
    struct landlock_path_beneath_attr beneath;
    std::memset(&beneath, 0, sizeof beneath);
    beneath.allowed_access = rights;
    beneath.parent_fd = dir_fd;
    const long added = ::syscall(SYS_landlock_add_rule, confinement.fd_,
                                 LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
    const int error = errno;
    ::close(dir_fd);
    if (added < 0) {
      errno = error;
      return SyscallError(("landlock_add_rule " + dir).c_str());
    }
    confinement.allowed_.push_back(dir);
  }
  return confinement;
}

WriteConfinement::WriteConfinement(WriteConfinement&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), allowed_(std::move(other.allowed_)) {}

WriteConfinement& WriteConfinement::operator=(WriteConfinement&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    allowed_ = std::move(other.allowed_);
  }
  return *this;
}

WriteConfinement::~WriteConfinement() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace tern::agent
