#include "server/caller.h"

#include <fnmatch.h>
#include <google/protobuf/util/time_util.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "common/config_text.h"
#include "common/error_reasons.h"
#include "common/utf8.h"

namespace tern::server {
namespace {

Status PermissionDenied(std::string message, const char* reason) {
  return Status(StatusCode::kPermissionDenied, std::move(message)).WithReason(reason);
}

// The verified client certificate's common name, "" without mutual TLS.
StatusOr<std::string> CertificateName(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return std::string();
  const std::vector<grpc::string_ref> names =
      auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  const std::string name = names.empty() ? "" : std::string(names[0].data(), names[0].size());
  if (!IsIdentityName(name)) {
    return PermissionDenied(
        "the client certificate's common name must be 1..128 printable ASCII characters "
        "without spaces: it is the caller's identity",
        error_reason::kCredentialInvalid);
  }
  return name;
}

Status Unauthenticated(std::string message, const char* reason = error_reason::kCredentialInvalid) {
  return Status(StatusCode::kUnauthenticated, std::move(message)).WithReason(reason);
}

// Who the peer proved to be: a client certificate or a bearer token.
struct Identity {
  std::string name;  // "" when neither
  bool from_token = false;
  TokenEntry token;  // from_token only
};

StatusOr<Identity> IdentityOf(const grpc::ServerContextBase& context, TokenTable* tokens) {
  Identity id;
  TERN_ASSIGN_OR_RETURN(id.name, CertificateName(context));
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    if (tokens != nullptr && id.name.empty()) {
      return Unauthenticated(
          "ternd requires a bearer token (ternctl --token-file) or a client certificate",
          error_reason::kCredentialMissing);
    }
    return id;
  }
  if (tokens == nullptr) {
    return Unauthenticated("ternd takes no bearer tokens (it was started without --token-file)");
  }
  const std::string value(it->second.data(), it->second.size());
  const std::string scheme = "bearer ";
  std::string lowered = value.substr(0, scheme.size());
  std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lowered != scheme) return Unauthenticated("authorization: expected \"Bearer <token>\"");
  const std::optional<TokenEntry> entry = tokens->Find(value.substr(scheme.size()));
  if (!entry) return Unauthenticated("unknown or revoked bearer token");
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  if (entry->expires_unix_s != 0 && now >= entry->expires_unix_s) {
    return Unauthenticated("the bearer token of \"" + entry->name + "\" expired at " +
                           google::protobuf::util::TimeUtil::ToString(
                               google::protobuf::util::TimeUtil::SecondsToTimestamp(
                                   entry->expires_unix_s)));
  }
  if (!id.name.empty() && id.name != entry->name) {
    return PermissionDenied("the bearer token's name \"" + entry->name +
                                "\" differs from the client certificate's name \"" + id.name + "\"",
                            error_reason::kCredentialInvalid);
  }
  id.name = entry->name;
  id.from_token = true;
  id.token = *entry;
  return id;
}

}  // namespace

StatusOr<Caller> CallerFromContext(const grpc::ServerContextBase& context, TokenTable* tokens) {
  TERN_ASSIGN_OR_RETURN(const Identity id, IdentityOf(context, tokens));
  const std::string what = id.from_token ? "bearer token's" : "client certificate's";
  const std::string proven_by = id.from_token ? "bearer token" : "client certificate";
  const bool admin = id.from_token && id.token.admin;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kOwnerMetadataKey);
  if (it == metadata.end()) {
    if (!id.name.empty()) return Caller{id.name, true, admin, proven_by};
    return Caller{kAnonymousOwner, false, false, "anonymous"};
  }
  const std::string owner(it->second.data(), it->second.size());
  if (!IsIdentityName(owner)) {
    return InvalidArgumentError(std::string("metadata ") + kOwnerMetadataKey +
                                ": must be 1..128 printable ASCII characters without spaces")
        .WithReason(error_reason::kOwnerInvalid)
        .WithMetadata("metadata_key", kOwnerMetadataKey);
  }
  if (id.name.empty()) return Caller{owner, false, false, "x-tern-owner claim"};
  if (owner != id.name) {
    return PermissionDenied(std::string("metadata ") + kOwnerMetadataKey + " " + Quoted(owner) +
                                " differs from the " + what + " name " + Quoted(id.name),
                            error_reason::kOwnerMismatch);
  }
  return Caller{owner, true, admin, proven_by};
}

StatusOr<std::string> AuthorizeAgent(const grpc::ServerContextBase& context,
                                     const std::string& agent_names, TokenTable* tokens) {
  TERN_ASSIGN_OR_RETURN(const Identity id, IdentityOf(context, tokens));
  if (id.from_token) {
    if (id.token.agent) return id.name;
    return PermissionDenied("the bearer token of " + Quoted(id.name) +
                                " may not act as an agent (its line in ternd's --token-file has "
                                "no `agent` role)",
                            error_reason::kNotAnAgent);
  }
  if (id.name.empty() || fnmatch(agent_names.c_str(), id.name.c_str(), 0) == 0) return id.name;
  return PermissionDenied("the client certificate " + Quoted(id.name) +
                              " may not act as an agent (ternd --tls-agent-names " + agent_names +
                              ")",
                          error_reason::kNotAnAgent);
}

bool SeesEveryJob(const Caller& caller, const std::string& admin_names) {
  return !caller.authenticated || caller.admin ||
         (!admin_names.empty() && fnmatch(admin_names.c_str(), caller.owner.c_str(), 0) == 0);
}

bool MayAccess(const Caller& caller, const scheduler::Job& job, const std::string& admin_names) {
  return caller.owner == job.owner || SeesEveryJob(caller, admin_names);
}

StatusOr<std::string> ListableOwner(const Caller& caller, const std::string& requested_owner,
                                    const std::string& admin_names) {
  if (SeesEveryJob(caller, admin_names)) return requested_owner;
  if (!requested_owner.empty() && requested_owner != caller.owner) {
    return PermissionDenied(Quoted(caller.owner) + " may list only its own jobs, not " +
                                Quoted(requested_owner) +
                                "'s (or be an admin, ternd --tls-admin-names)",
                            error_reason::kListOtherOwner);
  }
  return caller.owner;
}

}  // namespace tern::server
