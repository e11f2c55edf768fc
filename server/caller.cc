#include "server/caller.h"

#include <fnmatch.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

namespace tern::server {
namespace {

constexpr size_t kMaxOwnerLength = 128;

Status PermissionDenied(std::string message) {
  return Status(StatusCode::kPermissionDenied, std::move(message));
}

bool ValidOwner(const std::string& owner) {
  return !owner.empty() && owner.size() <= kMaxOwnerLength &&
         std::all_of(owner.begin(), owner.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// The verified client certificate's common name, "" without mutual TLS.
StatusOr<std::string> CertificateName(const grpc::ServerContext& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return std::string();
  const std::vector<grpc::string_ref> names =
      auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  const std::string name = names.empty() ? "" : std::string(names[0].data(), names[0].size());
  if (!ValidOwner(name)) {
    return PermissionDenied(
        "the client certificate's common name must be 1..128 printable ASCII characters "
        "without spaces: it is the caller's identity");
  }
  return name;
}

}  // namespace

StatusOr<Caller> CallerFromContext(const grpc::ServerContext& context) {
  TERN_ASSIGN_OR_RETURN(const std::string certificate_name, CertificateName(context));
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kOwnerMetadataKey);
  if (it == metadata.end()) {
    if (!certificate_name.empty()) return Caller{certificate_name, true};
    return Caller{kAnonymousOwner, false};
  }
  const std::string owner(it->second.data(), it->second.size());
  if (!ValidOwner(owner)) {
    return InvalidArgumentError(
        std::string("metadata ") + kOwnerMetadataKey +
        ": must be 1..128 printable ASCII characters without spaces");
  }
  if (certificate_name.empty()) return Caller{owner, false};
  if (owner != certificate_name) {
    return PermissionDenied(std::string("metadata ") + kOwnerMetadataKey + " \"" + owner +
                                 "\" differs from the client certificate's name \"" +
                                 certificate_name + "\"");
  }
  return Caller{owner, true};
}

StatusOr<std::string> AuthorizeAgent(const grpc::ServerContext& context,
                                     const std::string& agent_names) {
  TERN_ASSIGN_OR_RETURN(std::string name, CertificateName(context));
  if (name.empty() || fnmatch(agent_names.c_str(), name.c_str(), 0) == 0) return name;
  return PermissionDenied("the client certificate \"" + name +
                          "\" may not act as an agent (ternd --tls-agent-names " +
                          agent_names + ")");
}

namespace {

// Whether `caller` may act on every owner's jobs.
bool Unrestricted(const Caller& caller, const std::string& admin_names) {
  return !caller.authenticated ||
         (!admin_names.empty() && fnmatch(admin_names.c_str(), caller.owner.c_str(), 0) == 0);
}

}  // namespace

Status Authorize(const Caller& caller, const scheduler::Job& job, Action action,
                 const std::string& admin_names) {
  if (caller.owner == job.owner || Unrestricted(caller, admin_names)) return OkStatus();
  return PermissionDenied("job " + std::to_string(job.id) + " belongs to \"" + job.owner +
                          "\": only its owner (or an admin, ternd --tls-admin-names) can " +
                          (action == Action::kCancel ? "cancel" : "read") + " it");
}

StatusOr<std::string> ListableOwner(const Caller& caller, const std::string& requested_owner,
                                    const std::string& admin_names) {
  if (Unrestricted(caller, admin_names)) return requested_owner;
  if (!requested_owner.empty() && requested_owner != caller.owner) {
    return PermissionDenied("\"" + caller.owner + "\" may list only its own jobs, not \"" +
                            requested_owner + "\"'s (or be an admin, ternd --tls-admin-names)");
  }
  return caller.owner;
}

}  // namespace tern::server
