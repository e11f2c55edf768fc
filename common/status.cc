#include "common/status.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace tern {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

Status Status::WithContext(const std::string& context) const {
  if (ok()) return *this;
  Status copy(code_, context + ": " + message_);
  copy.details_ = details_;
  return copy;
}

const std::string& Status::reason() const {
  static const std::string kNone;
  return details_ == nullptr ? kNone : details_->reason;
}

Status Status::CopyWithDetails(ErrorDetails** details) const {
  auto fresh = details_ == nullptr ? std::make_shared<ErrorDetails>()
                                   : std::make_shared<ErrorDetails>(*details_);
  *details = fresh.get();
  Status copy(code_, message_);
  copy.details_ = std::move(fresh);
  return copy;
}

Status Status::WithReason(std::string reason) const {
  if (ok()) return *this;
  ErrorDetails* details = nullptr;
  Status copy = CopyWithDetails(&details);
  details->reason = std::move(reason);
  return copy;
}

Status Status::WithMetadata(std::string key, std::string value) const {
  if (ok()) return *this;
  ErrorDetails* details = nullptr;
  Status copy = CopyWithDetails(&details);
  details->metadata[std::move(key)] = std::move(value);
  return copy;
}

Status Status::WithFieldViolation(std::string field, std::string description) const {
  if (ok()) return *this;
  ErrorDetails* details = nullptr;
  Status copy = CopyWithDetails(&details);
  details->field_violations.push_back({std::move(field), std::move(description)});
  return copy;
}

Status Status::WithQuotaViolation(std::string subject, std::string description) const {
  if (ok()) return *this;
  ErrorDetails* details = nullptr;
  Status copy = CopyWithDetails(&details);
  details->quota_violations.push_back({std::move(subject), std::move(description)});
  return copy;
}

Status Status::WithDetails(ErrorDetails details) const {
  if (ok()) return *this;
  Status copy(code_, message_);
  copy.details_ = std::make_shared<const ErrorDetails>(std::move(details));
  return copy;
}

Status Status::WithRetryDelay(std::chrono::milliseconds delay) const {
  if (ok()) return *this;
  ErrorDetails* details = nullptr;
  Status copy = CopyWithDetails(&details);
  details->retry_delay = delay;
  return copy;
}

std::ostream& operator<<(std::ostream& os, const Status& status) {
  return os << status.ToString();
}

namespace internal {

CheckFailure::CheckFailure(const char* file, int line, const char* condition) {
  stream_ << "TERN_CHECK failed at " << file << ":" << line << ": "
          << condition << " ";
}

CheckFailure::~CheckFailure() {
  stream_ << "\n";
  const std::string text = stream_.str();
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
  std::abort();
}

}  // namespace internal
}  // namespace tern
