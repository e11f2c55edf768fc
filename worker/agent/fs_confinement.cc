#include "worker/agent/fs_confinement.h"

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
constexpr uint64_t kReadRights =
    LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
// The rights a rule on a single file (not a directory) may carry.
constexpr uint64_t kFileRights = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                                 LANDLOCK_ACCESS_FS_READ_FILE | kTruncateV3;

uint64_t WriteRights(int abi) {
  uint64_t rights = kWriteRightsV1;
  if (abi >= 2) rights |= kReferV2;
  if (abi >= 3) rights |= kTruncateV3;
  return rights;
}

Status SyscallError(const std::string& what) {
  return InternalError(what + ": " + std::strerror(errno));
}

// Adds a rule allowing `rights` beneath `path` (of the file itself when it
// is not a directory). False when the path does not exist.
StatusOr<bool> AddRule(int ruleset_fd, const std::string& path, uint64_t rights,
                       bool directories_only) {
  const int fd = ::open(path.c_str(), O_PATH | O_CLOEXEC | (directories_only ? O_DIRECTORY : 0));
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return SyscallError("open " + path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    errno = error;
    return SyscallError("stat " + path);
  }
  struct landlock_path_beneath_attr beneath;
  std::memset(&beneath, 0, sizeof beneath);
  beneath.allowed_access = S_ISDIR(st.st_mode) ? rights : (rights & kFileRights);
  beneath.parent_fd = fd;
  const long added =
      ::syscall(SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &beneath, 0);
  const int error = errno;
  ::close(fd);
  if (added < 0) {
    errno = error;
    return SyscallError("landlock_add_rule " + path);
  }
  return true;
}

}  // namespace

std::vector<std::string> SystemReadablePaths() {
  return {
      "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt", "/proc", "/sys",
      "/dev",
      // The loader, name service, time zone and alternatives (symlinks into
      // /usr) of /etc; not /etc itself.
      "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.preload",
      "/etc/alternatives", "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group",
      "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/gai.conf",
      "/etc/services", "/etc/protocols", "/etc/os-release",
  };
}

int FsConfinement::AbiVersion() {
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0,
                             LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

StatusOr<FsConfinement> FsConfinement::Create(const FsRules& rules) {
  const int abi = AbiVersion();
  if (abi == 0) {
    return UnavailableError("this kernel offers no Landlock (Linux 5.13+, lsm=landlock)");
  }
  const uint64_t write_rights = WriteRights(abi);
  const uint64_t handled = write_rights | (rules.readable ? kReadRights : 0);
  struct landlock_ruleset_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.handled_access_fs = handled;
  // Only the first field: older kernels reject a larger struct with fields set.
  const long fd = ::syscall(SYS_landlock_create_ruleset, &attr,
                            sizeof(attr.handled_access_fs), 0);
  if (fd < 0) return SyscallError("landlock_create_ruleset");
  FsConfinement confinement(static_cast<int>(fd));
  confinement.confines_reads_ = rules.readable.has_value();
  for (const std::string& dir : rules.writable) {
    TERN_ASSIGN_OR_RETURN(const bool added,
                          AddRule(confinement.fd_, dir, handled, /*directories_only=*/true));
    if (added) confinement.allowed_.push_back(dir);
  }
  if (rules.readable) {
    for (const std::string& path : *rules.readable) {
      TERN_ASSIGN_OR_RETURN(const bool added,
                            AddRule(confinement.fd_, path, kReadRights, /*directories_only=*/false));
      if (added) confinement.readable_.push_back(path);
    }
  }
  return confinement;
}

FsConfinement::FsConfinement(FsConfinement&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      confines_reads_(other.confines_reads_),
      allowed_(std::move(other.allowed_)),
      readable_(std::move(other.readable_)) {}

FsConfinement& FsConfinement::operator=(FsConfinement&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    confines_reads_ = other.confines_reads_;
    allowed_ = std::move(other.allowed_);
    readable_ = std::move(other.readable_);
  }
  return *this;
}

FsConfinement::~FsConfinement() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace tern::agent
