#include "server/rpc.h"

#include <google/protobuf/any.pb.h>
#include <google/protobuf/descriptor.h>

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error_reasons.h"
#include "common/logging.h"
#include "common/utf8.h"
#include "google/api/field_behavior.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace tern::server {
namespace {

#define TERN_SAME_CODE(ours, grpcs)                   \
  static_assert(static_cast<int>(StatusCode::ours) == \
                static_cast<int>(grpc::StatusCode::grpcs))
TERN_SAME_CODE(kOk, OK);
TERN_SAME_CODE(kCancelled, CANCELLED);
TERN_SAME_CODE(kUnknown, UNKNOWN);
TERN_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
TERN_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
TERN_SAME_CODE(kNotFound, NOT_FOUND);
TERN_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
TERN_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
TERN_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
TERN_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
TERN_SAME_CODE(kAborted, ABORTED);
TERN_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
TERN_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
TERN_SAME_CODE(kInternal, INTERNAL);
TERN_SAME_CODE(kUnavailable, UNAVAILABLE);
TERN_SAME_CODE(kDataLoss, DATA_LOSS);
TERN_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef TERN_SAME_CODE

// The fields of `type` annotated REQUIRED, looked up once per type.
const std::vector<const google::protobuf::FieldDescriptor*>& RequiredFields(
    const google::protobuf::Descriptor* type) {
  static std::mutex mu;
  static auto* const cache =
      new std::unordered_map<const google::protobuf::Descriptor*,
                             std::vector<const google::protobuf::FieldDescriptor*>>;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, inserted] = cache->try_emplace(type);
  if (inserted) {
    for (int i = 0; i < type->field_count(); ++i) {
      const google::protobuf::FieldOptions& options = type->field(i)->options();
      for (int j = 0; j < options.ExtensionSize(google::api::field_behavior); ++j) {
        if (options.GetExtension(google::api::field_behavior, j) == google::api::REQUIRED) {
          it->second.push_back(type->field(i));
          break;
        }
      }
    }
  }
  return it->second;
}

// Each string of a detail (a field path, a description, a metadata value).
constexpr size_t kMaxDetailStringBytes = 256;

std::string Cap(const std::string& text) { return CapMessage(text, kMaxDetailStringBytes); }

size_t DetailsBytes(const google::rpc::Status& details) {
  size_t total = 0;
  for (const google::protobuf::Any& any : details.details()) total += any.ByteSizeLong();
  return total;
}

}  // namespace

google::rpc::Status ToRpcStatus(const Status& status) {
  google::rpc::Status out;
  if (status.ok()) return out;
  out.set_code(static_cast<int>(status.code()));
  out.set_message(CapMessage(status.message(), kMaxStatusMessageBytes));
  static const ErrorDetails kNoDetails;
  const ErrorDetails& details = status.details() ? *status.details() : kNoDetails;

  google::rpc::ErrorInfo info;
  info.set_reason(details.reason.empty() ? StatusCodeName(status.code()) : details.reason);
  info.set_domain(error_reason::kErrorDomain);
  for (const auto& [key, value] : details.metadata) (*info.mutable_metadata())[key] = Cap(value);
  if (details.retry_delay) {
    google::rpc::RetryInfo retry;
    const int64_t ms = details.retry_delay->count();
    retry.mutable_retry_delay()->set_seconds(ms / 1000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(ms % 1000) * 1000000);
    out.add_details()->PackFrom(retry);
  }
  if (!details.quota_violations.empty()) {
    google::rpc::QuotaFailure quota;
    for (const QuotaViolation& v : details.quota_violations) {
      google::rpc::QuotaFailure::Violation* violation = quota.add_violations();
      violation->set_subject(Cap(v.subject));
      violation->set_description(Cap(v.description));
    }
    out.add_details()->PackFrom(quota);
  }
  // Field violations while they fit the budget; the ErrorInfo says how many
  // did not (the message lists them, as far as it is not cut).
  if (!details.field_violations.empty()) {
    google::rpc::BadRequest bad;
    // 200: the two Any wrappers (type URLs) and the omitted count.
    const size_t fixed = DetailsBytes(out) + info.ByteSizeLong() + 200;
    size_t omitted = 0;
    for (const FieldViolation& v : details.field_violations) {
      google::rpc::BadRequest::FieldViolation candidate;
      candidate.set_field(Cap(v.field));
      candidate.set_description(Cap(v.description));
      if (omitted > 0 ||
          fixed + bad.ByteSizeLong() + candidate.ByteSizeLong() + 8 > kMaxStatusDetailsBytes) {
        ++omitted;
        continue;
      }
      *bad.add_field_violations() = std::move(candidate);
    }
    if (omitted > 0) {
      (*info.mutable_metadata())["field_violations_omitted"] = std::to_string(omitted);
    }
    out.add_details()->PackFrom(bad);
  }
  out.add_details()->PackFrom(info);
  return out;
}

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // The enumerators have the same values by construction (status.h). The
  // message and the details travel in trailers: capped so that neither, however
  // many violations there are, exceeds a client's metadata limit (8 KiB by
  // default) and turns into RESOURCE_EXHAUSTED there.
  const google::rpc::Status details = ToRpcStatus(status);
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), details.message(),
                      details.SerializeAsString());
}

Status NotLeaderError(const std::string& self_address, const std::string& leader_address) {
  const std::string message =
      leader_address.empty()
          ? "ternd " + self_address + " is a standby and no ternd leads right now; retry"
          : "ternd " + self_address + " is a standby; the leader is " + leader_address;
  return UnavailableError(message)
      .WithReason(error_reason::kNotLeader)
      .WithMetadata("leader_address", leader_address)
      .WithRetryDelay(std::chrono::seconds(1));
}

Status LeadershipLostError() {
  return UnavailableError("this ternd no longer leads (another took over); call the leader")
      .WithReason(error_reason::kLeadershipLost)
      .WithMetadata("leader_address", "")
      .WithRetryDelay(std::chrono::seconds(1));
}

namespace internal {

void LogRpcFailure(const char* method, const Status& status) {
  switch (status.code()) {
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
    case StatusCode::kUnknown:
      TERN_LOG(ERROR) << method << ": " << status;
      break;
    default:
      TERN_LOG(DEBUG) << method << ": " << status;
  }
}

}  // namespace internal

Status RequireFields(const google::protobuf::Message& request) {
  const google::protobuf::Reflection* reflection = request.GetReflection();
  for (const google::protobuf::FieldDescriptor* field : RequiredFields(request.GetDescriptor())) {
    // HasField: a proto3 scalar without presence counts as set when not at
    // its default.
    const bool set = field->is_repeated() ? reflection->FieldSize(request, field) > 0
                                          : reflection->HasField(request, field);
    if (!set) {
      return InvalidArgumentError(field->name() + ": required")
          .WithReason(error_reason::kRequestInvalid)
          .WithFieldViolation(field->name(), "required");
    }
  }
  return OkStatus();
}

}  // namespace tern::server
