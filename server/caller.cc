#include "server/caller.h"

#include <algorithm>

namespace tern::server {

constexpr size_t kMaxOwnerLength = 128;

StatusOr<Caller> CallerFromContext(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kOwnerMetadataKey);
  if (it == metadata.end()) return Caller{kAnonymousOwner};
  const std::string owner(it->second.data(), it->second.size());
  const bool printable = std::all_of(
      owner.begin(), owner.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (owner.empty() || owner.size() > kMaxOwnerLength || !printable) {
    return InvalidArgumentError(
        std::string("metadata ") + kOwnerMetadataKey +
        ": must be 1..128 printable ASCII characters without spaces");
  }
  return Caller{owner};
}

Status Authorize(const Caller& /*caller*/, const scheduler::Job& /*job*/,
                 Action /*action*/) {
  return OkStatus();
}

}  // namespace tern::server
